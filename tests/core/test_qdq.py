"""The Q/DQ graph equals qviz's own numbers, bit for bit, and ORT fuses it where it can."""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, random_data
from qviz.core.errors import QvizError
from qviz.core.graph.containers import BLOCKED_OPSET, FP8_OPSET, container_dtype
from qviz.core.graph.qdq import QdqMode, QdqModel, build_qdq, initializer_bytes
from qviz.core.model.loading import LoadedModel, TensorKind, from_proto
from qviz.core.quant.formats import (
    FormatKind,
    Granularity,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.quant.quantize import dequantize, fake_quantize, quantize
from qviz.core.runtime.fusion import SATURATION_NOTE, fusion_report
from qviz.core.runtime.sessions import (
    KernelPrecision,
    SessionConfig,
    build_session,
    run_session,
    with_outputs,
)
from qviz.core.stats.collect import collect_stats, run_to_completion

try:  # works whether or not tests/ is a package
    from tests.core import model_factory as mf
except ImportError:
    import model_factory as mf

PER_TENSOR = PerTensor()
PER_CHANNEL = PerAxis()
INT8 = NumberFormat()


def per_group(size: int) -> Granularity:
    return PerGroup(size)


def configure(
    wfmt: NumberFormat = INT8,
    afmt: NumberFormat = INT8,
    wgran: Granularity = PER_CHANNEL,
    method: Method = Method.MINMAX,
) -> QuantConfig:
    return QuantConfig(
        weights=TensorConfig(MethodSpec(Method.MINMAX), wgran, wfmt),
        activations=TensorConfig(MethodSpec(method), PER_TENSOR, afmt),
    )


_STATS: dict[int, object] = {}


def analysed(model: LoadedModel, data: Dataset, config: QuantConfig) -> list[TensorResult]:
    key = id(model)
    if key not in _STATS:
        _STATS[key] = run_to_completion(collect_stats(model, data, batch_size=16))
    return analyze(model, _STATS[key], config)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def conv_net() -> tuple[LoadedModel, Dataset]:
    model = from_proto(mf.make_conv_net())
    return model, random_data(model.inputs, 48, seed=1)


@pytest.fixture(scope="module")
def mlp() -> tuple[LoadedModel, Dataset]:
    model = from_proto(mf.make_mlp())
    return model, random_data(model.inputs, 64, seed=2)


def simulate(qdq: QdqModel, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the Q/DQ graph op by op and fetch `names`."""
    session = build_session(with_outputs(qdq.model, names), SessionConfig.for_simulation())
    return run_session(session, feeds, names)


def first_batch(data: Dataset, n: int = 16) -> dict[str, np.ndarray]:
    return next(iter(data.batches(n)))


# Every storable format, the 2..7-bit INT widths held in int8/uint8, and NF4 (simulated).
WEIGHT_CASES = [
    pytest.param(NumberFormat(), PER_CHANNEL, id="int8-per-channel"),
    pytest.param(NumberFormat(signed=False, symmetric=False), PER_TENSOR, id="uint8-asym-tensor"),
    pytest.param(NumberFormat(bits=4), per_group(4), id="int4-per-group"),
    pytest.param(
        NumberFormat(bits=4, signed=False, symmetric=False), PER_CHANNEL, id="uint4-asym-channel"
    ),
    pytest.param(NumberFormat.parse("fp8_e4m3fn"), PER_CHANNEL, id="e4m3-channel"),
    pytest.param(NumberFormat.parse("fp8_e5m2"), PER_TENSOR, id="e5m2-tensor"),
    pytest.param(NumberFormat(bits=7), PER_CHANNEL, id="int7-channel-in-int8"),
    pytest.param(NumberFormat(bits=6), PER_CHANNEL, id="int6-channel-in-int8"),
    pytest.param(
        NumberFormat(bits=5, signed=False, symmetric=False), PER_TENSOR, id="uint5-asym-in-uint8"
    ),
    pytest.param(NumberFormat(bits=3), per_group(4), id="int3-per-group-in-int8"),
    pytest.param(NumberFormat.parse("nf4"), per_group(8), id="nf4-simulated"),
]


@pytest.mark.parametrize(("fmt", "gran"), WEIGHT_CASES)
@pytest.mark.parametrize("which", ["conv_net", "mlp"])
def test_weights_in_graph_equal_qviz_dequantize(
    fmt: NumberFormat, gran: Granularity, which: str, request: pytest.FixtureRequest
) -> None:
    model, data = request.getfixturevalue(which)
    results = analysed(model, data, configure(wfmt=fmt, wgran=gran))
    qdq = build_qdq(model, results)
    weights = [r for r in results if r.kind is TensorKind.WEIGHT]
    assert weights
    tensors = [qdq.tensor(r.name, r.kind) for r in weights]
    got = simulate(qdq, [t.graph_name for t in tensors], first_batch(data))
    for r, t, value in zip(weights, tensors, got, strict=True):
        expected = dequantize(quantize(model.weight(r.name), r.qparams, fmt), r.qparams, fmt)
        np.testing.assert_array_equal(value, expected, err_msg=r.name)
        simulated = fmt.kind is FormatKind.NF4  # the one weight format without a container
        assert t.mode is (QdqMode.SIMULATED if simulated else QdqMode.NATIVE)
    onnx.checker.check_model(qdq.model)


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(NumberFormat(bits=7), id="int7"),
        pytest.param(NumberFormat(bits=6), id="int6"),
        pytest.param(NumberFormat(bits=6, symmetric=False), id="int6-asym"),
        pytest.param(NumberFormat(bits=7, signed=False, symmetric=False), id="uint7-asym"),
    ],
)
def test_narrow_int_weights_are_int8_initializers_within_their_range(
    fmt: NumberFormat, conv_net: tuple[LoadedModel, Dataset]
) -> None:
    """2..7-bit weights are stored as real int8/uint8 (ORT's reduce_range for 7 bits): the
    initializer holds qviz's quantize at the narrow width, the zero point is in the container
    type, and the graph's DequantizeLinear equals qviz's dequantize bit for bit."""
    model, data = conv_net
    results = analysed(model, data, configure(wfmt=fmt))
    qdq = build_qdq(model, results)
    container = onnx.TensorProto.INT8 if fmt.signed else onnx.TensorProto.UINT8
    assert container_dtype(fmt) == container
    inits = {i.name: i for i in qdq.model.graph.initializer}
    weights = [r for r in results if r.kind is TensorKind.WEIGHT]
    tensors = [qdq.tensor(r.name, r.kind) for r in weights]
    got = simulate(qdq, [t.graph_name for t in tensors], first_batch(data))
    lo, hi = fmt.saturation_range
    for r, t, value in zip(weights, tensors, got, strict=True):
        assert t.mode is QdqMode.NATIVE and t.is_8bit_int
        init = inits[t.stored_name]
        assert init.data_type == container
        stored = numpy_helper.to_array(init)
        assert lo <= stored.min() and stored.max() <= hi, (r.name, stored.min(), stored.max())
        w = model.weight(r.name)
        np.testing.assert_array_equal(stored, quantize(w, r.qparams, fmt))
        dq = next(n for n in qdq.model.graph.node if n.output[0] == t.graph_name)
        assert dq.op_type == "DequantizeLinear"
        zp = numpy_helper.to_array(inits[dq.input[2]])
        assert inits[dq.input[2]].data_type == container
        np.testing.assert_array_equal(zp, r.qparams.zero_point)
        np.testing.assert_array_equal(value, dequantize(stored, r.qparams, fmt), err_msg=r.name)
        assert value.dtype == np.float32
    assert not qdq.simulated
    assert not [n for n in qdq.notes if "simulation only" in n]


ACT_CASES = [
    pytest.param(NumberFormat(), id="int8-sym"),
    pytest.param(NumberFormat(signed=False, symmetric=False), id="uint8-asym"),
    pytest.param(NumberFormat(bits=4), id="int4"),
    pytest.param(NumberFormat(bits=4, signed=False, symmetric=False), id="uint4-asym"),
    pytest.param(NumberFormat(bits=7), id="int7-simulated"),
    pytest.param(NumberFormat(bits=6), id="int6-simulated"),
    pytest.param(NumberFormat(bits=5, signed=False, symmetric=False), id="uint5-asym-simulated"),
    pytest.param(NumberFormat(bits=3, symmetric=False), id="int3-asym-simulated"),
    pytest.param(NumberFormat.parse("fp8_e4m3fn"), id="e4m3"),
    pytest.param(NumberFormat.parse("fp8_e5m2"), id="e5m2"),
]


@pytest.mark.parametrize("fmt", ACT_CASES)
def test_activation_qdq_equals_fake_quantize(
    fmt: NumberFormat, conv_net: tuple[LoadedModel, Dataset]
) -> None:
    """What each quantized layer reads is exactly qviz's fake_quantize of the tensor before
    its Q/DQ, for every activation, including the graph input."""
    model, data = conv_net
    results = analysed(model, data, configure(afmt=fmt, method=Method.PERCENTILE))
    qdq = build_qdq(model, results)
    acts = qdq.activations
    assert [t.name for t in acts] == ["x", "r1", "flat"]
    feeds = first_batch(data)
    inputs = {i.name for i in model.inputs}
    pre = [t.name for t in acts if t.name not in inputs]
    values = simulate(qdq, pre + [t.graph_name for t in acts], feeds)
    before = dict(zip(pre, values[: len(pre)], strict=True))
    for t, after in zip(acts, values[len(pre) :], strict=True):
        x = feeds[t.name] if t.name in inputs else before[t.name]
        np.testing.assert_array_equal(after, fake_quantize(x, t.qparams, fmt), err_msg=t.name)


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(NumberFormat(bits=7), id="int7"),
        pytest.param(NumberFormat(bits=6, symmetric=False), id="int6-asym"),
        pytest.param(NumberFormat(bits=5, signed=False, symmetric=False), id="uint5-asym"),
        pytest.param(NumberFormat(bits=2), id="int2"),
    ],
)
def test_narrow_activations_saturate_like_fake_quantize_nan_and_inf_included(
    fmt: NumberFormat, conv_net: tuple[LoadedModel, Dataset]
) -> None:
    """2..7-bit activations: an int8/uint8 Q/DQ, then a Clip to the narrow range's dequantized
    ends. Bit-exact with fake_quantize at that width for every float32, even NaN (to the narrow
    minimum; a Clip *before* the QuantizeLinear would pass NaN on, and the Q would map it to
    the container's -128). No integer kernel reads them: simulation only."""
    model, data = conv_net
    results = analysed(model, data, configure(afmt=fmt))
    qdq = build_qdq(model, results)
    t = qdq.tensor("x", TensorKind.ACTIVATION)
    assert t.mode is QdqMode.SIMULATED and not t.is_8bit_int
    clip = next(n for n in qdq.model.graph.node if n.output[0] == t.graph_name)
    assert clip.op_type == "Clip"
    scale = float(t.qparams.scale)
    zp = float(t.qparams.zero_point)
    lo, hi = fmt.saturation_range
    x = first_batch(data)["x"].copy() * np.float32(3.0)
    flat = x.reshape(-1)
    edges = [(c - zp + d) * scale for c in (lo, hi, -128.0, 127.0, 255.0) for d in (-0.5, 0, 0.5)]
    special = [np.nan, -np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, *edges]
    flat[: len(special)] = np.array(special, np.float32)
    # Values just either side of every rounding boundary of the narrow range.
    b = ((np.arange(lo - 1, hi + 2) - zp + 0.5) * scale).astype(np.float32)
    inf = np.float32(np.inf)
    near = np.concatenate([np.nextafter(b, -inf), b, np.nextafter(b, inf)])
    assert near.dtype == np.float32
    flat[len(special) : len(special) + near.size] = near
    (got,) = simulate(qdq, [t.graph_name], {"x": x})
    expected = fake_quantize(x, t.qparams, fmt)
    np.testing.assert_array_equal(got, expected)
    assert np.isfinite(got).all()
    ends = dequantize(np.array([lo, hi]).astype(fmt.storage_dtype), t.qparams, fmt)
    assert got.min() == ends[0] and got.max() == ends[1]
    report = fusion_report(qdq)
    assert not report.fused
    assert all("simulation only" in why for why in report.unfused.values())


def _strip_output_qdq(qdq: QdqModel) -> onnx.ModelProto:
    """The Q/DQ graph without the Q/DQ pairs put on layer outputs for ORT's fusion."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq.model)
    graph = model.graph
    act_names = {t.name for t in qdq.activations}
    drop: list[onnx.NodeProto] = []
    for plan in qdq.layers:
        node = next(n for n in graph.node if n.name == plan.layer.node_name)
        out = node.output[0]
        if out in act_names:
            continue
        q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == out]
        for qn in q:
            dq = next(
                n
                for n in graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] == qn.output[0]
            )
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == dq.output[0]:
                        n.input[i] = out
            drop += [qn, dq]
    assert drop, "expected output Q/DQ pairs to strip"
    kept = [n for n in graph.node if all(n is not d for d in drop)]
    del graph.node[:]
    graph.node.extend(kept)
    return model


@pytest.mark.parametrize("fmt", [NumberFormat(), NumberFormat(signed=False, symmetric=False)])
def test_output_qdq_for_fusion_changes_nothing(fmt: NumberFormat) -> None:
    """The extra Q/DQ on a layer output (Conv -> [Q/DQ] -> Relu -> MaxPool -> Q/DQ -> Conv)
    re-quantizes grid values only: simulation outputs are bit-identical without it."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((5, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "cmin"),
        numpy_helper.from_array(np.array(2.5, np.float32), "cmax"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Clip", ["c2", "cmin", "cmax"], ["y"], name="clip"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 2, 2])],
        inits,
    )
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    data = random_data(model.inputs, 32, seed=3)
    qdq = build_qdq(model, analysed(model, data, configure(afmt=fmt)))
    conv1 = next(p for p in qdq.layers if p.layer.node_name == "conv1")
    assert conv1.output is not None and conv1.output.name == "p1"
    feeds = first_batch(data, 32)
    with_pairs = simulate(qdq, ["y"], feeds)[0]
    session = build_session(_strip_output_qdq(qdq), SessionConfig.for_simulation())
    np.testing.assert_array_equal(with_pairs, run_session(session, feeds, ["y"])[0])
    report = fusion_report(qdq)
    assert report.kernels.get(conv1.layer.name) == "QLinearConv"


def test_int8_conv_net_fuses_and_explains_the_rest(
    conv_net: tuple[LoadedModel, Dataset], u8s8_saturates: bool
) -> None:
    """Which layers fuse is ORT's decision and the same on any CPU; whether the fused int8
    layers are reported at risk of saturating follows qviz's detection (both answers)."""
    model, data = conv_net
    qdq = build_qdq(model, analysed(model, data, configure()))
    report = fusion_report(qdq)
    # conv1's output reaches conv2's quantized input through Relu: QLinearConv.
    assert report.kernels["conv1"] == "QLinearConv"
    # conv2 feeds GlobalAveragePool, which is not quantized: ORT keeps it float, and says why.
    assert "conv2" in report.unfused
    assert "GlobalAveragePool" in report.unfused["conv2"]
    # Gemm may have a float output: ORT's QGemm.
    assert report.kernels["fc"] == "QGemm"
    assert set(report.fused) | set(report.unfused) == {"conv1", "conv2", "fc"}
    # 8-bit signed weights: every fused layer is at risk where the kernels can saturate.
    assert set(report.saturating) == (set(report.fused) if u8s8_saturates else set())
    assert (SATURATION_NOTE in report.notes) is u8s8_saturates


def test_precise_kernels_are_never_reported_at_risk(
    conv_net: tuple[LoadedModel, Dataset], u8s8_saturates: bool
) -> None:
    """session.x64quantprecision=1 (U8U8) is the cure: nothing saturates, whatever the CPU."""
    model, data = conv_net
    qdq = build_qdq(model, analysed(model, data, configure()))
    report = fusion_report(qdq, KernelPrecision.PRECISE)
    assert report.kernels["conv1"] == "QLinearConv" and report.kernels["fc"] == "QGemm"
    assert not report.saturating and SATURATION_NOTE not in report.notes


def test_formats_without_cpu_kernels_are_reported_unfused(
    conv_net: tuple[LoadedModel, Dataset],
) -> None:
    model, data = conv_net
    fp8 = NumberFormat.parse("fp8_e4m3fn")
    report = fusion_report(build_qdq(model, analysed(model, data, configure(fp8, fp8))))
    assert not report.fused
    assert all("FP8" in why for why in report.unfused.values())
    nf4 = NumberFormat.parse("nf4")
    sim = build_qdq(model, analysed(model, data, configure(wfmt=nf4, wgran=per_group(4))))
    report = fusion_report(sim)
    assert not report.fused  # never claim native for a simulated format
    assert all("simulation only" in why or "nf4" in why for why in report.unfused.values())


def test_narrow_int_weights_fuse_natively(
    conv_net: tuple[LoadedModel, Dataset], u8s8_saturates: bool
) -> None:
    """int5 weights live in int8: ORT fuses them like int8, with qviz's values (not its own
    re-quantization of float weights); never reported at risk, even where the detection says
    the kernels can saturate."""
    model, data = conv_net
    qdq = build_qdq(model, analysed(model, data, configure(wfmt=NumberFormat(bits=5))))
    report = fusion_report(qdq)
    assert report.kernels["conv1"] == "QLinearConv"
    assert report.kernels["fc"] == "QGemm"
    assert "conv2" in report.unfused and "GlobalAveragePool" in report.unfused["conv2"]
    assert not report.saturating  # at most 5 bits: the u8s8 pair sums cannot saturate


def test_opset_follows_the_formats(mlp: tuple[LoadedModel, Dataset]) -> None:
    model, data = mlp
    assert build_qdq(model, analysed(model, data, configure())).opset == 17
    fp8 = NumberFormat.parse("fp8_e5m2")
    assert build_qdq(model, analysed(model, data, configure(fp8, fp8))).opset == FP8_OPSET
    int4 = NumberFormat(bits=4)
    q4 = build_qdq(model, analysed(model, data, configure(int4, int4, PER_TENSOR)))
    assert q4.opset == BLOCKED_OPSET
    blocked = build_qdq(model, analysed(model, data, configure(wgran=per_group(8))))
    assert blocked.opset == BLOCKED_OPSET
    for qdq in (q4, blocked):
        onnx.checker.check_model(qdq.model, full_check=True)


def test_int4_weights_are_stored_packed_and_counted_half_a_byte(
    mlp: tuple[LoadedModel, Dataset],
) -> None:
    model, data = mlp
    qdq = build_qdq(model, analysed(model, data, configure(NumberFormat(bits=4))))
    t = qdq.tensor("fc1.weight", TensorKind.WEIGHT)
    init = next(i for i in qdq.model.graph.initializer if i.name == t.stored_name)
    assert init.data_type == onnx.TensorProto.INT4
    stored = numpy_helper.to_array(init)
    assert stored.dtype == ml_dtypes.int4
    n = int(np.prod(init.dims))
    only = onnx.ModelProto()
    only.graph.initializer.append(init)
    assert initializer_bytes(only) == (n + 1) // 2
    # The float weights nothing reads any more are gone.
    assert "fc1.weight" not in {i.name for i in qdq.model.graph.initializer}


def test_graph_interface_unchanged_and_float_layers_untouched(
    conv_net: tuple[LoadedModel, Dataset],
) -> None:
    model, data = conv_net
    keep_float = TensorConfig(quantize=False)
    config = configure().with_override("conv2.weight", keep_float).with_override("r1", keep_float)
    qdq = build_qdq(model, analysed(model, data, config))
    graph = qdq.model.graph
    assert [i.name for i in graph.input] == [i.name for i in model.model.graph.input]
    assert [o.name for o in graph.output] == [o.name for o in model.model.graph.output]
    conv2 = next(n for n in graph.node if n.name == "conv2")
    assert list(conv2.input) == ["r1", "conv2.weight", "conv2.bias"]
    assert "conv2" not in qdq.layer_names


def test_nf4_activations_are_refused(conv_net: tuple[LoadedModel, Dataset]) -> None:
    model, data = conv_net
    results = analysed(model, data, configure())
    act = next(r for r in results if r.kind is TensorKind.ACTIVATION)
    nf4 = NumberFormat.parse("nf4")
    bad = TensorResult(
        act.name,
        act.layer,
        act.kind,
        TensorConfig(act.config.spec, PER_TENSOR, nf4),
        act.qparams,
        act.metrics,
    )
    with pytest.raises(QvizError, match="NF4"):
        build_qdq(model, [bad, *results[1:]])
