"""The activation term of SmoothQuant's error estimate: each channel's mean squared
quantization error of a rescaled activation ``X / s``, from its per-channel histograms.

Every channel's histogram stands for its values through a few sample points per bin
(``HistogramRows.sample_points``), quantized with the per-tensor grid the activation's method
picks for ``X / s``. The alpha search asks this for every candidate alpha; in NumPy that is a
(channels x points) array of points, its quantized copy, the errors and their weights for each.
For INT formats a compiled loop computes the same numbers point by point instead: the same
float64 point ``lo + offset * width`` clipped to the row, rounded to float32, divided by the
scale in float32, clamped to the storage range (NaN to its low end), rounded half to even,
times the scale, the error in float64 weighted by the bin's count. Only the order of the sums
differs from NumPy's. Other formats (FP8) take the NumPy path, which the tests hold the
compiled one to.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import choose_range
from qviz.core.quant.formats import FormatKind
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.tensor_stats import TensorStats

__all__ = ["SAMPLES_PER_BIN", "channel_errors", "numpy_channel_errors"]

SAMPLES_PER_BIN = 4


@numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _channel_errors(
    counts: Any, occupied: Any, offsets: Any, per_bin: int, lo: Any, hi: Any, scale: Any,
    zero: Any, type_min: Any, type_max: Any, out: Any,
) -> None:  # pragma: no cover
    n_rows, n_bins = counts.shape
    low = type_min - zero
    high = type_max - zero
    for r in range(n_rows):
        left = lo[r]
        right = hi[r]
        width = (right - left) / n_bins
        acc = 0.0
        total = 0.0
        for j in range(offsets.size):
            weight = counts[r, occupied[j // per_bin]] / per_bin
            point = min(max(left + offsets[j] * width, left), right)
            x = np.float32(point)
            t = x / scale
            if not t >= low:  # NaN too: onnxruntime returns the type's minimum
                t = low
            if t > high:
                t = high
            err = np.float64(np.rint(t) * scale) - point
            acc += weight * err * err
            total += weight
        out[r] = acc / max(total, 1e-300)


def _grid(scaled: TensorStats, cfg: TensorConfig) -> QParams:
    lo, hi = choose_range(scaled, cfg.spec, cfg.fmt)
    return compute_qparams(lo, hi, cfg.fmt)


def numpy_channel_errors(scaled: TensorStats, cfg: TensorConfig) -> np.ndarray:
    """:func:`channel_errors` in NumPy, any format (the reference)."""
    assert scaled.moments is not None
    qp = _grid(scaled, cfg)
    points, weights = scaled.moments.rows().sample_points(SAMPLES_PER_BIN)
    err = fake_quantize(points, qp, cfg.fmt).astype(np.float64) - points
    total = np.maximum(weights.sum(axis=1), 1e-300)
    result: np.ndarray = (weights * err * err).sum(axis=1) / total
    return result


def _offsets(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The occupied bins and the sample points' offsets in bins, as `sample_points` places
    them: its points on a row from 0 with bins of width 1 are the offsets themselves."""
    seen = np.asarray((counts > 0).any(axis=0))
    occupied = np.flatnonzero(seen)
    unit = HistogramRows(seen[None, :].astype(np.float64), np.zeros(1),
                         np.array([float(counts.shape[1])]))
    points, _ = unit.sample_points(SAMPLES_PER_BIN)
    return occupied, np.ascontiguousarray(points[0])


def channel_errors(scaled: TensorStats, cfg: TensorConfig) -> np.ndarray:
    """Mean squared quantization error of each channel of the activation ``scaled`` (the
    statistics of ``X / s``) under the per-tensor grid ``cfg`` picks for it; zeros when it
    stays float or is NF4 (no grid of its own)."""
    assert scaled.moments is not None
    n = scaled.moments.channels
    if not cfg.quantize or cfg.fmt.kind is FormatKind.NF4:
        return np.zeros(n)
    if cfg.fmt.kind is not FormatKind.INT:
        return numpy_channel_errors(scaled, cfg)
    qp = _grid(scaled, cfg)
    rows = scaled.moments.rows()
    occupied, offsets = _offsets(rows.counts)
    out = np.zeros(rows.counts.shape[0])
    type_min, type_max = cfg.fmt.saturation_range
    _channel_errors(
        np.ascontiguousarray(rows.counts, dtype=np.float64), occupied, offsets,
        SAMPLES_PER_BIN, rows.lo, rows.hi, np.float32(qp.scale),
        np.float32(qp.zero_point), np.float32(type_min), np.float32(type_max), out,
    )
    return out
