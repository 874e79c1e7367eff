"""Quantization parameters in the config file: scales kept bit-exact (hex beside the decimal),
zero points in their format's range, and their fit to a tensor's shape checked before a hand
edit can reach ONNX. Also the spelled-out non-finite floats strict JSON needs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from qviz.core.errors import QvizError
from qviz.core.files.float_hex import float32_from_hex, float32_hex
from qviz.core.files.validate import MAX_GROUP_SIZE, want_finite, want_int
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams, blocked_shape

__all__ = [
    "check_qparams_fit",
    "decode_float",
    "decode_qparams",
    "encode_float",
    "encode_qparams",
    "zero_point_range",
]

JsonDict = dict[str, Any]


def encode_float(value: float) -> float | str:
    """Strict JSON has no Infinity/NaN; an exact tensor's SQNR is +inf, so spell those out."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QvizError(f"{what}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise QvizError(f"{what}: expected a number, got {value!r}") from None


def encode_qparams(qp: QParams) -> JsonDict:
    scale = np.asarray(qp.scale, dtype=np.float32)
    zp = np.asarray(qp.zero_point)
    if zp.dtype.kind in "iu":
        zp_values: list[Any] = [int(v) for v in zp.reshape(-1)]
    else:  # FP8 zero points: stored as the exact decimal of their (always representable) value
        zp_values = [float(v) for v in zp.astype(np.float64).reshape(-1)]
    return {
        "axis": qp.axis,
        "block_size": qp.block_size,
        "shape": list(scale.shape),
        "scale": [float(v) for v in scale.reshape(-1)],
        "scale_hex": [float32_hex(v) for v in scale.reshape(-1)],
        "zero_point": zp_values,
        "zero_point_dtype": zp.dtype.name,
    }


def zero_point_range(fmt: NumberFormat) -> tuple[int, int]:
    """The zero points a format can hold: its integer type's range (0 only for FP8 and NF4)."""
    if fmt.kind is FormatKind.INT:
        if fmt.signed:
            half = 2 ** (fmt.bits - 1)
            return -half, half - 1
        return 0, 2**fmt.bits - 1
    return 0, 0


def decode_qparams(d: Mapping[str, Any], fmt: NumberFormat, what: str) -> QParams:
    try:
        shape = tuple(want_int(s, f"{what}: shape", 0) for s in d["shape"])
        hexes = list(d["scale_hex"])
        decimals = list(d["scale"])
        zps = list(d["zero_point"])
    except (KeyError, TypeError, ValueError):
        raise QvizError(f"{what}: needs shape, scale, scale_hex and zero_point") from None
    n = math.prod(shape)
    if not len(hexes) == len(decimals) == len(zps) == n:
        raise QvizError(f"{what}: scale/zero_point lengths do not match shape {list(shape)}")
    scale = np.array([float32_from_hex(str(h)) for h in hexes], dtype=np.float32)
    bad = np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))
    if bad.size:
        i = int(bad[0])
        raise QvizError(
            f"{what}: scale[{i}] is {float(scale[i])!r}; scales must be finite and positive"
        )
    readable = np.array([decode_float(v, what) for v in decimals], dtype=np.float64)
    # The decimals were written from these very float32 values, so they must map back onto
    # them exactly; a mismatch means one of the two was edited by hand.
    with np.errstate(over="ignore"):  # a huge hand-edited decimal is a mismatch, not a warning
        mismatch = np.flatnonzero(readable.astype(np.float32) != scale)
    if mismatch.size:
        i = int(mismatch[0])
        raise QvizError(
            f"{what}: scale[{i}] is {decimals[i]} but scale_hex[{i}] is {hexes[i]} "
            f"({float(scale[i])!r}); edit both or neither"
        )
    storage = np.dtype(fmt.storage_dtype)
    if d.get("zero_point_dtype", storage.name) != storage.name:
        raise QvizError(
            f"{what}: zero points are {d.get('zero_point_dtype')}, but {fmt.spec} stores "
            f"{storage.name}"
        )
    low, high = zero_point_range(fmt)
    zp_values = []
    for i, v in enumerate(zps):
        value = want_finite(v, f"{what}: zero_point[{i}]")
        if not value.is_integer() or not low <= value <= high:
            span = "0" if low == high == 0 else f"an integer in [{low}, {high}]"
            raise QvizError(f"{what}: zero_point[{i}] is {v!r}; {fmt.spec} takes {span}")
        zp_values.append(value)
    zp = np.array(zp_values, dtype=np.float64).astype(storage)
    axis = d.get("axis")
    block = d.get("block_size")
    try:
        return QParams(
            scale=scale.reshape(shape),
            zero_point=zp.reshape(shape),
            axis=None if axis is None else want_int(axis, f"{what}: axis", 0, 64),
            block_size=None if block is None else want_int(block, f"{what}: block_size", 1,
                                                           MAX_GROUP_SIZE),
        )
    except (ValueError, TypeError) as exc:  # QParams' own consistency checks
        raise QvizError(f"{what}: {exc}") from None


def check_qparams_fit(qp: QParams, shape: tuple[int, ...] | None, what: str) -> None:
    """The scales' shape must be what the tensor's shape and granularity give (one scale per
    tensor, per channel along ``axis``, or per block); a hand edit must not reach ONNX."""
    scale_shape = tuple(np.shape(qp.scale))
    if qp.axis is None:
        if int(np.size(qp.scale)) != 1:
            raise QvizError(f"{what}: {np.size(qp.scale)} scales but no axis")
        return
    if shape is None:  # an activation: its shape is known only when it runs
        if len(scale_shape) != 1 or qp.block_size is not None:
            raise QvizError(f"{what}: activations take one scale per channel on one axis")
        return
    if qp.axis >= len(shape):
        raise QvizError(f"{what}: axis {qp.axis} is outside the tensor's shape {list(shape)}")
    want = (
        (shape[qp.axis],) if qp.block_size is None
        else blocked_shape(shape, qp.axis, qp.block_size)
    )
    if scale_shape != want:
        raise QvizError(
            f"{what}: {list(scale_shape)} scales do not fit the tensor {list(shape)} "
            f"(axis {qp.axis}{'' if qp.block_size is None else f', blocks of {qp.block_size}'}"
            f": {list(want)})"
        )
