"""Weight analysis: weights are constants, so their ranges and errors are computed exactly.

One call gives the qparams a granularity and method pick for a weight, the error over the
whole tensor, and (for weights with an output-channel axis) the error of every channel under
those qparams: the per-channel view shows which channels an outlier channel's per-tensor
scale ruins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.calibration.methods import Method, MethodSpec, choose_range, choose_row_ranges
from qviz.core.calibration.metrics import (
    TensorMetrics,
    exact_metrics_with_output,
    sqnr_db,
)
from qviz.core.calibration.mse import search_mse_ranges
from qviz.core.errors import QvizError
from qviz.core.quant.formats import (
    Granularity,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
    check_granularity,
)
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.tensor_stats import TensorStats, compute_stats

__all__ = [
    "ChannelMetrics", "WeightAnalysis", "analyze_weight", "group_qparams", "weight_analysis_of",
]

# Per-row (channel / block) histograms for ENTROPY and MSE: fewer bins than an activation's
# 2048 because a row holds far fewer values, and the cost is rows x bins.
ROW_BINS = 512
# MSE on rows up to this many values uses the values themselves as sample points (exact);
# longer rows use their histogram.
_EXACT_MSE_VALUES = 512
_ROW_MSE_PER_BIN = 1
# MSE grid per row (coarse points, fine points): 1/256 of the range, where one tensor gets
# 1/2048; rows x candidates x values is what a per-channel MSE search costs.
_ROW_MSE_GRID = (32, 16)


@dataclass(frozen=True, eq=False)
class ChannelMetrics:
    """Per output channel (arrays of length C, float64): exact ``min``/``max`` of the weights,
    the range ``lo``/``hi`` the chosen qparams represent for the channel (per-group: the
    envelope of its blocks), and ``sqnr_db`` of the channel under those qparams."""

    min: np.ndarray
    max: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sqnr_db: np.ndarray


@dataclass(frozen=True, eq=False)
class WeightAnalysis:
    qparams: QParams
    metrics: TensorMetrics
    channel_metrics: ChannelMetrics | None


def analyze_weight(
    w: ArrayLike,
    channel_axis: int | None,
    reduction_axis: int | None,
    spec: MethodSpec,
    granularity: Granularity,
    fmt: NumberFormat,
) -> WeightAnalysis:
    """Qparams and exact error of weight ``w`` under ``spec``, ``granularity`` and ``fmt``.

    * PER_TENSOR: ``choose_range`` on :func:`compute_stats` of the exact tensor (2048-bin
      histogram, exact min/max), as for an activation.
    * PER_CHANNEL (needs ``channel_axis``): one range per output channel. MINMAX is the exact
      per-channel min/max (onnxruntime's per-channel weight quantization); PERCENTILE is
      exact on each channel's values (``np.quantile`` "inverted_cdf", the definition the
      histogram percentile approximates, with the same symmetric / tail rules); ENTROPY
      uses per-channel 512-bin histograms; MSE uses each channel's values as sample points
      (histograms for channels over 512 values). All channels are processed at once.
    * PER_GROUP (needs ``reduction_axis``): blocks of ``granularity.group_size`` along the
      reduction axis (the last block may be short), one range per block, as ONNX blocked
      quantization (``block_size``) lays them out. MINMAX, PERCENTILE, MSE and MANUAL are
      supported; ENTROPY is not (a block of a few dozen values has no meaningful histogram
      to compare distributions on).

    Metrics are :func:`exact_metrics` over the whole tensor. ``channel_metrics`` is filled
    whenever ``channel_axis`` is given. NF4 is accepted here (weights are where it belongs).
    Raises QvizError for a missing axis, an empty or non-finite weight, or ENTROPY per group.
    """
    _check_choice(spec, granularity, fmt)
    arr = _checked(w)
    ch = _normalize_axis(channel_axis, arr.ndim, "channel")
    red = _normalize_axis(reduction_axis, arr.ndim, "reduction")
    if isinstance(granularity, PerTensor):
        lo, hi = per_tensor_range(range_stats(arr, ch), spec, fmt)
        qp = compute_qparams(lo, hi, fmt)
    elif isinstance(granularity, PerAxis):
        axis = ch if granularity.axis is None else _normalize_axis(granularity.axis, arr.ndim, "")
        if axis is None:
            raise QvizError("per-channel quantization needs a weight with an output-channel axis")
        rows = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        lo_r, hi_r = _row_ranges(rows, spec, fmt)
        qp = compute_qparams(lo_r, hi_r, fmt, axis=axis)
    else:
        assert isinstance(granularity, PerGroup)
        qp = group_qparams(arr, ch, red, spec, granularity, fmt)

    return weight_analysis_of(arr, ch, qp, fmt)


def _checked(w: ArrayLike) -> np.ndarray:
    arr = np.asarray(w)
    if arr.dtype.kind not in "fiub":
        raise QvizError(f"weight of dtype {arr.dtype} cannot be analysed")
    arr = arr.astype(np.float32, copy=False) if arr.dtype.kind != "f" else arr
    if arr.size == 0:
        raise QvizError("the weight is empty")
    if not np.isfinite(arr).all():
        raise QvizError("the weight contains NaN or Inf values")
    return arr


def range_stats(w: ArrayLike, channel_axis: int | None) -> TensorStats:
    """The statistics a per-tensor weight range is chosen from (`per_tensor_range`): one
    pass over the values, shared by every method."""
    arr = _checked(w)
    return compute_stats(arr, channel_axis=_normalize_axis(channel_axis, arr.ndim, "channel"))


def per_tensor_range(stats: TensorStats, spec: MethodSpec, fmt: NumberFormat) -> tuple[
    float, float
]:
    """The per-tensor range :func:`analyze_weight` gives `spec` and `fmt`, from the weight's
    `range_stats` (the error curve's markers take every method's from one pass)."""
    _check_choice(spec, PerTensor(), fmt)
    lo, hi = choose_range(stats, spec, fmt)
    return float(lo), float(hi)


def weight_analysis_of(
    w: np.ndarray,
    channel_axis: int | None,
    qp: QParams,
    fmt: NumberFormat,
    quantized: np.ndarray | None = None,
) -> WeightAnalysis:
    """The exact error of weight ``w`` under given qparams (``quantized``: the values the
    model really holds, when they are not ``fake_quantize(w)``), with per-channel metrics
    along ``channel_axis`` (non-negative, or None)."""
    metrics, fq = exact_metrics_with_output(w, qp, fmt, quantized)
    channel_metrics = (
        None if channel_axis is None else _channel_metrics(w, fq, qp, channel_axis, metrics)
    )
    return WeightAnalysis(qparams=qp, metrics=metrics, channel_metrics=channel_metrics)


def _check_choice(spec: MethodSpec, granularity: Granularity, fmt: NumberFormat) -> None:
    check_granularity(fmt, granularity)
    if fmt.block_size is not None and spec.method not in (Method.MINMAX, Method.MANUAL,
                                                          Method.PERCENTILE):
        raise QvizError(
            f"{fmt.spec} scales follow each block's largest value: use minmax or percentile"
        )


def group_qparams(
    arr: np.ndarray,
    channel_axis: int | None,
    reduction_axis: int | None,
    spec: MethodSpec,
    granularity: PerGroup,
    fmt: NumberFormat,
) -> QParams:
    """The per-group qparams :func:`analyze_weight` picks (blocks along the reduction axis);
    also what `weight_groups` computes a slice of channels at a time."""
    _check_choice(spec, granularity, fmt)
    red = _normalize_axis(reduction_axis, arr.ndim, "reduction")
    if red is None:
        raise QvizError("per-group quantization needs a weight with a reduction axis")
    if spec.method is Method.ENTROPY:
        raise QvizError(
            "entropy calibration is not available per group: use minmax, percentile or mse"
        )
    return _group_qparams(arr, red, granularity.group_size, spec, fmt)


def _normalize_axis(axis: int | None, ndim: int, what: str) -> int | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise QvizError(f"{what} axis {axis} does not exist in a {ndim}-D weight")
    return axis % ndim


def _row_ranges(
    rows: np.ndarray, spec: MethodSpec, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """A range per row of ``rows`` (R, N); NaN entries are padding and ignored."""
    x = rows.astype(np.float64)
    valid = ~np.isnan(x)
    vmin = np.where(valid, x, np.inf).min(axis=1)
    vmax = np.where(valid, x, -np.inf).max(axis=1)
    method = spec.method
    if method in (Method.MINMAX, Method.MANUAL):
        return choose_row_ranges(None, vmin, vmax, spec, fmt)
    if method is Method.PERCENTILE:
        lo, hi = _exact_percentile_rows(x, vmin, vmax, spec.quantile, fmt)
    elif method is Method.MSE and x.shape[1] <= _EXACT_MSE_VALUES:
        lo, hi = search_mse_ranges(
            np.nan_to_num(x), valid.astype(np.float64), vmin, vmax, fmt, *_ROW_MSE_GRID
        )
    else:
        hist = HistogramRows.from_values(x, ROW_BINS)
        if method is Method.MSE:
            points, weights = hist.sample_points(_ROW_MSE_PER_BIN)
            lo, hi = search_mse_ranges(points, weights, vmin, vmax, fmt, *_ROW_MSE_GRID)
        else:
            return choose_row_ranges(hist, vmin, vmax, spec, fmt)
    lo = np.clip(lo, vmin, vmax)
    hi = np.clip(hi, vmin, vmax)
    return lo, np.maximum(hi, lo)


def _exact_percentile_rows(
    x: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, q: float, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """The percentile rules of :func:`choose_row_ranges`, on exact values (NaN = padding)."""
    if fmt.symmetric:
        t = _row_quantile(np.abs(x), q)
        return -t, t
    cut = 1.0 - q
    upper_only = vmin >= 0.0
    lower_only = (vmax <= 0.0) & ~upper_only
    q_lo = np.where(lower_only, cut, cut / 2.0)
    q_hi = np.where(upper_only, q, 1.0 - cut / 2.0)
    lo = np.where(upper_only, vmin, _row_quantile(x, q_lo))
    hi = np.where(lower_only, vmax, _row_quantile(x, q_hi))
    return lo, hi


def _row_quantile(x: np.ndarray, q: ArrayLike) -> np.ndarray:
    """Per row, the smallest value whose empirical CDF reaches ``q`` (numpy's
    "inverted_cdf" quantile), ignoring NaN. Vectorized: ``np.nanquantile`` falls back to a
    Python loop over rows when NaN (block padding) is present."""
    ordered = np.sort(x, axis=1)  # NaN sorts last
    n_valid = np.count_nonzero(~np.isnan(x), axis=1)
    index = np.ceil(np.asarray(q, dtype=np.float64) * n_valid).astype(np.intp) - 1
    index = np.clip(index, 0, np.maximum(n_valid - 1, 0))
    return np.take_along_axis(ordered, index[:, None], axis=1)[:, 0]


def _group_qparams(
    arr: np.ndarray, red: int, group_size: int, spec: MethodSpec, fmt: NumberFormat
) -> QParams:
    """Blocked qparams: ``group_size`` values along ``red`` per block, last block short."""
    moved = np.moveaxis(arr, red, -1)  # (..., K)
    k = moved.shape[-1]
    n_blocks = -(-k // group_size)
    if spec.method is Method.MINMAX:
        # Exact and cheap: reduceat over block starts needs no padding.
        starts = np.arange(0, k, group_size)
        lo = np.minimum.reduceat(moved, starts, axis=-1).astype(np.float64)
        hi = np.maximum.reduceat(moved, starts, axis=-1).astype(np.float64)
    else:
        padded = np.full((*moved.shape[:-1], n_blocks * group_size), np.nan)
        padded[..., :k] = moved
        rows = padded.reshape(-1, group_size)
        lo_r, hi_r = _row_ranges(rows, spec, fmt)
        lo = lo_r.reshape(*moved.shape[:-1], n_blocks)
        hi = hi_r.reshape(*moved.shape[:-1], n_blocks)
    lo = np.moveaxis(lo, -1, red)
    hi = np.moveaxis(hi, -1, red)
    return compute_qparams(lo, hi, fmt, axis=red, block_size=group_size)


def _channel_metrics(
    arr: np.ndarray, fq: np.ndarray, qp: QParams, ch: int, metrics: TensorMetrics
) -> ChannelMetrics:
    others = tuple(d for d in range(arr.ndim) if d != ch)
    x = arr.astype(np.float64)
    err = fq.astype(np.float64) - x
    signal = (x * x).sum(axis=others)
    noise = (err * err).sum(axis=others)
    n_channels = arr.shape[ch]
    lo, hi = metrics.lo, metrics.hi
    if qp.axis is None:
        lo_c = np.full(n_channels, float(lo))
        hi_c = np.full(n_channels, float(hi))
    elif qp.block_size is None:
        lo_c, hi_c = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    else:
        block_others = tuple(d for d in range(lo.ndim) if d != ch)
        lo_c = np.asarray(lo).min(axis=block_others) if block_others else np.asarray(lo)
        hi_c = np.asarray(hi).max(axis=block_others) if block_others else np.asarray(hi)
    return ChannelMetrics(
        min=x.min(axis=others),
        max=x.max(axis=others),
        lo=np.asarray(lo_c, dtype=np.float64),
        hi=np.asarray(hi_c, dtype=np.float64),
        sqnr_db=sqnr_db(signal, noise),
    )
