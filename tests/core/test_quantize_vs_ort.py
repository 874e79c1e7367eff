"""qviz's quantize / dequantize / compute_qparams against onnxruntime, bit for bit.

Each property builds (once, cached) an ONNX graph holding a single QuantizeLinear or
DequantizeLinear node (opset 21) and runs it with onnxruntime's CPU execution provider, with
graph optimizations off so the node runs as itself. onnxruntime's Python API cannot carry
int4/uint4 tensors, nor return float8 e5m2 ones, so for those types the graph also holds a
Cast between the node and a carrier type (int8/uint8/float32). Such a Cast is exact: every
int4 value is an int8, every finite float8 value a float32. float8 inputs are fed as raw bytes
through ``OrtValue.ortvalue_from_numpy_with_onnx_type``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import QParams, blocked_shape, compute_qparams
from qviz.core.quant.quantize import dequantize, quantize

FAST = settings(
    max_examples=50,
    deadline=None,  # the first example of each test builds an InferenceSession
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

F32_MAX = float(np.finfo(np.float32).max)


def _f32(value: float) -> float:
    """The float32 nearest ``value``: hypothesis wants width-32 bounds to be exact."""
    return float(np.float32(value))


@dataclass(frozen=True)
class TypeCase:
    """How one ONNX quantized type travels between numpy and onnxruntime."""

    spec: str
    onnx_type: int
    carrier: int | None  # Cast to/from this type around the node; None: feed/fetch directly
    raw_bytes: bool  # FP8 fed as uint8 bytes tagged with the ONNX type

    @property
    def fmt(self) -> NumberFormat:
        return NumberFormat.parse(self.spec, symmetric=False)

    @property
    def is_float8(self) -> bool:
        return self.onnx_type in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2)


CASES = {
    c.spec: c
    for c in [
        TypeCase("int8", TensorProto.INT8, None, False),
        TypeCase("uint8", TensorProto.UINT8, None, False),
        TypeCase("int4", TensorProto.INT4, TensorProto.INT8, False),
        TypeCase("uint4", TensorProto.UINT4, TensorProto.UINT8, False),
        TypeCase("int16", TensorProto.INT16, None, False),  # A16W8 activations
        TypeCase("uint16", TensorProto.UINT16, None, False),
        # onnxruntime returns e4m3fn outputs as their uint8 bytes; e5m2 it cannot return.
        TypeCase("fp8_e4m3fn", TensorProto.FLOAT8E4M3FN, None, True),
        TypeCase("fp8_e5m2", TensorProto.FLOAT8E5M2, TensorProto.FLOAT, True),
    ]
}
GRANULARITIES = ["per-tensor", "per-axis", "blocked"]


# --------------------------------------------------------------------------- onnxruntime side
@functools.cache
def _session(op: str, spec: str, axis: int | None, block_size: int | None) -> ort.InferenceSession:
    case = CASES[spec]
    attrs: dict[str, Any] = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size is not None:
        attrs["block_size"] = block_size
    nodes = []
    inputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)]
    feed_type = case.onnx_type if case.raw_bytes else (case.carrier or case.onnx_type)
    cast_in = case.carrier is not None and not case.raw_bytes
    # Typed inputs: QuantizeLinear's zero point; DequantizeLinear's data and zero point.
    typed = ["z"] if op == "QuantizeLinear" else ["q", "z"]
    for name in typed:
        inputs.append(helper.make_tensor_value_info(name, feed_type, None))
        if cast_in:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_t"], to=case.onnx_type))
    names = {n: (f"{n}_t" if cast_in else n) for n in typed}
    if op == "QuantizeLinear":
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
        out_type = case.carrier or case.onnx_type
        node_out = "y_t" if case.carrier is not None else "y"
        nodes.append(
            helper.make_node(op, ["x", "s", names["z"]], [node_out], saturate=1, **attrs)
            if case.is_float8
            else helper.make_node(op, ["x", "s", names["z"]], [node_out], **attrs)
        )
        if case.carrier is not None:
            nodes.append(helper.make_node("Cast", ["y_t"], ["y"], to=case.carrier))
    else:
        out_type = TensorProto.FLOAT
        nodes.append(helper.make_node(op, [names["q"], "s", names["z"]], ["y"], **attrs))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", out_type, None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _feed(case: TypeCase, values: np.ndarray) -> Any:
    """A typed input for onnxruntime from qviz's storage-dtype array."""
    if case.raw_bytes:
        raw = np.ascontiguousarray(values).view(np.uint8)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, case.onnx_type)
    return np.ascontiguousarray(values)


def ort_quantize(spec: str, x: np.ndarray, qp: QParams) -> np.ndarray:
    case = CASES[spec]
    sess = _session("QuantizeLinear", spec, qp.axis, qp.block_size)
    feeds = {"x": x, "s": qp.scale, "z": _feed(case, qp.zero_point)}
    return sess.run(None, feeds)[0]


def ort_dequantize(spec: str, q: np.ndarray, qp: QParams) -> np.ndarray:
    case = CASES[spec]
    sess = _session("DequantizeLinear", spec, qp.axis, qp.block_size)
    feeds = {"q": _feed(case, q), "s": qp.scale, "z": _feed(case, qp.zero_point)}
    return sess.run(None, feeds)[0]


def assert_same_bits(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal shapes and identical bit patterns (so -0.0 != 0.0); any NaN matches any NaN,
    since NaN payloads are not part of either contract."""
    assert ours.shape == theirs.shape
    if ours.dtype.kind == "f" or ours.dtype in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        a = ours.astype(np.float32)
        b = theirs.astype(np.float32)
        nan = np.isnan(a)
        np.testing.assert_array_equal(nan, np.isnan(b))
        np.testing.assert_array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))
    else:
        np.testing.assert_array_equal(ours.astype(np.int64), theirs.astype(np.int64))


def ort_output_as_storage(spec: str, y: np.ndarray) -> np.ndarray:
    """onnxruntime's QuantizeLinear output in qviz's storage dtype."""
    fmt = CASES[spec].fmt
    if spec == "fp8_e4m3fn":
        return y.view(fmt.storage_dtype)  # onnxruntime hands back the bytes as uint8
    return y.astype(fmt.storage_dtype)  # carrier int8/uint8/float32: exact


# --------------------------------------------------------------------------- strategies
# Hypothesis draws the structure (shape, axis, block size, scale style) and a seed; numpy
# fills the elements from that seed. Element-by-element drawing would cost ~30 ms per example;
# this way each example checks hundreds of elements in ~1 ms and still replays exactly.
# A few elements per example come from hypothesis's own float strategy, for its edge cases.
SCALE_STYLES = ["pow2", "any", "mixed"]


def _scales(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    """Positive normal float32 scales. Powers of two make (k + 0.5) * scale an exact tie
    after the division; "any" spans 1e-30..1e30 log-uniformly."""
    pow2 = np.ldexp(1.0, rng.integers(-30, 31, n))
    anything = 10.0 ** rng.uniform(-30, 30, n)
    if style == "pow2":
        return pow2.astype(np.float32)
    if style == "any":
        return anything.astype(np.float32)
    return np.where(rng.random(n) < 0.5, pow2, anything).astype(np.float32)


@st.composite
def qparams_and_shape(
    draw: st.DrawFn, spec: str, granularity: str
) -> tuple[QParams, tuple[int, ...], np.random.Generator]:
    """Random scales and zero points (anywhere in the type's range) in ONNX layout."""
    fmt = CASES[spec].fmt
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    axis = block_size = None
    if granularity == "per-tensor":
        shape: tuple[int, ...] = (draw(st.integers(1, 256)),)
        param_shape: tuple[int, ...] = ()
    else:
        ndim = draw(st.integers(2, 3))
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
        axis = draw(st.integers(0, ndim - 1))
        if granularity == "per-axis":
            param_shape = (shape[axis],)
        else:
            block_size = draw(st.integers(1, 5))
            # Lengths that are and are not multiples of the block (short last block).
            length = draw(st.integers(1, 4 * block_size))
            shape = tuple(length if d == axis else s for d, s in enumerate(shape))
            param_shape = blocked_shape(shape, axis, block_size)
    n = int(np.prod(param_shape))
    scale = _scales(rng, n, draw(st.sampled_from(SCALE_STYLES)))
    if CASES[spec].is_float8:
        zp = np.zeros(n)
    else:
        lo, hi = fmt.saturation_range
        zp = rng.integers(int(lo), int(hi) + 1, n)
    qp = QParams(
        scale=scale.reshape(param_shape),
        zero_point=zp.reshape(param_shape).astype(fmt.storage_dtype),
        axis=axis,
        block_size=block_size,
    )
    return qp, shape, rng


def _element_scales(qp: QParams, shape: tuple[int, ...]) -> np.ndarray:
    """The scale each element sees, laid out the same per-tensor / per-axis / blocked way
    (dequantizing ones with zero point 0 does exactly that)."""
    unit = QParams(
        scale=qp.scale,
        zero_point=np.zeros(qp.scale.shape, np.int8),
        axis=qp.axis,
        block_size=qp.block_size,
    )
    ones = np.ones(shape, np.int8)
    return dequantize(ones, unit, NumberFormat.parse("int8")).reshape(-1).astype(np.float64)


@st.composite
def inputs_for(draw: st.DrawFn, spec: str, granularity: str) -> tuple[np.ndarray, QParams]:
    """Float32 inputs mixing arbitrary bit patterns, exact ties (k + 0.5) * scale, values on
    and near the grid, values far outside the range, ±inf, ±0 (and NaN for FP8, whose NaN
    behaviour ONNX defines; for INT it is left undefined, see the NaN test below)."""
    qp, shape, rng = draw(qparams_and_shape(spec, granularity))
    n = int(np.prod(shape))
    s = _element_scales(qp, shape)
    k = rng.integers(-300, 301, n).astype(np.float64)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    if not CASES[spec].is_float8:
        bits = np.where(np.isnan(bits), np.float32(1.0), bits)
    inf = np.where(rng.random(n) < 0.5, np.inf, -np.inf)
    # Random bit patterns include signalling NaNs, whose float64 round trip flags "invalid".
    with np.errstate(over="ignore", invalid="ignore"):
        candidates = np.stack(
            [
                bits,
                (k + 0.5) * s,  # exact ties when s is a power of two
                k * s,  # on the grid
                (k + rng.uniform(-0.5, 0.5, n)) * s,  # near the grid
                k * 1e3 * s,  # far outside any range
                inf,
                np.zeros(n),
                -np.zeros(n),
            ]
        ).astype(np.float32)
    x = candidates[rng.integers(0, len(candidates), n), np.arange(n)]
    extra = draw(
        st.lists(
            st.floats(width=32, allow_nan=CASES[spec].is_float8),
            max_size=min(n, 8),
        ),
        label="hypothesis floats",
    )
    x[rng.choice(n, len(extra), replace=False)] = np.array(extra, np.float32)
    return x.reshape(shape), qp


@st.composite
def codes_for(draw: st.DrawFn, spec: str, granularity: str) -> tuple[np.ndarray, QParams]:
    """Every code of the type is fair game for DequantizeLinear (FP8: all 256 bytes,
    NaN and, for e5m2, infinities included)."""
    qp, shape, rng = draw(qparams_and_shape(spec, granularity))
    fmt = CASES[spec].fmt
    n = int(np.prod(shape))
    if CASES[spec].is_float8:
        raw = rng.integers(0, 256, n).astype(np.uint8)
        return raw.view(fmt.storage_dtype).reshape(shape), qp
    lo, hi = fmt.saturation_range
    return rng.integers(int(lo), int(hi) + 1, n).astype(fmt.storage_dtype).reshape(shape), qp


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("spec", list(CASES))
@FAST
@given(data=st.data())
def test_quantize_matches_onnxruntime(spec: str, granularity: str, data: st.DataObject) -> None:
    x, qp = data.draw(inputs_for(spec, granularity))
    # Symmetry changes how scales are chosen, never how QuantizeLinear saturates.
    fmt = NumberFormat.parse(spec, symmetric=data.draw(st.booleans(), label="symmetric"))
    ours = quantize(x, qp, fmt)
    assert ours.dtype == fmt.storage_dtype
    assert_same_bits(ours, ort_output_as_storage(spec, ort_quantize(spec, x, qp)))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("spec", list(CASES))
@FAST
@given(data=st.data())
def test_dequantize_matches_onnxruntime(spec: str, granularity: str, data: st.DataObject) -> None:
    q, qp = data.draw(codes_for(spec, granularity))
    fmt = NumberFormat.parse(spec, symmetric=data.draw(st.booleans(), label="symmetric"))
    ours = dequantize(q, qp, fmt)
    assert ours.dtype == np.float32
    assert_same_bits(ours, ort_dequantize(spec, q, qp))


@pytest.mark.parametrize("spec", ["int8", "uint8"])
def test_nan_saturates_to_type_minimum_like_onnxruntime(spec: str) -> None:
    # ONNX leaves NaN -> integer undefined; qviz follows onnxruntime's CPU kernels.
    fmt = CASES[spec].fmt
    qp = QParams(scale=np.float32(0.5), zero_point=np.array(3).astype(fmt.storage_dtype))
    x = np.array([np.nan, -np.nan, 1.0], np.float32)
    assert_same_bits(quantize(x, qp, fmt), ort_quantize(spec, x, qp))
    assert quantize(x, qp, fmt)[0] == fmt.saturation_range[0]


def test_symmetric_int8_saturates_to_type_range_not_scale_range() -> None:
    # The scale maps [-absmax, absmax] to -127..127, but ONNX saturates to -128.
    fmt = NumberFormat.parse("int8", symmetric=True)
    qp = compute_qparams(-1.0, 1.0, fmt)
    x = np.array([-10.0, 10.0], np.float32)
    assert quantize(x, qp, fmt).tolist() == [-128, 127]
    assert_same_bits(quantize(x, qp, fmt), ort_quantize("int8", x, qp))


# --------------------------------------------------------------------------- compute_qparams
ORT_QTYPE = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
bounds = st.one_of(
    st.floats(-1e3, 1e3, width=32),
    st.floats(-F32_MAX, F32_MAX, width=32),
    # Denormal-sized ranges, where ORT falls back to scale 1.0.
    st.floats(_f32(-1e-37), _f32(1e-37), width=32),
    st.just(0.0),
)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("spec", ["int8", "uint8"])
@settings(max_examples=100, deadline=None)
@given(a=bounds, b=bounds)
def test_compute_qparams_matches_onnxruntime(
    spec: str, symmetric: bool, a: float, b: float
) -> None:
    lo, hi = min(a, b), max(a, b)
    fmt = NumberFormat.parse(spec, symmetric=symmetric)
    qmin, qmax = get_qmin_qmax_for_qType(ORT_QTYPE[spec], symmetric=symmetric)
    assert (float(qmin), float(qmax)) == (fmt.qmin, fmt.qmax)
    zp_ref, scale_ref = compute_scale_zp(
        np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax, symmetric=symmetric
    )
    qp = compute_qparams(lo, hi, fmt)
    assert qp.scale.dtype == np.float32 and qp.scale.shape == ()
    assert qp.zero_point.dtype == fmt.storage_dtype
    assert qp.scale.view(np.uint32) == np.asarray(scale_ref, np.float32).view(np.uint32)
    assert int(qp.zero_point) == int(zp_ref)
    assert np.isfinite(qp.scale) and qp.scale > 0


@pytest.mark.parametrize("symmetric", [True, False])
@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(bounds, bounds), min_size=1, max_size=8),
)
def test_per_channel_qparams_match_onnxruntime_channel_by_channel(
    symmetric: bool, pairs: list[tuple[float, float]]
) -> None:
    lo = np.array([min(p) for p in pairs], np.float32)
    hi = np.array([max(p) for p in pairs], np.float32)
    fmt = NumberFormat.parse("int8", symmetric=symmetric)
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=symmetric)
    qp = compute_qparams(lo, hi, fmt, axis=0)
    assert qp.scale.shape == (len(pairs),) and qp.axis == 0
    for c in range(len(pairs)):
        zp_ref, scale_ref = compute_scale_zp(lo[c], hi[c], qmin, qmax, symmetric=symmetric)
        assert qp.scale[c] == np.float32(scale_ref)
        assert qp.zero_point[c] == zp_ref
