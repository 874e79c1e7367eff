"""Quantization error metrics, from a histogram (activations) or from an exact tensor (weights).

Both use the real quantizer (:func:`qviz.core.quant.quantize.fake_quantize`, bit-exact ONNX
QuantizeLinear/DequantizeLinear), so INT, FP8 and NF4 are measured the same way. Histogram
metrics evaluate it on stratified sub-bin sample points (values are taken to be spread
uniformly inside each bin); exact metrics evaluate it on every element. Errors are formed and
squared in float64, so values up to 1e30 cannot overflow.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.calibration.kl_curve import entropy_levels, kl_divergence_curve
from qviz.core.calibration.methods import data_extent
from qviz.core.calibration.mse import range_mse, scaled_ranges
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.quant.quantize import fake_quantize, quantization_levels
from qviz.core.stats.tensor_stats import TensorStats

__all__ = [
    "ErrorCurve",
    "TensorMetrics",
    "clip_bounds",
    "error_curve",
    "exact_metrics",
    "histogram_metrics",
    "histogram_metrics_of",
    "scale_range",
    "sqnr_db",
    "weighted_sum",
]

# Sub-bin sample points per histogram bin for histogram metrics, and for error curves
# (which evaluate every clip at once: fewer points keep a 200-clip curve near 50 ms).
_PER_BIN = 8
_CURVE_PER_BIN = 4


@dataclass(frozen=True, eq=False)
class TensorMetrics:
    """Error of one quantized tensor.

    ``lo``/``hi``: the range the qparams map onto ``[qmin, qmax]``, i.e. the chosen clip range
    after compute_qparams widened it to zero and symmetrised it (shape () or per
    channel/block, float64). ``step``: the quantization step (INT: the scale; FP8/NF4: the
    largest gap between adjacent levels). ``clipped_fraction``: fraction of values the
    quantizer clips, i.e. beyond :func:`clip_bounds` (outermost level plus half a step), whose
    error exceeds rounding error. ``mse``: mean squared error;
    ``sqnr_db``: 10 log10(mean x^2 / mse) (+inf when there is no error); ``max_abs_error``:
    largest |error|; ``cosine``: cosine similarity of the original and quantized values.
    """

    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    step: np.ndarray
    clipped_fraction: float
    mse: float
    sqnr_db: float
    max_abs_error: float
    cosine: float

    @property
    def envelope(self) -> tuple[float, float]:
        """The whole covered range as one (lo, hi): per-channel and per-group ranges give
        the lowest low and the highest high."""
        return float(np.min(self.lo)), float(np.max(self.hi))


@dataclass(frozen=True, eq=False)
class ErrorCurve:
    """Error as a function of the clip magnitude (see :func:`error_curve`); arrays (K,)."""

    clips: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mse: np.ndarray
    sqnr_db: np.ndarray
    kl: np.ndarray

    @property
    def best_mse_clip(self) -> float:
        """Clip with the smallest MSE (the largest one among ties)."""
        if self.clips.size == 0:
            return math.nan
        return float(self.clips[self.mse.size - 1 - int(np.argmin(self.mse[::-1]))])


# ---------------------------------------------------------------------- helpers
def sqnr_db(signal_power: ArrayLike, noise_power: ArrayLike) -> np.ndarray:
    """10 log10(signal / noise): +inf for zero noise, -inf for zero signal with noise."""
    s = np.asarray(signal_power, dtype=np.float64)
    n = np.asarray(noise_power, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(s / n)
    out = np.where(n <= 0.0, np.inf, out)
    return np.where((s <= 0.0) & (n > 0.0), -np.inf, out)


def _cosine(dot: float, norm_x2: float, norm_q2: float) -> float:
    if norm_x2 <= 0.0 and norm_q2 <= 0.0:
        return 1.0  # both all-zero: identical
    if norm_x2 <= 0.0 or norm_q2 <= 0.0:
        return 0.0
    return float(np.clip(dot / math.sqrt(norm_x2 * norm_q2), -1.0, 1.0))


def _unit_step(fmt: NumberFormat) -> float:
    """Largest gap between adjacent levels at scale 1 (1 for INT)."""
    if fmt.kind is FormatKind.INT:
        return 1.0
    levels = quantization_levels(1.0, np.zeros((), dtype=fmt.storage_dtype), fmt)
    return float(np.diff(levels).max())


@functools.lru_cache(maxsize=16)
def _unit_outer_levels(fmt: NumberFormat) -> tuple[float, float, float, float]:
    """Outermost levels and the gaps next to them at scale 1, zero point 0 (NF4/FP8)."""
    levels = quantization_levels(1.0, np.zeros((), dtype=fmt.storage_dtype), fmt)
    return (
        float(levels[0]),
        float(levels[1] - levels[0]),
        float(levels[-1]),
        float(levels[-1] - levels[-2]),
    )


def clip_bounds(qp: QParams, fmt: NumberFormat) -> tuple[np.ndarray, np.ndarray]:
    """Per scale entry (float64), the values beyond which ``quantize`` clips: the outermost
    levels widened by half the step next to them. Inside, the error is at most half a
    step (rounding); beyond, it grows with the distance (clipping). INT uses the storage
    range (int8 sym saturates at -128 * scale)."""
    scale = qp.scale.astype(np.float64)
    if fmt.kind is FormatKind.INT:
        type_min, type_max = fmt.saturation_range
        zp = qp.zero_point.astype(np.float64)
        return (type_min - zp - 0.5) * scale, (type_max - zp + 0.5) * scale
    low, low_gap, high, high_gap = _unit_outer_levels(fmt)
    return (low - 0.5 * low_gap) * scale, (high + 0.5 * high_gap) * scale


def scale_range(qp: QParams, fmt: NumberFormat) -> tuple[np.ndarray, np.ndarray]:
    """The range the scale maps onto [qmin, qmax]: the effective clip range."""
    scale = qp.scale.astype(np.float64)
    zp = qp.zero_point.astype(np.float64)
    return (fmt.qmin - zp) * scale, (fmt.qmax - zp) * scale


def _step(qp: QParams, fmt: NumberFormat) -> np.ndarray:
    return qp.scale.astype(np.float64) * _unit_step(fmt)


# ---------------------------------------------------------------------- histogram metrics
def weighted_sum(weights: np.ndarray, values: np.ndarray) -> float:
    """``sum(weights * values)`` of two 1-D float64 arrays of histogram sample points.

    Not ``np.dot``: OpenBLAS spreads a dot product of over 10,000 values across its threads,
    and waking them costs more than the sum (about 1 ms a call on a busy machine, against
    microseconds); the metrics of one view take dozens of such sums."""
    return float(np.einsum("i,i->", weights, values))


def histogram_metrics(stats: TensorStats, lo: float, hi: float, fmt: NumberFormat) -> TensorMetrics:
    """Metrics of quantizing the histogram's values with the per-tensor range ``(lo, hi)``.

    The values are those of ``stats.histogram`` (finite, ``|x| < EXTREME_THRESHOLD``).
    MSE, SQNR and cosine evaluate ``fake_quantize`` on 8 stratified sample points per occupied
    bin, weighted by the bin's count. ``clipped_fraction`` is the histogram mass beyond
    :func:`clip_bounds` (piecewise-linear CDF, exact under the uniform-in-bin assumption).
    ``max_abs_error`` is exact over the occupied bins' intervals (clamped to the data's
    min/max): the error at each interval's ends (which covers clipping) and, for every
    rounding boundary inside an interval, half the gap between the two levels it separates.
    An empty histogram gives zero error, SQNR +inf and cosine 1.
    """
    return histogram_metrics_of(stats, compute_qparams(lo, hi, fmt), fmt)


def histogram_metrics_of(stats: TensorStats, qp: QParams, fmt: NumberFormat) -> TensorMetrics:
    """:func:`histogram_metrics` for given per-tensor qparams (an imported scale and zero
    point, which no clip range reproduces bit for bit)."""
    eff_lo, eff_hi = scale_range(qp, fmt)
    hist = stats.histogram
    base = {
        "lo": eff_lo,
        "hi": eff_hi,
        "scale": qp.scale,
        "zero_point": qp.zero_point,
        "step": _step(qp, fmt),
    }
    total = hist.total
    if total <= 0.0:
        return TensorMetrics(
            **base, clipped_fraction=0.0, mse=0.0, sqnr_db=math.inf, max_abs_error=0.0, cosine=1.0
        )
    points, weights = hist.sample_points(_PER_BIN)
    x32 = points.astype(np.float32)
    x = x32.astype(np.float64)
    xq = fake_quantize(x32, qp, fmt).astype(np.float64)
    err = xq - x
    wsum = weights.sum()
    mse = weighted_sum(weights, err * err) / wsum
    signal = weighted_sum(weights, x * x) / wsum
    cosine = _cosine(
        weighted_sum(weights, x * xq),
        weighted_sum(weights, x * x),
        weighted_sum(weights, xq * xq),
    )

    levels = quantization_levels(qp.scale, qp.zero_point, fmt)
    below, above = clip_bounds(qp, fmt)
    clipped = float(hist.cdf(float(below)) + (total - hist.cdf(float(above))))
    return TensorMetrics(
        **base,
        clipped_fraction=min(max(clipped / total, 0.0), 1.0),
        mse=mse,
        sqnr_db=float(sqnr_db(signal, mse)),
        max_abs_error=_histogram_max_error(stats, qp, fmt, levels),
        cosine=cosine,
    )


def _histogram_max_error(
    stats: TensorStats, qp: QParams, fmt: NumberFormat, levels: np.ndarray
) -> float:
    hist = stats.histogram
    occupied = np.flatnonzero(hist.counts > 0)
    vmin, vmax = data_extent(stats)
    a = np.clip(hist.lo + occupied * hist.bin_width, vmin, vmax)
    b = np.clip(hist.lo + (occupied + 1) * hist.bin_width, vmin, vmax)
    ends = np.concatenate((a, b)).astype(np.float32)
    end_err = np.abs(fake_quantize(ends, qp, fmt).astype(np.float64) - ends.astype(np.float64))
    worst = float(end_err.max()) if end_err.size else 0.0
    if levels.size < 2:
        return worst
    mids = 0.5 * (levels[:-1] + levels[1:])
    half_gaps = np.append(0.5 * np.diff(levels), 0.0)  # padded: reduceat may index the end
    i0 = np.searchsorted(mids, a, side="right")  # first boundary strictly above a
    i1 = np.searchsorted(mids, b, side="left")  # first boundary at or above b
    has = i1 > i0
    if has.any():
        # max over half_gaps[i0:i1] for every interval at once: reduceat over (i0, i1) pairs.
        idx = np.stack((i0, i1), axis=1).ravel()
        seg = np.maximum.reduceat(half_gaps, idx)[::2]
        worst = max(worst, float(seg[has].max()))
    return worst


# ---------------------------------------------------------------------- exact metrics
def exact_metrics(x: ArrayLike, qp: QParams, fmt: NumberFormat) -> TensorMetrics:
    """Metrics of ``fake_quantize(x, qp, fmt)`` over every finite element of ``x``: exact
    (float32 values as ONNX would quantize them; sums in float64). Per-tensor, per-axis and
    blocked qparams alike. A tensor with no finite values gives zero error."""
    metrics, _ = exact_metrics_with_output(x, qp, fmt)
    return metrics


def exact_metrics_with_output(
    x: ArrayLike, qp: QParams, fmt: NumberFormat, quantized: ArrayLike | None = None
) -> tuple[TensorMetrics, np.ndarray]:
    """:func:`exact_metrics` plus the fake-quantized float32 tensor (for per-channel sums).

    ``quantized``: the values the quantized model really holds, when they are not
    ``fake_quantize(x)`` (an imported weight whose tool chose its own codes)."""
    x32 = np.asarray(x, dtype=np.float32)
    xq32 = fake_quantize(x32, qp, fmt) if quantized is None else np.asarray(quantized, np.float32)
    finite = np.isfinite(x32)
    all_finite = bool(finite.all())
    xv = x32.astype(np.float64) if all_finite else x32[finite].astype(np.float64)
    qv = xq32.astype(np.float64) if all_finite else xq32[finite].astype(np.float64)
    eff_lo, eff_hi = scale_range(qp, fmt)
    sat_lo, sat_hi = clip_bounds(qp, fmt)
    n = xv.size
    if n == 0:
        metrics = TensorMetrics(
            lo=eff_lo,
            hi=eff_hi,
            scale=qp.scale,
            zero_point=qp.zero_point,
            step=_step(qp, fmt),
            clipped_fraction=0.0,
            mse=0.0,
            sqnr_db=math.inf,
            max_abs_error=0.0,
            cosine=1.0,
        )
        return metrics, xq32
    err = (qv - xv).ravel()
    xr = xv.ravel()
    qr = qv.ravel()
    sq_err = float(np.dot(err, err))
    sq_x = float(np.dot(xr, xr))
    lo_b = _expand(sat_lo, qp, x32.shape)
    hi_b = _expand(sat_hi, qp, x32.shape)
    with np.errstate(invalid="ignore"):
        clipped = (x32 < lo_b) | (x32 > hi_b)
    metrics = TensorMetrics(
        lo=eff_lo,
        hi=eff_hi,
        scale=qp.scale,
        zero_point=qp.zero_point,
        step=_step(qp, fmt),
        clipped_fraction=float(np.count_nonzero(clipped & finite)) / n,
        mse=sq_err / n,
        sqnr_db=float(sqnr_db(sq_x, sq_err)),
        max_abs_error=float(np.abs(err).max()),
        cosine=_cosine(float(np.dot(xr, qr)), sq_x, float(np.dot(qr, qr))),
    )
    return metrics, xq32


def _expand(param: np.ndarray, qp: QParams, shape: tuple[int, ...]) -> np.ndarray:
    """Lay a per-scale array out to broadcast against a tensor of ``shape`` (ONNX rules)."""
    if qp.axis is None:
        return param
    ndim = len(shape)
    if qp.block_size is None:
        return param.reshape([shape[qp.axis] if d == qp.axis else 1 for d in range(ndim)])
    index = np.arange(shape[qp.axis]) // qp.block_size
    return np.take(param, index, axis=qp.axis)


# ---------------------------------------------------------------------- error curve
def error_curve(stats: TensorStats, fmt: NumberFormat, clips: ArrayLike) -> ErrorCurve:
    """MSE, SQNR and KL divergence of the histogram's values as functions of the clip.

    ``clips`` (K,) are clip magnitudes ``c`` turned into ranges by
    :func:`qviz.core.calibration.methods.scaled_ranges`: ``(-c, c)`` for symmetric formats; for
    asymmetric ones the data range scaled by ``c / max|x|``, so ``c`` is the upper bound and
    the lower bound is scaled proportionally when min < 0 (ReLU data keeps ``[0, c]``).
    MSE uses the real quantizer on sub-bin sample points, all clips in one vectorized pass
    (the numbers :func:`histogram_metrics` gives for each range, with 4 rather than 8
    sample points per bin). KL is TensorRT's entropy criterion (the quantity the ENTROPY
    method minimises) at the ``|x|`` histogram bin nearest ``c``; it describes activation
    histograms and is NaN for an empty one.
    """
    c = np.asarray(clips, dtype=np.float64).reshape(-1)
    vmin, vmax = data_extent(stats)
    lo, hi = scaled_ranges(c, vmin, vmax, fmt)
    hist = stats.histogram
    if stats.count == 0 or hist.total <= 0.0 or c.size == 0:
        nan = np.full(c.shape, np.nan)
        return ErrorCurve(c, lo, hi, np.zeros(c.shape), np.full(c.shape, np.inf), nan)
    points, weights = hist.sample_points(_CURVE_PER_BIN)
    mse = range_mse(points, weights, lo, hi, fmt)
    x = points.astype(np.float32).astype(np.float64)
    signal = weighted_sum(weights, x * x) / float(weights.sum())

    amax = max(abs(vmin), abs(vmax))
    abs_hist = hist.abs_histogram(amax)
    one_sided = vmin >= 0.0 or vmax <= 0.0
    levels = entropy_levels(fmt, one_sided)
    ends = np.clip(np.rint(c / abs_hist.bin_width), 1, abs_hist.bins).astype(np.intp)
    kl = kl_divergence_curve(abs_hist.counts, levels, ends)
    return ErrorCurve(c, lo, hi, mse, sqnr_db(signal, mse), kl)
