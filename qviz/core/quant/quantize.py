"""Quantize and dequantize exactly as ONNX QuantizeLinear / DequantizeLinear (opset 21) do.

"Exactly" means bit for bit what onnxruntime's CPU kernels produce (tests/core/
test_quantize_vs_ort.py proves it): ``x / scale`` is a float32 *division* (not a multiply by
the reciprocal, which rounds differently), rounding is half to even, the zero point is added,
and the result saturates to the storage type's full range. Formats ONNX has no type for
(INT 2, 3, 5, 6, 7 bits and NF4) follow the same recipe at their own width.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.quant.formats import NF4_LEVELS, FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams

__all__ = [
    "dequantize",
    "fake_quantize",
    "quantization_levels",
    "quantize",
    "quantize_in_chunks",
]

# Values quantized at once by `quantize_in_chunks`: its float32 temporaries stay near 64 MB
# whatever the tensor (a large weight read memory-mapped is never copied whole).
_CHUNK_VALUES = 1 << 24

# Decision boundaries between neighbouring NF4 levels. A value exactly on a boundary goes to
# the lower level, as bitsandbytes' ``dQuantizeNF4`` (strict ``>`` comparisons) does.
_NF4_BOUNDS = ((NF4_LEVELS[:-1] + NF4_LEVELS[1:]) / np.float32(2.0)).astype(np.float32)
_NF4_ZERO_CODE = int(np.flatnonzero(NF4_LEVELS == 0.0)[0])


def _blocked_view(
    x: np.ndarray, qp: QParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For blocked qparams whose blocks tile the axis exactly: ``x`` with the axis split
    into (blocks, block_size) and the scale and zero point shaped to broadcast against it,
    so nothing the size of ``x`` is built for them. None otherwise."""
    if qp.block_size is None or qp.axis is None or x.ndim <= qp.axis:
        return None
    axis, size = qp.axis, qp.block_size
    n = x.shape[axis]
    if n % size or qp.scale.shape != (*x.shape[:axis], n // size, *x.shape[axis + 1:]):
        return None
    split = (*x.shape[:axis], n // size, size, *x.shape[axis + 1:])
    param_shape = (*x.shape[:axis], n // size, 1, *x.shape[axis + 1:])
    return x.reshape(split), qp.scale.reshape(param_shape), qp.zero_point.reshape(param_shape)


def _broadcast(param: np.ndarray, qp: QParams, shape: tuple[int, ...]) -> np.ndarray:
    """Lay ``param`` (scale or zero point) out so that it broadcasts against a tensor of
    ``shape``, following the ONNX rules for per-tensor, per-axis and blocked parameters."""
    if qp.axis is None:
        return param
    ndim = len(shape)
    if qp.axis >= ndim:
        raise ValueError(f"axis {qp.axis} out of range for a tensor of shape {shape}")
    if qp.block_size is None:
        if param.shape != (shape[qp.axis],):
            raise ValueError(
                f"per-axis parameter of shape {param.shape} does not match axis {qp.axis} "
                f"of a tensor of shape {shape}"
            )
        return param.reshape([shape[qp.axis] if d == qp.axis else 1 for d in range(ndim)])
    n_blocks = -(-shape[qp.axis] // qp.block_size)
    expected = tuple(n_blocks if d == qp.axis else shape[d] for d in range(ndim))
    if param.shape != expected:
        raise ValueError(
            f"blocked parameter of shape {param.shape} does not fit a tensor of shape {shape} "
            f"with block size {qp.block_size} along axis {qp.axis} (expected {expected})"
        )
    # Element i along the axis uses block i // block_size; the last block may be short.
    index = np.arange(shape[qp.axis]) // qp.block_size
    return np.take(param, index, axis=qp.axis)


def quantize(x: ArrayLike, qp: QParams, fmt: NumberFormat) -> np.ndarray:
    """ONNX QuantizeLinear (opset 21, ``saturate=1``), bit-identical to onnxruntime's CPU EP.

    INT: ``saturate(round_half_even(float32(x) / scale) + zero_point)`` to the storage type's
    full range (int8 -128..127 even when the scale was computed for -127..127; 2..7-bit
    formats to their own width). NaN saturates to the type minimum, as onnxruntime does.
    FP8: ``x / scale`` clipped to ±max, then cast with round-to-nearest-even; NaN stays NaN.
    The FP8 zero point is zero by construction (ONNX requires it) and is not added.
    NF4 (no ONNX reference): index of the nearest codebook level to ``x / scale``; NaN maps to
    the code of 0.

    MXFP4/NVFP4: ``x / scale`` clipped to +-6 and rounded to the nearest E2M1 value (ties
    to even), as the OCP and NVIDIA definitions do.

    Returns an array of ``fmt.storage_dtype`` with the shape of ``x``.
    """
    xf = np.asarray(x, dtype=np.float32)
    view = _blocked_view(xf, qp)
    if view is not None:
        xb, scale_b, zp_b = view
        zp_view = zp_b if fmt.kind is FormatKind.INT else None
        return _quantize(xb, scale_b, zp_view, fmt).reshape(xf.shape)
    scale = _broadcast(qp.scale, qp, xf.shape)
    zp = _broadcast(qp.zero_point, qp, xf.shape) if fmt.kind is FormatKind.INT else None
    return _quantize(xf, scale, zp, fmt)


def _quantize(
    xf: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, fmt: NumberFormat
) -> np.ndarray:
    """:func:`quantize` with the scale and zero point laid out to broadcast against ``xf``."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        scaled = xf / scale
    if fmt.kind is FormatKind.INT:
        type_min, type_max = fmt.saturation_range
        assert zero_point is not None
        zp = np.asarray(zero_point).astype(np.float32)
        # Clamp before rounding, like MLAS: the bounds are integers, so this equals
        # round-then-clamp, and it keeps inf out of the cast. fmax (not maximum) turns NaN
        # into the lower bound, which is what onnxruntime returns for NaN.
        clamped = np.minimum(np.fmax(scaled, type_min - zp), type_max - zp)
        return (np.rint(clamped) + zp).astype(fmt.storage_dtype)
    if fmt.kind is FormatKind.NF4:
        codes = np.searchsorted(_NF4_BOUNDS, scaled, side="left")
        return np.where(np.isnan(scaled), _NF4_ZERO_CODE, codes).astype(np.uint8)
    # FP8, saturate=1: ±inf and out-of-range values become ±max (np.clip keeps NaN NaN).
    # ml_dtypes casts float32 -> float8 (and E2M1) with a single round-to-nearest-even.
    limit = np.float32(fmt.qmax)
    return np.clip(scaled, -limit, limit).astype(fmt.storage_dtype)


def dequantize(q: ArrayLike, qp: QParams, fmt: NumberFormat) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21), bit-identical to onnxruntime's CPU EP: float32
    ``(q - zero_point) * scale`` (INT; the difference is exact in int32), ``float32(q) * scale``
    (FP8). NF4 (no ONNX reference): ``level[q] * scale``. Returns float32."""
    q_arr = np.asarray(q)
    view = _blocked_view(q_arr, qp)
    if view is not None:
        qb, scale_b, zp_b = view
        return _dequantize(qb, scale_b, zp_b, fmt).reshape(q_arr.shape)
    scale = _broadcast(qp.scale, qp, q_arr.shape)
    zp = _broadcast(qp.zero_point, qp, q_arr.shape) if fmt.kind is FormatKind.INT else None
    return _dequantize(q_arr, scale, zp, fmt)


def _dequantize(
    q_arr: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, fmt: NumberFormat
) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt.kind is FormatKind.INT:
            assert zero_point is not None
            zp = np.asarray(zero_point).astype(np.int32)
            return (q_arr.astype(np.int32) - zp).astype(np.float32) * scale
        if fmt.kind is FormatKind.NF4:
            return NF4_LEVELS[q_arr.astype(np.intp)] * scale
        return q_arr.astype(fmt.storage_dtype).astype(np.float32) * scale


def fake_quantize(x: ArrayLike, qp: QParams, fmt: NumberFormat) -> np.ndarray:
    """``dequantize(quantize(x))``: the float32 values a Q/DQ pair in the graph produces."""
    return dequantize(quantize(x, qp, fmt), qp, fmt)


def _all_codes(fmt: NumberFormat) -> np.ndarray:
    """Every storable code of ``fmt`` (finite ones only for FP8)."""
    if fmt.kind is FormatKind.INT:
        type_min, type_max = fmt.saturation_range
        return np.arange(int(type_min), int(type_max) + 1).astype(fmt.storage_dtype)
    if fmt.kind is FormatKind.NF4:
        return np.arange(len(NF4_LEVELS), dtype=np.uint8)
    n_codes = 16 if fmt.bits == 4 else 256  # E2M1 holds its 4 bits in a byte
    codes = np.arange(n_codes, dtype=np.uint8).view(fmt.storage_dtype)
    return codes[np.isfinite(codes.astype(np.float32))]


def quantization_levels(scale: ArrayLike, zero_point: ArrayLike, fmt: NumberFormat) -> np.ndarray:
    """Every value ``dequantize`` can return for a per-tensor scale and zero point: sorted,
    unique, float64 (for drawing the quantization grid).

    INT: one level per code of the storage range (int8: 256, including -128 although a
    symmetric scale maps the range to -127..127, because quantize saturates to -128).
    FP8: all finite values of the format times the scale; +0 and -0 are one level, so
    e4m3fn gives 253 levels and e5m2 247. NF4: the 16 codebook levels times the scale.
    Levels that overflow float32 (huge scales) are left out.
    """
    scale_arr = np.asarray(scale, dtype=np.float32)
    zp_arr = np.asarray(zero_point)
    if scale_arr.size != 1 or zp_arr.size != 1:
        raise ValueError("quantization_levels needs a per-tensor (scalar) scale and zero point")
    qp = QParams(
        scale=scale_arr.reshape(()), zero_point=zp_arr.reshape(()).astype(fmt.storage_dtype)
    )
    levels = dequantize(_all_codes(fmt), qp, fmt).astype(np.float64)
    return np.unique(levels[np.isfinite(levels)])


def quantize_in_chunks(
    x: np.ndarray, qp: QParams, fmt: NumberFormat, *, fake: bool = False
) -> np.ndarray:
    """:func:`quantize` (or :func:`fake_quantize` with ``fake``) of a large tensor, slice by
    slice along an axis the qparams do not vary along in blocks, so that memory beyond the
    result is a few times one slice: the same values, bit for bit."""
    arr = np.asarray(x)
    if arr.size <= _CHUNK_VALUES or arr.ndim == 0:
        return fake_quantize(arr, qp, fmt) if fake else quantize(arr, qp, fmt)
    axis = next((a for a in range(arr.ndim) if a != qp.axis and arr.shape[a] > 1), None)
    if axis is None:
        return fake_quantize(arr, qp, fmt) if fake else quantize(arr, qp, fmt)
    out = np.empty(arr.shape, dtype=np.float32 if fake else fmt.storage_dtype)
    step = max(1, _CHUNK_VALUES // max(arr.size // arr.shape[axis], 1))
    for start in range(0, arr.shape[axis], step):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, min(arr.shape[axis], start + step))
        part_qp = qp
        if qp.block_size is not None:  # the blocked scale has the tensor's rank
            part_qp = QParams(qp.scale[tuple(index)], qp.zero_point[tuple(index)],
                              axis=qp.axis, block_size=qp.block_size)
        part = arr[tuple(index)]
        out[tuple(index)] = fake_quantize(part, part_qp, fmt) if fake else quantize(
            part, part_qp, fmt)
    return out
