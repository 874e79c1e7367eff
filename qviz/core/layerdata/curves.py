"""Error versus clip threshold for one tensor, and where each calibration method lands on it.

x is the clip value: |clip| for symmetric formats (the range is [-c, c]); for asymmetric
formats the upper bound, with the lower bound held at the current choice. y is SQNR, MSE and,
for activations, KL divergence (the quantity the entropy method minimizes). Each method's
marker carries its *own* range's error, so the numbers match the metrics panel even where a
method's range is not on the curve's family. Pure functions; the app's error-curve view draws
what they return.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from qviz.core.calibration.methods import Method, data_extent
from qviz.core.calibration.metrics import (
    TensorMetrics,
    error_curve,
    exact_metrics,
    histogram_metrics,
    sqnr_db,
    weighted_sum,
)
from qviz.core.calibration.mse import range_mse
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.tensor_stats import TensorStats, compute_stats
from qviz.core.text import fmt_num

# Clip values per curve: a linear grid for the overall shape plus a geometric one so that
# small clips (where entropy lands on heavy-tailed activations) are resolved too. ~130 clips
# on a 2048-bin histogram cost ~11 ms, and curves are cached per tensor and format.
_LINEAR_CLIPS = 96
_GEOMETRIC_CLIPS = 32
# Weights: the curve is exact (every value fake-quantized at every clip) while values x clips
# stays below this; bigger weights use a 2048-bin histogram of the exact values, like an
# activation. Marker values are exact either way.
_EXACT_CURVE_BUDGET = 1_500_000
# Method markers of weights up to this many values are exact: each is a pass over every value
# (fake-quantize, float64 error sums), 60-150 ms per million values here, four of them on the
# first selection of a weight; beyond it they come from the weight's histogram.
EXACT_MARKERS_MAX = 500_000
_CURVE_PER_BIN = 4


@dataclass(frozen=True)
class Marker:
    """Where a clip range sits on the curve and its own error (not read off the curve, so a
    method whose range is not on the curve's family still shows its true numbers)."""

    x: float
    sqnr_db: float
    mse: float


@dataclass(frozen=True)
class CurveData:
    """One tensor's error curve and markers (Qt-free)."""

    clips: np.ndarray                   # x values
    sqnr_db: np.ndarray
    mse: np.ndarray
    kl: np.ndarray | None               # activations only
    x_label: str                        # what x means for this format
    markers: dict[Method, Marker] = field(default_factory=dict)
    current: Marker | None = None       # None: no single x (per-channel / per-group weights)
    current_label: str = "current"
    current_level: Marker | None = None  # per-channel current choice: a horizontal level
    note: str = ""


# ----------------------------------------------------------------------------- curve data
def x_axis_label(fmt: NumberFormat, fixed_lo: float) -> str:
    if fmt.symmetric:
        return "clip |c|  (range [−c, c])"
    return f"upper clip bound  (lower bound held at {fmt_num(fixed_lo)})"


def clip_grid(top: float) -> np.ndarray:
    """Clip values from ~0 to ``top`` (linear for the shape, geometric for small clips)."""
    top = top if top > 0 else 1.0
    return np.unique(
        np.concatenate(
            (
                np.linspace(top / _LINEAR_CLIPS, top, _LINEAR_CLIPS),
                np.geomspace(top * 1e-3, top, _GEOMETRIC_CLIPS),
            )
        )
    )


def _curve_top(vmin: float, vmax: float, fmt: NumberFormat) -> float:
    """Clips past the data only add rounding error: stop a little beyond the extent."""
    top = max(abs(vmin), abs(vmax)) if fmt.symmetric else max(vmax, 0.0)
    return 1.05 * top if top > 0 else 1.0


def _mse_sqnr(
    points: np.ndarray, weights: np.ndarray, fixed_lo: float, clips: np.ndarray,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    """MSE and SQNR of ranges (-c, c) (symmetric) or (fixed_lo, c) (asymmetric)."""
    lo = -clips if fmt.symmetric else np.full(clips.shape, fixed_lo)
    mse = range_mse(points, weights, lo, clips, fmt)
    x = np.asarray(points, dtype=np.float32).astype(np.float64)
    signal = weighted_sum(weights, x * x) / max(float(np.sum(weights)), 1e-300)
    return mse, sqnr_db(signal, mse)


def activation_curve(stats: TensorStats, fmt: NumberFormat, fixed_lo: float) -> CurveData:
    """Error curve of an activation from its histogram (no markers yet).

    Symmetric formats use the core's :func:`error_curve` directly; asymmetric ones evaluate
    the same quantizer (``range_mse`` on the same sub-bin points) with the lower bound held
    at ``fixed_lo``, so dragging the upper bound moves exactly along this curve. KL depends
    only on the clip magnitude and always comes from the core."""
    vmin, vmax = data_extent(stats)
    clips = clip_grid(_curve_top(vmin, vmax, fmt))
    core = error_curve(stats, fmt, clips)
    if fmt.symmetric:
        mse, sq = core.mse, core.sqnr_db
    else:
        points, weights = stats.histogram.sample_points(_CURVE_PER_BIN)
        mse, sq = _mse_sqnr(points, weights, fixed_lo, clips, fmt)
    note = "from the calibration histogram"
    if stats.dominated_by_extremes:
        note += "; extreme values (|x| ≥ 1e30) are outside it and not on this curve"
    label = x_axis_label(fmt, fixed_lo)
    return CurveData(clips, sq, mse, core.kl, label, note=note + _asym(fmt))


def weight_curve(
    w: np.ndarray, fmt: NumberFormat, fixed_lo: float, stats: TensorStats | None = None
) -> CurveData:
    """Error curve of a weight under one per-tensor clip: exact for small weights, from a
    2048-bin histogram of the exact values otherwise (no markers yet). ``stats``: the
    weight's statistics when the caller holds them; a large weight's curve then reads none
    of its values."""
    size = int(np.asarray(w).size)
    if stats is None:
        stats = compute_stats(np.asarray(w, dtype=np.float32).ravel())
    clips = clip_grid(_curve_top(stats.min, stats.max, fmt))
    if size * clips.size <= _EXACT_CURVE_BUDGET:
        flat = np.asarray(w, dtype=np.float32).ravel()
        mse, sq = _mse_sqnr(flat, np.ones(flat.size), fixed_lo, clips, fmt)
        note = f"exact over all {flat.size:,} values"
    else:
        h = stats.histogram
        points, weights = h.sample_points(_CURVE_PER_BIN)
        mse, sq = _mse_sqnr(points, weights, fixed_lo, clips, fmt)
        exact_markers = size <= EXACT_MARKERS_MAX
        note = (
            f"from a {h.bins}-bin histogram of the {size:,} values; markers "
            + ("exact" if exact_markers else "from the histogram too, current choice exact")
        )
    label = x_axis_label(fmt, fixed_lo)
    return CurveData(clips, sq, mse, None, label, note=note + _asym(fmt))


def _asym(fmt: NumberFormat) -> str:
    """Why some markers may sit off an asymmetric curve (the curve holds one lower bound)."""
    if fmt.symmetric:
        return ""
    return (
        "; each marker shows its own range's error, so a method with another lower bound "
        "sits off the curve"
    )


def activation_markers(
    stats: TensorStats, fmt: NumberFormat, ranges: Mapping[Method, tuple[float, float]]
) -> dict[Method, Marker]:
    """Each method's marker with its ``histogram_metrics`` (the numbers the panel would show)."""
    return _markers(ranges, lambda a, b: histogram_metrics(stats, a, b, fmt))


def weight_markers(
    w: np.ndarray, fmt: NumberFormat, ranges: Mapping[Method, tuple[float, float]],
    stats: TensorStats | None = None,
) -> dict[Method, Marker]:
    """Each method's marker with the exact metrics of that per-tensor range; for weights
    over EXACT_MARKERS_MAX values, metrics of a 2048-bin histogram of the weight (one exact
    pass over tens of millions of values per method would stall the first view): ``stats``
    when given, else computed here."""
    if np.asarray(w).size > EXACT_MARKERS_MAX:
        hist_stats = stats if stats is not None else compute_stats(
            np.asarray(w, dtype=np.float32).ravel()
        )
        return _markers(ranges, lambda a, b: histogram_metrics(hist_stats, a, b, fmt))
    return _markers(ranges, lambda a, b: exact_metrics(w, compute_qparams(a, b, fmt), fmt))


def _markers(
    ranges: Mapping[Method, tuple[float, float]],
    metrics_of: Callable[[float, float], TensorMetrics],
) -> dict[Method, Marker]:
    out: dict[Method, Marker] = {}
    for method, (lo, hi) in ranges.items():
        if method is Method.MANUAL or not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            continue
        out[method] = marker_of(metrics_of(lo, hi))
    return out


def marker_of(m: TensorMetrics) -> Marker:
    """A per-tensor metrics' marker: x is its effective upper bound."""
    return Marker(float(np.max(m.hi)), float(m.sqnr_db), float(m.mse))
