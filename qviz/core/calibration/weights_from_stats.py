"""Weight analysis from :class:`WeightStats`: any method, format, per-tensor or per-channel,
without reading the weight again.

What :func:`qviz.core.calibration.weights.analyze_weight` computes from every value of a
tensor, computed here from its statistics (one histogram per channel, exact per-channel
min/max/sum of squares, a tensor histogram):

* ranges: MINMAX and MANUAL are exact; PERCENTILE, ENTROPY and MSE come from the histograms
  (as for activations). ENTROPY does not depend on the format and MSE only on it, so both
  are searched once per tensor (and format) and remembered in the statistics;
* metrics: the error of every channel's histogram under its scale and zero point, integrated
  exactly against the format's grid (``grid_error``; uniform spread inside a bin is the one
  approximation); the signal (sum of squares) is exact.

Per-group granularity needs the values (a block's range is its own): it is not handled here.
"""

from __future__ import annotations

import math

import numpy as np

from qviz.core.calibration.grid_error import RowErrors, level_grid, row_errors, row_sse
from qviz.core.calibration.methods import Method, MethodSpec, choose_range, choose_row_ranges
from qviz.core.calibration.metrics import TensorMetrics, sqnr_db
from qviz.core.calibration.weights import ChannelMetrics, WeightAnalysis
from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind, Granularity, NumberFormat, PerAxis, PerTensor
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.weight_stats import WeightStats

__all__ = ["analyze_weight_stats", "handles"]

# MSE search per channel: a coarse grid of clip fractions, then a fine one around the best.
_MSE_COARSE = 32
_MSE_FINE = 16
# Histogram bins (rows x bins) evaluated per chunk of the MSE search (bounds temporaries).
_MSE_CHUNK_BINS = 1 << 21
# Metrics and the MSE search integrate the error over at most this many bins per tensor:
# the channels' histograms are merged pairwise (never below 32 bins a channel) to get there.
# Over bins that wide the error integral still sees every level (it is exact under the
# uniform-in-bin assumption whatever the width); what coarser bins blur is where the tails
# of a channel end, which only matters for the clipped values.
METRIC_BINS = 1 << 19
_MIN_METRIC_BINS = 32
# Bisection steps of a per-channel |x| percentile: to 2^-24 of the channel's range, finer
# than the float32 scale it becomes.
_BISECTIONS = 24


def handles(ws: WeightStats, granularity: Granularity) -> bool:
    """Whether the statistics answer this granularity (per tensor, or per channel along the
    axis they were taken on)."""
    if isinstance(granularity, PerTensor):
        return True
    if isinstance(granularity, PerAxis):
        return granularity.axis is None or (
            ws.channel_axis is not None
            and granularity.axis % len(ws.shape) == ws.channel_axis
        )
    return False


def metric_rows(ws: WeightStats) -> HistogramRows:
    """``ws.rows`` with adjacent bins merged until at most ``METRIC_BINS`` remain in all."""
    def merge() -> HistogramRows:
        rows = ws.rows
        counts = rows.counts
        while (
            counts.shape[0] * counts.shape[1] > METRIC_BINS
            and counts.shape[1] >= 2 * _MIN_METRIC_BINS
            and counts.shape[1] % 2 == 0
        ):
            counts = counts.reshape(counts.shape[0], -1, 2).sum(axis=2)
        return rows if counts is rows.counts else HistogramRows(counts, rows.lo, rows.hi)

    return ws.remember(("metric_rows",), merge)


def _row_ranges(
    ws: WeightStats, spec: MethodSpec, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    vmin, vmax = ws.channel_min, ws.channel_max
    if spec.method is Method.ENTROPY:
        return ws.remember(
            ("entropy",), lambda: choose_row_ranges(ws.rows, vmin, vmax, spec, fmt)
        )
    if spec.method is Method.MSE:
        return ws.remember(
            ("mse", fmt), lambda: mse_row_ranges(metric_rows(ws), vmin, vmax, fmt)
        )
    if spec.method is Method.PERCENTILE and fmt.symmetric:
        t = abs_quantiles(ws.rows, spec.quantile, np.maximum(np.abs(vmin), np.abs(vmax)))
        lo, hi = np.clip(-t, vmin, vmax), np.clip(t, vmin, vmax)
        return lo, np.maximum(hi, lo)
    return choose_row_ranges(ws.rows, vmin, vmax, spec, fmt)


def abs_quantiles(rows: HistogramRows, q: float, amax: np.ndarray) -> np.ndarray:
    """Per row, the smallest ``t`` with at least a fraction ``q`` of the values in
    ``[-t, t]`` (the percentile of ``|x|`` that the symmetric PERCENTILE rule takes), found
    by bisection on the rows' own piecewise-linear CDFs: no ``|x|`` histogram is built."""
    target = q * rows.total
    lo = np.zeros_like(amax)
    hi = np.asarray(amax, dtype=np.float64).copy()
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        inside = (rows.cdf(mid[:, None]) - rows.cdf(-mid[:, None]))[:, 0]
        enough = inside >= target
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid)
    return hi


def mse_row_ranges(
    rows: HistogramRows, vmin: np.ndarray, vmax: np.ndarray, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the clip (a fraction of the data range, scaled as
    :func:`qviz.core.calibration.mse.scaled_ranges`) with the least squared error of the
    real quantizer, the error integrated over each bin against the format's grid. A coarse
    grid of fractions, then a fine one around the best; ties go to the larger clip."""
    from qviz.core.calibration.mse import scaled_ranges

    amax = np.maximum(np.abs(vmin), np.abs(vmax))
    n_rows = amax.size

    def best(fractions: np.ndarray) -> np.ndarray:
        out = np.empty(n_rows)
        k = fractions.shape[1]
        step = max(1, _MSE_CHUNK_BINS // (k * rows.counts.shape[1]))
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            f = fractions[r0:r1]
            lo, hi = scaled_ranges(f * amax[r0:r1, None], vmin[r0:r1, None],
                                   vmax[r0:r1, None], fmt)
            qp = compute_qparams(lo.ravel(), hi.ravel(), fmt, axis=0)
            sub = HistogramRows(
                np.repeat(rows.counts[r0:r1], k, axis=0),
                np.repeat(rows.lo[r0:r1], k),
                np.repeat(rows.hi[r0:r1], k),
            )
            zp = qp.zero_point.astype(np.float64) if fmt.kind is FormatKind.INT else 0.0
            sse = row_sse(sub, qp.scale, np.broadcast_to(zp, qp.scale.shape), fmt)
            sse = sse.reshape(r1 - r0, k)
            pick = k - 1 - np.argmin(sse[:, ::-1], axis=1)  # last argmin: largest clip
            out[r0:r1] = f[np.arange(r1 - r0), pick]
        return out

    coarse = np.broadcast_to(np.arange(1, _MSE_COARSE + 1) / _MSE_COARSE, (n_rows, _MSE_COARSE))
    s_best = best(np.ascontiguousarray(coarse))
    cell = 1.0 / _MSE_COARSE
    around = s_best[:, None] + (np.arange(_MSE_FINE + 1) / _MSE_FINE * 2.0 - 1.0) * cell
    s_best = best(np.clip(around, cell / _MSE_FINE, 1.0))
    lo, hi = scaled_ranges(s_best[:, None] * amax[:, None], vmin[:, None], vmax[:, None], fmt)
    lo = np.clip(lo[:, 0], vmin, vmax)
    hi = np.clip(hi[:, 0], vmin, vmax)
    return lo, np.maximum(hi, lo)


def analyze_weight_stats(
    ws: WeightStats, spec: MethodSpec, granularity: Granularity, fmt: NumberFormat
) -> WeightAnalysis:
    """Qparams and metrics of the weight ``ws`` describes, under ``spec``, ``granularity``
    (per tensor or per channel, see :func:`handles`) and ``fmt``."""
    if not handles(ws, granularity):
        raise QvizError(f"{granularity.label} needs the weight values, not its statistics")
    if isinstance(granularity, PerTensor):
        lo, hi = choose_range(ws.tensor, spec, fmt)
        qp = compute_qparams(lo, hi, fmt)
        scale = np.full(ws.n_channels, float(qp.scale))
        zp = np.full(ws.n_channels, float(qp.zero_point))
    else:
        if ws.channel_axis is None:
            raise QvizError("per-channel quantization needs a weight with an output-channel axis")
        lo_r, hi_r = _row_ranges(ws, spec, fmt)
        qp = compute_qparams(lo_r, hi_r, fmt, axis=ws.channel_axis)
        scale = qp.scale.astype(np.float64)
        zp = qp.zero_point.astype(np.float64)
    if fmt.kind is not FormatKind.INT:
        zp = np.zeros_like(scale)
    errors = row_errors(metric_rows(ws), scale, zp, fmt, ws.channel_min, ws.channel_max)
    metrics = _metrics(ws, qp, fmt, errors)
    channel = None
    if ws.channel_axis is not None:
        eff_lo, eff_hi = _scale_range(scale, zp, fmt)
        channel = ChannelMetrics(
            min=ws.channel_min,
            max=ws.channel_max,
            lo=eff_lo,
            hi=eff_hi,
            sqnr_db=sqnr_db(ws.channel_sumsq, errors.sse),
        )
    return WeightAnalysis(qparams=qp, metrics=metrics, channel_metrics=channel)


def _scale_range(
    scale: np.ndarray, zp: np.ndarray, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    return (fmt.qmin - zp) * scale, (fmt.qmax - zp) * scale


def _metrics(ws: WeightStats, qp: QParams, fmt: NumberFormat, errors: RowErrors) -> TensorMetrics:
    scale = qp.scale.astype(np.float64)
    zp = qp.zero_point.astype(np.float64) if fmt.kind is FormatKind.INT else np.zeros(scale.shape)
    eff_lo, eff_hi = _scale_range(scale, zp, fmt)
    grid = level_grid(fmt)
    unit_step = float(np.diff(grid.levels).max()) if grid.levels.size > 1 else 1.0
    n = ws.size
    sse = float(errors.sse.sum())
    signal = float(ws.channel_sumsq.sum())
    sum_x_err = float(errors.sum_x_err.sum())
    sum_q2 = max(signal + 2.0 * sum_x_err + sse, 0.0)
    if signal <= 0.0 and sum_q2 <= 0.0:
        cosine = 1.0
    elif signal <= 0.0 or sum_q2 <= 0.0:
        cosine = 0.0
    else:
        cosine = float(np.clip((signal + sum_x_err) / math.sqrt(signal * sum_q2), -1.0, 1.0))
    return TensorMetrics(
        lo=eff_lo,
        hi=eff_hi,
        scale=qp.scale,
        zero_point=qp.zero_point,
        step=scale * unit_step,
        clipped_fraction=min(max(float(errors.clipped.sum()) / n, 0.0), 1.0),
        mse=sse / n,
        sqnr_db=float(sqnr_db(signal, sse)),
        max_abs_error=float(errors.max_abs.max()) if errors.max_abs.size else 0.0,
        cosine=cosine,
    )
