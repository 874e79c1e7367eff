"""SmoothQuant's error estimate computed compiled is the NumPy estimate: the weights' rounding
error and row norms, the activations' per-channel error, and the alphas the search picks."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind, NumberFormat, PerAxis, PerGroup, PerTensor
from qviz.core.transforms import activation_error, scales, weight_error
from qviz.core.transforms.activation_error import channel_errors, numpy_channel_errors
from qviz.core.transforms.scales import ConsumerInput, rescaled, scale_tensor_stats, search_alpha
from qviz.core.transforms.weight_error import (
    compiled_applies,
    numpy_weight_terms,
    scaled_weight_terms,
)
from tests.core.transform_models import calibrated
from tools.synthetic.block import NORM_OUTPUT, BlockSpec, block_proto

# (shape, scaled input-channel axis, output-channel axis): MatMul (in, out), Gemm with
# transB (out, in), Conv (out, in, kh, kw), ConvTranspose (in, out, kh, kw).
LAYOUTS = [((48, 40), 0, 1), ((40, 48), 1, 0), ((12, 16, 3, 3), 1, 0), ((16, 6, 2, 2), 0, 1)]
FORMATS = [
    NumberFormat(),
    NumberFormat(signed=False, symmetric=False),
    NumberFormat(bits=4),
    NumberFormat(bits=7, symmetric=False),
    NumberFormat(pow2_scale=True),
]
GRIDS = [PerAxis(), PerTensor()]


def _weight(shape: tuple[int, ...], seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) * np.exp(spread * rng.standard_normal(shape))
    return w.astype(np.float32)


def _scales(n: int, seed: int, spread: float) -> np.ndarray:
    return np.exp(spread * np.random.default_rng(seed + 1).standard_normal(n))


@settings(max_examples=60, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), fmt=st.sampled_from(FORMATS),
       grid=st.sampled_from(GRIDS), seed=st.integers(0, 2**16), w_spread=st.floats(0, 3),
       s_spread=st.floats(0, 4), manual=st.booleans())
def test_compiled_weight_terms_are_the_numpy_ones(layout, fmt, grid, seed, w_spread, s_spread,
                                                  manual) -> None:
    shape, axis, out_axis = layout
    spec = MethodSpec(Method.MANUAL, manual_range=(-0.5, 0.75)) if manual else MethodSpec()
    cfg = TensorConfig(spec=spec, granularity=grid, fmt=fmt)
    w = _weight(shape, seed, w_spread)
    s = _scales(shape[axis], seed, s_spread)
    layer_axes = (out_axis, axis)
    assert compiled_applies(w, axis, cfg, layer_axes)
    fast = scaled_weight_terms(w, axis, s, cfg, layer_axes)
    ref = numpy_weight_terms(w, axis, s, cfg, layer_axes)
    np.testing.assert_allclose(fast.errors, ref.errors, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(fast.row_norms, ref.row_norms, rtol=1e-12)
    assert fast.errors.any()


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_values_per_row_give_the_very_same_sums(fmt) -> None:
    """With two values per input channel no order of summation differs: every element's
    rounding error is NumPy's to the bit (including values on the saturation edge)."""
    w = _weight((300, 2), 3, 2.0)
    w[5] = [0.0, -0.0]
    s = _scales(300, 3, 3.0)
    for grid in GRIDS:
        cfg = TensorConfig(granularity=grid, fmt=fmt)
        fast = scaled_weight_terms(w, 0, s, cfg, (1, 0))
        ref = numpy_weight_terms(w, 0, s, cfg, (1, 0))
        assert np.array_equal(fast.errors, ref.errors)
        assert np.array_equal(fast.row_norms, ref.row_norms)


def test_a_weight_kept_float_has_no_error_but_its_row_norms() -> None:
    w = _weight((32, 24), 5, 1.0)
    s = _scales(32, 5, 1.0)
    cfg = TensorConfig(quantize=False)
    fast = scaled_weight_terms(w, 0, s, cfg, (1, 0))
    ref = numpy_weight_terms(w, 0, s, cfg, (1, 0))
    assert not fast.errors.any()
    np.testing.assert_allclose(fast.row_norms, ref.row_norms, rtol=1e-12)


@pytest.mark.parametrize("cfg", [
    TensorConfig(fmt=NumberFormat(kind=FormatKind.FP8_E4M3FN)),
    TensorConfig(fmt=NumberFormat(kind=FormatKind.NF4), granularity=PerGroup(8)),
    TensorConfig(granularity=PerGroup(8), fmt=NumberFormat(bits=4)),
    TensorConfig(spec=MethodSpec(Method.MSE)),
    TensorConfig(granularity=PerAxis(axis=0)),  # the grid along the scaled axis itself
], ids=["fp8", "nf4", "int4-group", "mse", "grid-on-scaled-axis"])
def test_other_settings_take_the_numpy_path(cfg) -> None:
    w = _weight((32, 24), 7, 1.0)
    s = _scales(32, 7, 1.0)
    assert not compiled_applies(w, 0, cfg, (1, 0))
    terms = scaled_weight_terms(w, 0, s, cfg, (1, 0))
    ref = numpy_weight_terms(w, 0, s, cfg, (1, 0))
    assert np.array_equal(terms.errors, ref.errors) and terms.errors.any()


def test_a_nan_weight_is_the_numpy_paths_error() -> None:
    w = _weight((16, 8), 9, 1.0)
    w[3, 2] = np.nan
    cfg = TensorConfig()
    with pytest.raises(QvizError, match="NaN"):
        numpy_weight_terms(w, 0, np.ones(16), cfg, (1, 0))
    with pytest.raises(QvizError, match="NaN"):
        scaled_weight_terms(w, 0, np.ones(16), cfg, (1, 0))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("divide", [False, True])
def test_rescaled_in_slices_is_the_whole_product(monkeypatch, axis, divide) -> None:
    monkeypatch.setattr(scales, "_RESCALE_VALUES", 50)  # many slices
    w = _weight((9, 7, 5), 11, 2.0)
    s = _scales(w.shape[axis], 11, 3.0)
    shape = [1, 1, 1]
    shape[axis] = s.size
    w64 = w.astype(np.float64)
    want = (w64 / s.reshape(shape) if divide else w64 * s.reshape(shape)).astype(np.float32)
    assert np.array_equal(rescaled(w, axis, s, divide=divide), want)


@pytest.fixture(scope="module")
def block():
    return calibrated(block_proto(BlockSpec()))


ACT_CONFIGS = [
    TensorConfig(spec=MethodSpec(Method.MSE), fmt=NumberFormat(signed=False, symmetric=False)),
    TensorConfig(fmt=NumberFormat()),
    TensorConfig(spec=MethodSpec(Method.PERCENTILE, percentile=99.9), fmt=NumberFormat(bits=4)),
    TensorConfig(spec=MethodSpec(Method.ENTROPY), fmt=NumberFormat(bits=6, symmetric=False)),
]


@pytest.mark.parametrize("cfg", ACT_CONFIGS)
@pytest.mark.parametrize("spread", [0.0, 1.0, 3.0])
def test_compiled_activation_errors_are_the_numpy_ones(block, cfg, spread) -> None:
    _, stats, _ = block
    ts = stats.tensors[NORM_OUTPUT]
    s = _scales(ts.channel_min.size, 13, spread)
    scaled = scale_tensor_stats(ts, s)
    fast = channel_errors(scaled, cfg)
    ref = numpy_channel_errors(scaled, cfg)
    assert fast.any()
    np.testing.assert_allclose(fast, ref, rtol=1e-12)


def test_fp8_activations_take_the_numpy_path(block) -> None:
    _, stats, _ = block
    ts = stats.tensors[NORM_OUTPUT]
    scaled = scale_tensor_stats(ts, _scales(ts.channel_min.size, 17, 1.0))
    cfg = TensorConfig(fmt=NumberFormat(kind=FormatKind.FP8_E4M3FN))
    assert np.array_equal(channel_errors(scaled, cfg), numpy_channel_errors(scaled, cfg))


@pytest.mark.parametrize("weights", [
    TensorConfig(granularity=PerAxis()),
    TensorConfig(granularity=PerTensor(), fmt=NumberFormat(bits=4)),
], ids=["int8-per-channel", "int4-per-tensor"])
def test_the_search_scores_and_picks_as_in_numpy(block, monkeypatch, weights) -> None:
    """The whole alpha search, compiled against NumPy-only: the same estimated error at
    every alpha (to float64 rounding) and the same alpha."""
    model, stats, _ = block
    ts = stats.tensors[NORM_OUTPUT]
    act = ACT_CONFIGS[0]
    readers = [layer for layer in model.layers if NORM_OUTPUT in layer.activations]
    assert readers
    consumers = [
        ConsumerInput(model.weight(layer.weight), layer.reduction_axis, weights,
                      (layer.channel_axis, layer.reduction_axis), 1)
        for layer in readers if layer.weight is not None and layer.reduction_axis is not None
    ]
    fast = search_alpha(ts, act, consumers)
    monkeypatch.setattr(scales, "scaled_weight_terms", numpy_weight_terms)
    monkeypatch.setattr(activation_error, "channel_errors", numpy_channel_errors)
    monkeypatch.setattr(scales, "channel_errors", numpy_channel_errors)
    ref = search_alpha(ts, act, consumers)
    assert weight_error.compiled_applies(consumers[0].weight, consumers[0].axis, weights,
                                         consumers[0].layer_axes)
    assert np.array_equal(fast.alphas, ref.alphas) and fast.best == ref.best
    np.testing.assert_allclose(fast.errors, ref.errors, rtol=1e-12)



def _chain() -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> y: the middle layer's input
    channels are rescaled by one site and its output channels by the next."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    dims = [16, 48, 40, 16]
    gains = [np.exp(2 * rng.standard_normal(d)) for d in dims]
    inits = [numpy_helper.from_array(
        (rng.standard_normal((a, b)) * gains[i + 1][None, :]).astype(np.float32), f"w{i}")
        for i, (a, b) in enumerate(itertools.pairwise(dims))]
    nodes = []
    x = "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_rescaled_model_in_files_keeps_its_rescaled_weights_in_its_own_file(
    tmp_path,
) -> None:
    """Every weight a rescaling changed is in the transformed model's data file (not held in
    the graph or in memory), with the values the in-memory transform computes, including a
    layer changed by two sites (its inputs by one, its outputs by the next)."""
    from dataclasses import replace

    from qviz.core.calibration.config import QuantConfig
    from qviz.core.model.external_data import read_tensor, uses_external
    from qviz.core.model.loading import load_model
    from qviz.core.transforms.plan import transform_model
    from qviz.core.transforms.settings import SmoothQuant, Transforms
    from tests.core.model_factory import save

    proto = _chain()
    inline, stats, _ = calibrated(proto)
    path = save(proto, tmp_path / "chain.onnx", external_data=True)
    on_disk = load_model(path)
    config = QuantConfig(activations=TensorConfig(
        spec=MethodSpec(Method.MSE), fmt=NumberFormat(signed=False, symmetric=False),
        transforms=Transforms(smoothquant=SmoothQuant(None))))
    plan = transform_model(on_disk, replace(stats, model_sha256=on_disk.sha256), config)
    want = transform_model(inline, stats, config)
    inits = {t.name: t for t in plan.model.model.graph.initializer}
    changed = {c.weight for a in plan.scalings.values() for c in a.site.consumers}
    producers = {a.site.producer.weight for a in plan.scalings.values()
                 if a.site.producer is not None and a.site.producer.weight is not None}
    assert changed & producers  # a layer between two rescaled activations
    for name in changed | producers:
        assert uses_external(inits[name])
        stored = read_tensor(inits[name], plan.model.data_dir)
        assert np.array_equal(stored, want.model.weight(name))
        assert not np.array_equal(stored, on_disk.weight(name))
    # The middle layer: inputs times the first site's scales, then outputs divided by the
    # second's.
    first, second = plan.scalings["r0"].scales, plan.scalings["r1"].scales
    both = rescaled(rescaled(on_disk.weight("w1"), 0, first), 1, second, divide=True)
    assert np.array_equal(read_tensor(inits["w1"], plan.model.data_dir), both)
