"""The grid a weight is rounded to: its quantization parameters under its settings, fast.

MinMax (the default for weights) and manual ranges need no histogram, so their parameters are
computed directly; other methods go through the full weight analysis. Shared by SmoothQuant's
alpha search (many candidate scalings per layer) and by GPTQ (which keeps the grid and changes
only the rounding).
"""

from __future__ import annotations

import numpy as np

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, choose_row_ranges
from qviz.core.calibration.weights import analyze_weight
from qviz.core.errors import QvizError
from qviz.core.quant.formats import PerAxis, PerGroup, PerTensor
from qviz.core.quant.qparams import QParams, compute_qparams

__all__ = ["expand_qparams", "qparams_from_extents", "weight_qparams"]


def weight_qparams(
    w: np.ndarray, channel_axis: int | None, reduction_axis: int | None, cfg: TensorConfig
) -> QParams:
    """The qparams `analyze_weight` gives `w` under `cfg` (the same numbers, without metrics
    for MinMax and manual ranges)."""
    spec, fmt, gran = cfg.spec, cfg.fmt, cfg.granularity
    if spec.method not in (Method.MINMAX, Method.MANUAL):
        return analyze_weight(w, channel_axis, reduction_axis, spec, gran, fmt).qparams
    arr = np.asarray(w, dtype=np.float32)
    if isinstance(gran, PerTensor):
        return qparams_from_extents(np.array([arr.min()]), np.array([arr.max()]), cfg, None)
    if isinstance(gran, PerAxis):
        axis = channel_axis if gran.axis is None else gran.axis % arr.ndim
        if axis is None:
            raise QvizError("per-channel quantization needs a weight with an output-channel axis")
        rows = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        return qparams_from_extents(rows.min(axis=1), rows.max(axis=1), cfg, axis)
    assert isinstance(gran, PerGroup)
    if reduction_axis is None:
        raise QvizError("per-group quantization needs a weight with a reduction axis")
    red = reduction_axis
    moved = np.moveaxis(arr, red, -1)
    starts = np.arange(0, moved.shape[-1], gran.group_size)
    vmin = np.minimum.reduceat(moved, starts, axis=-1).astype(np.float64)
    vmax = np.maximum.reduceat(moved, starts, axis=-1).astype(np.float64)
    lo, hi = choose_row_ranges(None, vmin.reshape(-1), vmax.reshape(-1), spec, fmt)
    lo = np.moveaxis(lo.reshape(vmin.shape), -1, red)
    hi = np.moveaxis(hi.reshape(vmax.shape), -1, red)
    return compute_qparams(lo, hi, fmt, axis=red, block_size=gran.group_size)


def qparams_from_extents(
    vmin: np.ndarray, vmax: np.ndarray, cfg: TensorConfig, axis: int | None
) -> QParams:
    """MinMax's or a manual range's qparams from a weight's extents: per tensor (``axis``
    None, one-value arrays) or one value per channel along ``axis``."""
    lo, hi = choose_row_ranges(None, vmin, vmax, cfg.spec, cfg.fmt)
    if axis is None:
        return compute_qparams(float(lo[0]), float(hi[0]), cfg.fmt)
    return compute_qparams(lo, hi, cfg.fmt, axis=axis)


def expand_qparams(qp: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (float32) of every element of a tensor of `shape`."""
    scale, zp = np.asarray(qp.scale), np.asarray(qp.zero_point).astype(np.float32)
    if qp.axis is None:
        return np.broadcast_to(scale, shape), np.broadcast_to(zp, shape)
    ndim = len(shape)
    if qp.block_size is None:
        layout = [shape[qp.axis] if d == qp.axis else 1 for d in range(ndim)]
        return (np.broadcast_to(scale.reshape(layout), shape),
                np.broadcast_to(zp.reshape(layout), shape))
    index = np.arange(shape[qp.axis]) // qp.block_size
    return np.take(scale, index, axis=qp.axis), np.take(zp, index, axis=qp.axis)
