"""Scales and zero points from a clip range, following onnxruntime's quantization tool.

``compute_qparams`` reproduces ``onnxruntime.quantization.quant_utils.compute_scale_zp``
(scale computed in float64 and stored as float32, zero point rounded half to even from the
float64 scale) and extends it to the formats ORT's tool does not cover (sub-byte simulated
INT, FP8, NF4), to arrays of ranges, and to power-of-two scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numpy.typing import ArrayLike

from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind, NumberFormat

__all__ = ["QParams", "blocked_shape", "compute_qparams"]

_F32 = np.finfo(np.float32)
# E2M1's largest exponent (its largest value is 1.5 * 2^2 = 6), and E4M3's largest value.
_E2M1_EMAX = 2
_E4M3_MAX = 448.0
# Smallest scale kept. ORT uses the smallest *normal* float32: a denormal scale loses
# precision and x / scale overflows to inf for ordinary x, so such scales become 1.0.
_MIN_SCALE = float(_F32.tiny)
# Largest float32 power of two is 2^127; rounding a scale above it "up" would give inf.
_MAX_POW2_EXPONENT = 127


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters of one tensor, laid out as ONNX QuantizeLinear takes them.

    ``scale`` is float32 with shape ``()`` (per-tensor), ``(C,)`` (per-axis along ``axis``) or
    the blocked shape (tensor shape with ``axis`` ceil-divided by ``block_size``).
    ``zero_point`` has the same shape in the format's storage dtype. Both arrays are copied and
    made read-only, so a QParams can be shared between threads. ``eq=False``: equality is
    identity, because element-wise array comparison has no single truth value.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        scale = np.array(self.scale, dtype=np.float32)
        zero_point = np.array(self.zero_point)
        if zero_point.shape != scale.shape:
            raise ValueError(
                f"zero_point shape {zero_point.shape} differs from scale shape {scale.shape}"
            )
        if self.axis is not None and self.axis < 0:
            raise ValueError(f"axis must be non-negative, not {self.axis}")
        if self.block_size is not None:
            if self.axis is None:
                raise ValueError("blocked quantization needs an axis")
            if self.block_size < 1:
                raise ValueError(f"block_size must be positive, not {self.block_size}")
            if self.axis >= scale.ndim:
                raise ValueError(f"axis {self.axis} out of range for blocked scale {scale.shape}")
        elif self.axis is not None and scale.ndim != 1:
            raise ValueError(f"per-axis scale must be 1-D, not shape {scale.shape}")
        elif self.axis is None and scale.ndim != 0:
            raise ValueError(f"per-tensor scale must be a scalar, not shape {scale.shape}")
        scale.setflags(write=False)
        zero_point.setflags(write=False)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)


def blocked_shape(shape: tuple[int, ...], axis: int, block_size: int) -> tuple[int, ...]:
    """Shape of the scale of a blocked quantization (ONNX opset 21 ``block_size``): ``shape``
    with ``axis`` divided by ``block_size``, rounded up (the last block may be short)."""
    out = list(shape)
    out[axis] = -(-shape[axis] // block_size)
    return tuple(out)


def _pow2_ceil(scale: np.ndarray) -> np.ndarray:
    """Round positive float32 scales up to a power of two, exactly (via frexp, not log2,
    whose rounding can land one power too low or too high)."""
    mantissa, exponent = np.frexp(scale)
    # frexp gives mantissa in [0.5, 1): exactly 0.5 means scale already is a power of two.
    # 2^128 would be inf in float32, so the exponent stops at 127. Only 2-bit INT and NF4
    # scales of ranges beyond 2^127 (~1.7e38) get there, and for them the clip range is no
    # longer fully covered: the one place where pow2 rounding goes down instead of up.
    up = np.ldexp(np.float32(1.0), np.minimum(exponent, _MAX_POW2_EXPONENT))
    return np.where(mantissa == 0.5, scale, up).astype(np.float32)


def _block_format_scale(absmax: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """MXFP4's E8M0 and NVFP4's E4M3-times-float32 block scales (see compute_qparams)."""
    if fmt.kind is FormatKind.MXFP4:
        _, exponent = np.frexp(absmax)  # absmax = m 2^e, m in [0.5, 1): floor(log2) = e - 1
        exponent = np.clip(exponent - 1 - _E2M1_EMAX, -127, 127)
        return np.where(absmax > 0, np.ldexp(1.0, exponent), 0.0)
    top = float(absmax.max()) if absmax.size else 0.0
    global_scale = np.float32(top / (fmt.qmax * _E4M3_MAX))
    if global_scale <= 0.0:
        return np.zeros(absmax.shape)
    block = (absmax / fmt.qmax / float(global_scale)).astype(np.float32)
    block = np.minimum(block, _E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return (block * global_scale).astype(np.float64)


def compute_qparams(
    lo: ArrayLike,
    hi: ArrayLike,
    fmt: NumberFormat,
    axis: int | None = None,
    block_size: int | None = None,
) -> QParams:
    """Scale and zero point mapping the clip range [lo, hi] onto ``fmt``.

    Matches ``onnxruntime.quantization.quant_utils.compute_scale_zp`` for INT formats:

    * the range is widened to include 0 (so zero is exactly representable);
    * symmetric uses ``absmax = max(|lo|, |hi|)`` and qmin/qmax from ``fmt`` (int8 -127..127);
      its zero point is ``round((qmin + qmax) / 2)`` (0 signed, 2^(b-1) unsigned: 128 for uint8);
    * ``scale = (hi - lo) / (qmax - qmin)`` in float64, stored as float32;
    * asymmetric ``zero_point = round(qmin - lo / scale)`` (half to even, float64 scale),
      clipped to [qmin, qmax];
    * a scale below the smallest normal float32 (zero-width or denormal range) becomes 1.0 with
      zero point 0, as ORT does.

    FP8 and NF4: ``scale = absmax / qmax`` (qmax 448, 57344 or 1), zero point 0.

    MXFP4 (blocks of 32): the OCP Microscaling rule, a power of two
    ``2^(floor(log2(absmax)) - 2)`` (E8M0; 2 is E2M1's largest exponent), so a block's
    largest values may exceed 6 steps and saturate, as the format does. NVFP4 (blocks of
    16): a per-tensor float32 scale ``g = max(absmax) / (6 * 448)`` and per block the E4M3
    value nearest ``absmax / (6 g)``; the block's scale is their product. Both need the
    blocked layout (``block_size`` equal to the format's block).

    Guards beyond ORT: NaN bounds raise QvizError; infinite or beyond-float32 bounds are clamped
    to ±3.4028235e38 first, so the scale is always finite (at most float32 max) and positive.
    ``fmt.pow2_scale`` then rounds the scale up to a power of two (the range stays covered,
    except above 2^127 where the scale saturates) and the zero point is recomputed from it.

    ``lo``/``hi`` are scalars (per-tensor), 1-D arrays with ``axis`` (per-axis), or arrays of
    the blocked scale shape with ``axis`` and ``block_size`` (see :func:`blocked_shape`).
    Bounds are rounded to float32 first, as ORT's calibrators deliver them.
    """
    lo_arr, hi_arr = np.broadcast_arrays(
        np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    )
    if np.isnan(lo_arr).any() or np.isnan(hi_arr).any():
        raise QvizError("the clip range contains NaN: the statistics hold no finite values")
    if (lo_arr > hi_arr).any():
        raise QvizError("the clip range is inverted: its low end is above its high end")
    if block_size is not None and axis is not None and axis < 0:
        axis += lo_arr.ndim  # the blocked scale has the tensor's rank, so -1 is well defined
    # Clamp, then round to float32 like ORT's float32 rmin/rmax, then compute in float64 so
    # hi - lo (up to 2 * float32 max) cannot overflow.
    lo64 = np.clip(lo_arr, -_F32.max, _F32.max).astype(np.float32).astype(np.float64)
    hi64 = np.clip(hi_arr, -_F32.max, _F32.max).astype(np.float32).astype(np.float64)
    lo64 = np.minimum(lo64, 0.0)
    hi64 = np.maximum(hi64, 0.0)

    qmin, qmax = fmt.qmin, fmt.qmax
    if fmt.kind is FormatKind.INT and not fmt.symmetric:
        scale64 = (hi64 - lo64) / (qmax - qmin)
    else:
        absmax = np.maximum(-lo64, hi64)
        if fmt.kind is FormatKind.INT:
            scale64 = (2.0 * absmax) / (qmax - qmin)
        else:
            scale64 = absmax / qmax
    if fmt.block_size is not None:
        if block_size != fmt.block_size:
            raise QvizError(
                f"{fmt.spec} takes one scale per block of {fmt.block_size}, "
                f"not {'per tensor or per channel' if block_size is None else block_size}"
            )
        scale64 = _block_format_scale(np.maximum(-lo64, hi64), fmt)
    degenerate = scale64 < _MIN_SCALE
    scale64 = np.where(degenerate, 1.0, scale64)
    scale = scale64.astype(np.float32)
    if fmt.pow2_scale:
        scale = _pow2_ceil(scale)
        # The zero point must follow the scale that is actually used.
        scale64 = np.where(degenerate, 1.0, scale.astype(np.float64))

    if fmt.kind is FormatKind.INT:
        if fmt.symmetric:
            # ORT's formula: independent of the scale, so every channel gets the same zero
            # point (QLinearConv on CPU requires that).
            zp = np.full(scale.shape, np.round((qmin + qmax) / 2.0))
        else:
            zp = np.clip(np.round(qmin - lo64 / scale64), qmin, qmax)
        zp = np.where(degenerate, 0.0, zp)
    else:
        zp = np.zeros(scale.shape)
    zero_point = zp.astype(fmt.storage_dtype)
    return QParams(scale=scale, zero_point=zero_point, axis=axis, block_size=block_size)
