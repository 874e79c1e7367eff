"""Number formats, granularities, qparams guards and quantization grids (no onnxruntime here;
bit-exactness against it lives in test_quantize_vs_ort.py)."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qviz.core.errors import QvizError
from qviz.core.quant.formats import (
    NF4_LEVELS,
    FormatKind,
    Granularity,
    GranularityKind,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.quant.qparams import QParams, blocked_shape, compute_qparams
from qviz.core.quant.quantize import dequantize, fake_quantize, quantization_levels, quantize

INT_SPECS = [f"{u}int{b}" for u in ("", "u") for b in range(2, 9)]
ALL_SPECS = [*INT_SPECS, "fp8_e4m3fn", "fp8_e5m2", "nf4"]
F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- NumberFormat
@pytest.mark.parametrize(
    ("spec", "symmetric", "pow2"),
    list(itertools.product(ALL_SPECS, [True, False], [True, False])),
)
def test_parse_spec_round_trip(spec: str, symmetric: bool, pow2: bool) -> None:
    fmt = NumberFormat.parse(spec, symmetric=symmetric, pow2_scale=pow2)
    assert fmt.spec == spec
    assert NumberFormat.parse(fmt.spec, fmt.symmetric, fmt.pow2_scale) == fmt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", NumberFormat()),
        ("INT8", NumberFormat()),
        (" uint4 ", NumberFormat(bits=4, signed=False)),
        ("e4m3", NumberFormat(kind=FormatKind.FP8_E4M3FN)),
        ("FP8-E4M3FN", NumberFormat(kind=FormatKind.FP8_E4M3FN)),
        ("e5m2", NumberFormat(kind=FormatKind.FP8_E5M2)),
        ("nf4", NumberFormat(kind=FormatKind.NF4)),
    ],
)
def test_parse_accepts_aliases(text: str, expected: NumberFormat) -> None:
    assert NumberFormat.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["int9", "int1", "uint32", "int12", "int", "fp16", "", "e4m3fnuz", "nf8"]
)
def test_parse_rejects_unknown_text_with_one_line(text: str) -> None:
    with pytest.raises(QvizError) as info:
        NumberFormat.parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    assert "int2..int8, int16, uint2..uint8, uint16, fp8_e4m3fn, fp8_e5m2, nf4" in message


@pytest.mark.parametrize("bits", [0, 1, 9, 15, 32, -8])
def test_int_bits_are_validated(bits: int) -> None:
    with pytest.raises(QvizError, match="2 to 8 bits or 16"):
        NumberFormat(bits=bits)


@pytest.mark.parametrize("signed", [True, False])
def test_16_bit_int_is_onnx_int16(signed: bool) -> None:
    # ONNX (and ORT's QDQ quantizer) has 16-bit integer Q/DQ types: stored as themselves.
    fmt = NumberFormat.parse("int16" if signed else "uint16")
    assert fmt.bits == 16 and fmt.signed is signed
    assert fmt.storage_dtype == np.dtype(np.int16 if signed else np.uint16)
    assert fmt.onnx_dtype == (onnx.TensorProto.INT16 if signed else onnx.TensorProto.UINT16)
    assert fmt.saturation_range == ((-32768.0, 32767.0) if signed else (0.0, 65535.0))


def test_float_formats_are_normalized_to_their_fixed_shape() -> None:
    # FP8/NF4 are always signed, symmetric, and of fixed width, whatever the caller passed.
    nf4 = NumberFormat(kind=FormatKind.NF4, symmetric=False)
    assert (nf4.bits, nf4.signed, nf4.symmetric) == (4, True, True)
    e5m2 = NumberFormat(kind=FormatKind.FP8_E5M2, bits=4, signed=False)
    assert (e5m2.bits, e5m2.signed, e5m2.symmetric) == (8, True, True)
    assert NumberFormat.parse("nf4", symmetric=False) == NumberFormat.parse("nf4")


@pytest.mark.parametrize(
    ("spec", "symmetric", "qmin", "qmax", "saturation"),
    [
        ("int8", True, -127, 127, (-128, 127)),
        ("int8", False, -128, 127, (-128, 127)),
        ("uint8", True, 0, 255, (0, 255)),
        ("uint8", False, 0, 255, (0, 255)),
        ("int4", True, -7, 7, (-8, 7)),
        ("int4", False, -8, 7, (-8, 7)),
        ("uint4", False, 0, 15, (0, 15)),
        ("int2", True, -1, 1, (-2, 1)),
        ("uint3", False, 0, 7, (0, 7)),
        ("fp8_e4m3fn", True, -448, 448, (-448, 448)),
        ("fp8_e5m2", True, -57344, 57344, (-57344, 57344)),
        ("nf4", True, -1, 1, (-1, 1)),
    ],
)
def test_ranges(
    spec: str, symmetric: bool, qmin: float, qmax: float, saturation: tuple[float, float]
) -> None:
    fmt = NumberFormat.parse(spec, symmetric=symmetric)
    assert (fmt.qmin, fmt.qmax) == (qmin, qmax)
    assert fmt.saturation_range == saturation


@pytest.mark.parametrize(
    ("spec", "symmetric", "pow2", "label"),
    [
        ("int8", True, False, "int8 sym"),
        ("uint4", False, False, "uint4 asym"),
        ("int8", True, True, "int8 sym pow2"),
        ("int3", False, False, "int3 asym"),
        ("fp8_e4m3fn", True, False, "fp8 e4m3fn"),
        ("fp8_e5m2", False, False, "fp8 e5m2"),
        ("nf4", True, False, "nf4 (simulation only)"),
    ],
)
def test_labels(spec: str, symmetric: bool, pow2: bool, label: str) -> None:
    assert NumberFormat.parse(spec, symmetric=symmetric, pow2_scale=pow2).label == label


@pytest.mark.parametrize(
    ("spec", "onnx_dtype", "storage"),
    [
        ("int8", onnx.TensorProto.INT8, np.int8),
        ("uint8", onnx.TensorProto.UINT8, np.uint8),
        ("int4", onnx.TensorProto.INT4, np.int8),
        ("uint4", onnx.TensorProto.UINT4, np.uint8),
        ("int5", None, np.int8),
        ("uint2", None, np.uint8),
        ("fp8_e4m3fn", onnx.TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
        ("fp8_e5m2", onnx.TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2),
        ("nf4", None, np.uint8),
    ],
)
def test_runtime_types(spec: str, onnx_dtype: int | None, storage: type) -> None:
    fmt = NumberFormat.parse(spec)
    assert fmt.onnx_dtype == onnx_dtype
    assert fmt.native_activation == (onnx_dtype is not None)
    assert fmt.simulation_only == (spec == "nf4")  # sub-8-bit INT weights run in int8
    assert fmt.storage_dtype == np.dtype(storage)


# --------------------------------------------------------------------------- Granularity
@pytest.mark.parametrize(
    "granularity",
    [
        PerTensor(),
        PerAxis(),
        PerGroup(128),
        PerGroup(32),
    ],
)
def test_granularity_label_round_trip(granularity: Granularity) -> None:
    assert Granularity.parse(granularity.label) == granularity
    if isinstance(granularity, PerGroup):
        # The size written in the label wins over the argument.
        assert Granularity.parse(granularity.label, group_size=7) == granularity


def test_granularity_members_carry_only_their_parameter() -> None:
    assert not hasattr(PerTensor(), "group_size") and not hasattr(PerAxis(), "group_size")
    assert Granularity.of(GranularityKind.PER_GROUP, 16) == PerGroup(16)
    assert Granularity.of(GranularityKind.PER_CHANNEL, 16) == PerAxis()
    assert PerAxis(1).label == "per-axis (1)" and PerAxis(1) != PerAxis()


def test_granularity_labels_and_aliases() -> None:
    assert PerTensor().label == "per-tensor"
    assert PerAxis().label == "per-channel"
    assert PerGroup().label == "per-group (128)"
    assert Granularity.parse("Per Channel").kind is GranularityKind.PER_CHANNEL
    assert Granularity.parse("per_group", group_size=64) == PerGroup(64
    )
    assert Granularity.parse("group32").group_size == 32


@pytest.mark.parametrize("text", ["per-row", "", "per-tensor (64)", "channels"])
def test_granularity_rejects_unknown_text(text: str) -> None:
    with pytest.raises(QvizError, match="unknown granularity"):
        Granularity.parse(text)


def test_granularity_group_size_must_be_positive() -> None:
    with pytest.raises(QvizError):
        PerGroup(0)


# --------------------------------------------------------------------------- NF4
def test_nf4_levels_are_the_qlora_codebook() -> None:
    assert NF4_LEVELS.dtype == np.float32 and NF4_LEVELS.shape == (16,)
    assert np.all(np.diff(NF4_LEVELS) > 0)
    assert (NF4_LEVELS[0], NF4_LEVELS[7], NF4_LEVELS[15]) == (-1.0, 0.0, 1.0)
    # Two values from the QLoRA paper's appendix E, to catch a mistyped table.
    np.testing.assert_allclose(NF4_LEVELS[[1, 14]], [-0.6961928009986877, 0.7229568362236023])
    assert not NF4_LEVELS.flags.writeable


@settings(max_examples=100, deadline=None)
@given(
    x=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=64),
    absmax=st.floats(1e-3, 1e4),
)
def test_nf4_quantize_picks_the_nearest_level(x: list[float], absmax: float) -> None:
    fmt = NumberFormat.parse("nf4")
    qp = compute_qparams(-absmax, absmax, fmt)
    xs = np.array(x, np.float32)
    codes = quantize(xs, qp, fmt)
    assert codes.dtype == np.uint8 and codes.max() <= 15
    scaled = np.clip(xs / qp.scale, -1, 1).astype(np.float64)
    distance = np.abs(scaled[:, None] - NF4_LEVELS[None, :].astype(np.float64))
    chosen = distance[np.arange(len(xs)), codes]
    np.testing.assert_allclose(chosen, distance.min(axis=1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dequantize(codes, qp, fmt), NF4_LEVELS[codes] * qp.scale)


def test_nf4_scale_is_absmax_and_extremes_are_exact() -> None:
    fmt = NumberFormat.parse("nf4")
    qp = compute_qparams(np.array([-2.0, -0.5]), np.array([1.0, 3.0]), fmt, axis=1)
    np.testing.assert_array_equal(qp.scale, np.array([2.0, 3.0], np.float32))
    w = np.array([[-2.0, 3.0], [0.0, 0.0]], np.float32)  # column c uses scale c
    np.testing.assert_array_equal(fake_quantize(w, qp, fmt), w)
    assert quantize(np.array([np.nan], np.float32), compute_qparams(-1, 1, fmt), fmt)[0] == 7


# --------------------------------------------------------------------------- compute_qparams
def test_int8_symmetric_and_asymmetric() -> None:
    sym = compute_qparams(-1.0, 2.0, NumberFormat.parse("int8"))
    assert sym.scale == np.float32(4.0 / 254) and sym.zero_point == 0
    assert sym.zero_point.dtype == np.int8
    asym = compute_qparams(-1.0, 2.0, NumberFormat.parse("int8", symmetric=False))
    assert asym.scale == np.float32(3.0 / 255)
    assert asym.zero_point == round(-128 + 1.0 / (3.0 / 255))


def test_symmetric_unsigned_zero_point_is_the_midpoint_like_ort() -> None:
    assert compute_qparams(-1.0, 1.0, NumberFormat.parse("uint8")).zero_point == 128
    assert compute_qparams(-1.0, 1.0, NumberFormat.parse("uint4")).zero_point == 8


def test_range_is_widened_to_include_zero() -> None:
    fmt = NumberFormat.parse("uint8", symmetric=False)
    qp = compute_qparams(2.0, 5.0, fmt)
    assert qp.scale == np.float32(5.0 / 255) and qp.zero_point == 0
    assert fake_quantize(np.float32(0.0), qp, fmt) == 0.0


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_width_range_gives_scale_one(spec: str, symmetric: bool) -> None:
    fmt = NumberFormat.parse(spec, symmetric=symmetric)
    qp = compute_qparams(0.0, 0.0, fmt)
    assert qp.scale == 1.0 and float(qp.zero_point) == 0.0
    # A denormal-sized range would give a denormal scale: same fallback.
    assert compute_qparams(-1e-42, 1e-42, fmt).scale == 1.0


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("pow2", [True, False])
@pytest.mark.parametrize(
    ("lo", "hi"), [(-F32_MAX, F32_MAX), (-3.4e38, 0.0), (-np.inf, np.inf), (-1e300, 1e300)]
)
def test_huge_ranges_give_finite_positive_scales(
    spec: str, pow2: bool, lo: float, hi: float
) -> None:
    fmt = NumberFormat.parse(spec, symmetric=False, pow2_scale=pow2)
    qp = compute_qparams(lo, hi, fmt)
    assert np.isfinite(qp.scale) and qp.scale > 0
    with np.errstate(over="ignore"):
        x = np.array([lo, hi, 0.0], np.float32)
    assert not np.isnan(fake_quantize(x, qp, fmt)).any()


@pytest.mark.parametrize(("lo", "hi"), [(1.0, -1.0), (np.nan, 1.0), (0.0, np.nan)])
def test_bad_ranges_raise_qviz_error(lo: float, hi: float) -> None:
    with pytest.raises(QvizError):
        compute_qparams(lo, hi, NumberFormat())


@settings(max_examples=100, deadline=None)
@given(
    lo=st.floats(-1e30, 0.0),
    hi=st.floats(0.0, 1e30),
    spec=st.sampled_from(ALL_SPECS),
    symmetric=st.booleans(),
)
def test_pow2_scales_are_powers_of_two_covering_the_range(
    lo: float, hi: float, spec: str, symmetric: bool
) -> None:
    plain = compute_qparams(lo, hi, NumberFormat.parse(spec, symmetric=symmetric))
    fmt = NumberFormat.parse(spec, symmetric=symmetric, pow2_scale=True)
    qp = compute_qparams(lo, hi, fmt)
    mantissa, _ = np.frexp(qp.scale)
    assert mantissa == 0.5
    assert plain.scale <= qp.scale < 2 * plain.scale
    if plain.scale == qp.scale:
        return
    # Rounded up, so the clip range still maps inside the format (within half a step).
    low, high = fmt.saturation_range
    if fmt.kind.value == "int":
        zp = float(qp.zero_point)
        assert low - 0.5 <= lo / float(qp.scale) + zp and hi / float(qp.scale) + zp <= high + 0.5
    else:
        assert max(-lo, hi) / float(qp.scale) <= high


def test_pow2_scale_saturates_at_two_to_the_127() -> None:
    fmt = NumberFormat.parse("int2", pow2_scale=True)
    assert compute_qparams(-F32_MAX, F32_MAX, fmt).scale == np.float32(2.0**127)


def test_per_channel_and_blocked_shapes() -> None:
    fmt = NumberFormat.parse("int4", symmetric=False)
    lo = np.array([-1.0, -2.0, 0.0])
    hi = np.array([1.0, 0.5, 4.0])
    per_channel = compute_qparams(lo, hi, fmt, axis=1)
    assert per_channel.scale.shape == (3,) and per_channel.zero_point.dtype == np.int8
    assert blocked_shape((4, 10), axis=1, block_size=4) == (4, 3)
    blocked = compute_qparams(-np.ones((4, 3)), np.ones((4, 3)), fmt, axis=-1, block_size=4)
    assert blocked.axis == 1 and blocked.block_size == 4
    w = np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10)
    assert quantize(w, blocked, fmt).shape == (4, 10)
    with pytest.raises(ValueError, match="blocked parameter"):
        quantize(np.zeros((4, 13), np.float32), blocked, fmt)


def test_qparams_are_immutable_float32() -> None:
    qp = QParams(scale=np.array([0.5, 2.0]), zero_point=np.array([0, 0], np.int8), axis=0)
    assert qp.scale.dtype == np.float32
    with pytest.raises(ValueError):
        qp.scale[0] = 1.0
    with pytest.raises(ValueError):
        QParams(scale=np.ones(2), zero_point=np.zeros(3, np.int8), axis=0)


# --------------------------------------------------------------------------- grids
@pytest.mark.parametrize(
    ("spec", "symmetric", "count"),
    [
        ("int8", True, 256),  # -128 included: QuantizeLinear saturates to the type range
        ("int8", False, 256),
        ("uint8", False, 256),
        ("int4", True, 16),
        ("uint4", False, 16),
        ("int3", True, 8),
        ("uint2", False, 4),
        ("nf4", True, 16),
    ],
)
def test_quantization_level_counts(spec: str, symmetric: bool, count: int) -> None:
    fmt = NumberFormat.parse(spec, symmetric=symmetric)
    qp = compute_qparams(-1.5, 2.5, fmt)
    levels = quantization_levels(qp.scale, qp.zero_point, fmt)
    assert levels.dtype == np.float64 and len(levels) == count
    assert np.all(np.diff(levels) > 0)
    assert 0.0 in levels  # zero is always exactly representable


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_fp8_levels_are_every_finite_value(dtype: type) -> None:
    fmt = NumberFormat(
        kind=FormatKind.FP8_E4M3FN if dtype is ml_dtypes.float8_e4m3fn else FormatKind.FP8_E5M2
    )
    every = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
    finite = np.unique(every[np.isfinite(every)])  # +0 and -0 are one value
    levels = quantization_levels(1.0, 0, fmt)
    np.testing.assert_array_equal(levels, finite)
    assert len(levels) == {ml_dtypes.float8_e4m3fn: 253, ml_dtypes.float8_e5m2: 247}[dtype]
    np.testing.assert_array_equal(quantization_levels(0.5, 0, fmt), finite * 0.5)


@settings(max_examples=50, deadline=None)
@given(
    x=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=32),
    spec=st.sampled_from(ALL_SPECS),
)
def test_fake_quantized_values_lie_on_the_grid(x: list[float], spec: str) -> None:
    fmt = NumberFormat.parse(spec, symmetric=False)
    qp = compute_qparams(-3.0, 7.0, fmt)
    levels = quantization_levels(qp.scale, qp.zero_point, fmt)
    assert np.isin(fake_quantize(np.array(x, np.float32), qp, fmt).astype(np.float64), levels).all()
