"""Calibration methods: from statistics to a clip range ``(lo, hi)``.

Every method is a pure function of a :class:`TensorStats` (or of many histograms at once, for
per-channel and per-group weights), so switching method in the GUI never re-runs the model.
Histogram methods (percentile, entropy, MSE) see the histogram's values, i.e. finite values
with ``|x| < EXTREME_THRESHOLD``: a range stretched to a -3.4e38 mask fill is useless whatever
the method. MinMax uses the exact min/max (extremes included), which is exactly why the GUI
flags ``dominated_by_extremes``.

The returned range is the *raw* range:
:func:`qviz.core.quant.qparams.compute_qparams` then widens it to include zero and
symmetrises it for symmetric formats, as onnxruntime does. Histogram methods clamp their
range to the data's [min, max] as onnxruntime's calibrators do (so a ReLU output gets
``(0, t)`` rather than ``(-t, t)``; the scale is the same).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.tensor_stats import TensorStats

__all__ = [
    "Method",
    "MethodSpec",
    "choose_range",
    "choose_row_ranges",
    "data_extent",
    "entropy_levels",
    "kl_divergence_curve",
    "ort_entropy_kl",
    "range_mse",
    "scaled_ranges",
    "search_mse_ranges",
    "symmetric_counts",
]

# Elements (rows x candidates x points) fake-quantized per chunk: bounds temporaries to
# ~100 MB whatever the number of channels.
_MSE_CHUNK = 1 << 22
# Elements (rows x candidates x levels) of the KL search per chunk.
_KL_CHUNK = 1 << 22
# onnxruntime's entropy calibration (HistogramCollector.get_entropy_threshold): quantized
# bins (``num_quantized_bins``, default 128) and smooth_distribution's ``eps``.
_ORT_QUANTIZED_BINS = 128
_ORT_SMOOTH_EPS = 1e-4
# Bins of the symmetric histogram the entropy search runs on, at most: the row's own count
# up to this (smooth_distribution's shift, eps * zeros / nonzeros, stays below 0.41).
_ENTROPY_MAX_BINS = 4096
# Elements (rows x candidates x quantized bins) of that search per chunk: small enough
# (2 MB arrays) to stay in cache, large enough for one 2048-bin histogram in one go.
_ORT_KL_CHUNK = 1 << 18
# KL values this close to the minimum are ties (the rounding of these float64 sums is
# ~1e-14; onnxruntime's own float32 sums carry ~1e-7 relative, so where windows differ by
# less than that its choice among them is down to rounding).
_KL_TIE = 1e-12
# MSE search: a coarse grid over (0, 1] of the full range, then a fine grid around the best.
_MSE_COARSE = 64
_MSE_FINE = 64
# Sub-bin sample points per histogram bin for the MSE search.
_MSE_PER_BIN = 4


class Method(Enum):
    """How a clip range is chosen from statistics."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    MANUAL = "manual"


DEFAULT_PERCENTILE = 99.99


@dataclass(frozen=True)
class MethodSpec:
    """A method and the one parameter that applies to it, nothing else: ``percentile``
    (PERCENTILE only, in (0, 100]; 99.99 when not given) or ``manual_range`` (MANUAL only,
    ``lo < hi``; checked when the range is chosen, so a spec can exist before the user has
    set a range). A parameter given to a method it does not apply to is a TypeError, so
    equal choices are equal specs (and equal cache keys); :meth:`of` drops them instead, for
    callers that hold every parameter whatever the method (a form, command-line options)."""

    method: Method = Method.MINMAX
    percentile: float | None = None
    manual_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a Method, not {type(self.method).__name__}")
        if self.method is Method.PERCENTILE:
            p = DEFAULT_PERCENTILE if self.percentile is None else float(self.percentile)
            if not (0.0 < p <= 100.0):
                raise QvizError(f"percentile must be in (0, 100], not {self.percentile}")
            object.__setattr__(self, "percentile", p)
        elif self.percentile is not None:
            raise TypeError(f"a percentile applies to Method.PERCENTILE, not {self.method}")
        if self.method is Method.MANUAL:
            if self.manual_range is not None:
                lo, hi = (float(v) for v in self.manual_range)
                object.__setattr__(self, "manual_range", (lo, hi))
        elif self.manual_range is not None:
            raise TypeError(f"a manual range applies to Method.MANUAL, not {self.method}")

    @classmethod
    def of(
        cls,
        method: Method,
        percentile: float | None = None,
        manual_range: tuple[float, float] | None = None,
    ) -> MethodSpec:
        """The spec for ``method``, keeping only the parameter that applies to it."""
        return cls(
            method,
            percentile if method is Method.PERCENTILE else None,
            manual_range if method is Method.MANUAL else None,
        )

    @property
    def quantile(self) -> float:
        """The percentile as a fraction in (0, 1] (PERCENTILE only)."""
        if self.percentile is None:
            raise TypeError(f"{self.method} has no percentile")
        return self.percentile / 100.0


# ---------------------------------------------------------------------- entry points
def choose_range(stats: TensorStats, spec: MethodSpec, fmt: NumberFormat) -> tuple[float, float]:
    """The clip range ``(lo, hi)`` (Python floats) that ``spec`` picks for ``stats``.

    * MINMAX: the exact ``(min, max)``, as onnxruntime's ``MinMaxCalibrater``.
    * PERCENTILE, ENTROPY, MSE: see :func:`choose_row_ranges` (one histogram).
    * MANUAL: ``spec.manual_range``; QvizError unless finite with ``lo < hi``.

    A tensor with no finite values gives ``(0.0, 0.0)`` for every method but MANUAL.
    """
    if spec.method is Method.MANUAL:
        return _manual_range(spec)
    if spec.method is Method.MINMAX or stats.count == 0 or stats.histogram.total <= 0:
        return stats.min, stats.max
    vmin, vmax = data_extent(stats)
    lo, hi = choose_row_ranges(
        HistogramRows.from_histogram(stats.histogram),
        np.array([vmin]),
        np.array([vmax]),
        spec,
        fmt,
    )
    return float(lo[0]), float(hi[0])


def data_extent(stats: TensorStats) -> tuple[float, float]:
    """[min, max] of the histogram's values: the exact min/max unless extremes were seen, in
    which case the outer edges of the occupied bins stand in for the side they dominate."""
    hist = stats.histogram
    occupied = np.flatnonzero(hist.counts > 0)
    if occupied.size == 0:
        return stats.min, stats.max
    edges_lo = hist.lo + occupied[0] * hist.bin_width
    edges_hi = hist.lo + (occupied[-1] + 1) * hist.bin_width
    vmin = max(stats.min, edges_lo)
    vmax = min(stats.max, edges_hi)
    return vmin, max(vmin, vmax)


def choose_row_ranges(
    rows: HistogramRows | None,
    vmin: ArrayLike,
    vmax: ArrayLike,
    spec: MethodSpec,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ranges for ``R`` histograms at once (one tensor, or a weight's channels/blocks).

    ``vmin``/``vmax`` (R,) are each row's exact data extent; results are clamped to it.
    ``rows`` may be None for MINMAX and MANUAL, which need no histogram.

    PERCENTILE (``p = spec.percentile``) matches onnxruntime's ``HistogramCalibrater`` /
    ``HistogramCollector.compute_percentile`` (the first point where the CDF reaches the
    target, interpolated inside the bin rather than snapped to its lower edge):

    * symmetric formats (signed INT sym, FP8, NF4, and uint sym, which ORT also maps
      symmetrically): ORT's ``symmetric=True`` rule, the ``p``-th percentile ``t`` of ``|x|``
      and the range ``(-t, t)``;
    * asymmetric INT on two-sided data: ORT's ``symmetric=False`` rule, ``(100-p)/2`` percent
      cut from each tail;
    * asymmetric INT on one-sided data (min >= 0, e.g. ReLU; or max <= 0): the whole
      ``100-p`` percent is cut from the open tail and the bounded side keeps its exact
      min/max. Deviation from ORT, on purpose: cutting the bounded side just moves ``lo``
      off 0 and ``compute_qparams`` widens it straight back to 0, so ORT ends up clipping
      only ``(100-p)/2`` percent where the user asked for ``100-p``.

    ENTROPY: onnxruntime's ``EntropyCalibrater`` (``HistogramCollector.collect_value`` and
    ``get_entropy_threshold`` in ``onnxruntime/quantization/calibrate.py``, 1.32), adapted
    to qviz's histograms:

    * onnxruntime histograms the signed values over ``[-amax, amax]``; each row's histogram
      is re-binned onto that layout (:func:`symmetric_counts`) with as many bins ``B`` as it
      has (2048 for an activation, 512 for a weight row; at least 128, at most 4096);
    * the candidates are onnxruntime's windows growing around the zero bin,
      ``[-i w, (i + 1) w)`` for ``i = 64 .. B/2`` (``w = 2 amax / B``; the last one is the
      whole range), scored by :func:`ort_entropy_kl` (``num_quantized_bins = 128``, the
      outliers folded into both end bins, ``smooth_distribution``, scipy's KL);
    * the first window with the smallest KL gives ``(lo, hi)``, which is then intersected
      with the data's [min, max] exactly as onnxruntime does: a ReLU output gets
      ``(0, t)``, and data reaching further on one side keeps that side's exact extreme (a
      normalised image with half its pixels at the background value -0.81 keeps
      ``[-0.81, 2.02]``).

    This equals onnxruntime's ``EntropyCalibrater`` with ``extra_options={"num_bins":
    2048}`` (the thresholds are the same up to how the counts of qviz's bins fall onto
    onnxruntime's). With onnxruntime's own default ``num_bins=128`` there is a single
    window, the whole range, so its default entropy calibration returns min/max. As in
    onnxruntime the range does not depend on the format: every format gets it, and
    ``compute_qparams`` then symmetrises it for symmetric formats and keeps it for
    asymmetric ones (onnxruntime's ``compute_scale_zp``), FP8 and NF4 included; on
    one-sided data half the windows' bins are empty, as in onnxruntime's histogram. The
    TensorRT criterion (:func:`kl_divergence_curve`) is still what the error curve draws.

    MSE: the clip that minimises the expected squared error (rounding plus clipping) of the
    real quantizer (``fake_quantize``) over the histogram's values, represented by sub-bin
    sample points: see :func:`search_mse_ranges`.

    MINMAX gives ``(vmin, vmax)``; MANUAL broadcasts ``spec.manual_range``.
    """
    lo_d = np.asarray(vmin, dtype=np.float64).reshape(-1)
    hi_d = np.asarray(vmax, dtype=np.float64).reshape(-1)
    method = spec.method
    if method is Method.MINMAX:
        return lo_d.copy(), hi_d.copy()
    if method is Method.MANUAL:
        lo, hi = _manual_range(spec)
        return np.full(lo_d.shape, lo), np.full(lo_d.shape, hi)
    if rows is None:
        raise ValueError(f"the {method.value} method needs histograms")
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    if method is Method.PERCENTILE:
        lo, hi = _percentile_ranges(rows, lo_d, hi_d, amax, spec.quantile, fmt)
    elif method is Method.ENTROPY:
        lo, hi = _entropy_ranges(rows, lo_d, hi_d, amax, fmt)
    elif method is Method.MSE:
        points, weights = rows.sample_points(_MSE_PER_BIN)
        lo, hi = search_mse_ranges(points, weights, lo_d, hi_d, fmt)
    else:  # pragma: no cover - the Enum is exhaustive
        raise AssertionError(method)
    return _clamp(lo, hi, lo_d, hi_d)


# ---------------------------------------------------------------------- building blocks
def entropy_levels(fmt: NumberFormat, one_sided: bool) -> int:
    """Quantized bins over ``[0, t]`` for TensorRT's KL criterion
    (:func:`kl_divergence_curve`, drawn by the error curve; the ENTROPY method itself uses
    onnxruntime's 128 quantized bins): how many steps ``fmt`` spends on one side of zero.

    INT: ``(qmax - qmin + 1) // 2`` (127 for int8 sym, 128 for int8 asym / uint8 sym), or
    ``qmax - qmin`` for an asymmetric format on one-sided data, where every step covers
    ``[0, t]`` (TensorRT's ``unsigned`` case: 255 for uint8). FP8 and NF4 have no uniform
    step; ``2^(bits-1)`` (128 and 8), their number of codes per sign, stands in.
    """
    if fmt.kind is FormatKind.INT:
        span = int(fmt.qmax - fmt.qmin)
        if one_sided and not fmt.symmetric:
            return span
        return (span + 1) // 2
    return 2 ** (fmt.bits - 1)


def kl_divergence_curve(abs_counts: ArrayLike, levels: int, ends: ArrayLike) -> np.ndarray:
    """KL(P || Q) of TensorRT's entropy calibration for candidate ends ``i`` (in bins).

    The criterion the error curve draws (:func:`qviz.core.calibration.metrics.error_curve`);
    the ENTROPY method follows onnxruntime instead (:func:`ort_entropy_kl`).

    ``abs_counts`` is an ``|x|`` histogram, (n,) or (R, n); ``ends`` (K,) are bin counts in
    ``[1, n]``. For each ``i``, following pytorch-quantization's ``_compute_amax_entropy``:

    * bin 0 takes bin 1's count (the zero spike of ReLU outputs is exact in any format and
      would otherwise dominate the search);
    * P = bins ``0 .. i-1`` with every count beyond (the outliers) folded into bin ``i-1``,
      normalised by the total;
    * Q = bins ``0 .. i-1`` merged into ``levels`` quantized bins (bin ``j`` into level
      ``floor(j * levels / i)``), each level's count spread evenly over its *non-zero* bins
      (zero bins stay zero), normalised by its sum;
    * KL = sum over ``p > 0`` of ``p log(p / q)`` (natural log, no smoothing; +inf where
      P has mass Q cannot represent).

    Vectorized: prefix sums of counts, of non-zero flags and of ``h log h`` give every
    level's mass, occupancy and entropy term for all candidates at once, so the cost is
    ``K x levels`` gathers (not K numpy passes over n bins), with the logs taken once per
    distinct bin interval. Returns (K,) or (R, K).
    """
    h = np.array(abs_counts, dtype=np.float64)
    single = h.ndim == 1
    h = np.atleast_2d(h).copy()
    n = h.shape[1]
    ends_arr = np.clip(np.asarray(ends, dtype=np.intp).reshape(-1), 1, n)
    if n > 1:
        h[:, 0] = h[:, 1]
    out = np.empty((h.shape[0], ends_arr.size))
    rows_per_chunk = max(1, _KL_CHUNK // max(1, ends_arr.size * (levels + 1)))
    for start in range(0, h.shape[0], rows_per_chunk):
        out[start : start + rows_per_chunk] = _kl_rows(
            h[start : start + rows_per_chunk], levels, ends_arr
        )
    return out[0] if single else out


@dataclass(frozen=True, eq=False)
class _LevelLayout:
    """How candidates ``ends`` split their bins into levels (pure index arithmetic).

    Level L of candidate i holds bins [ceil(L i / levels), ceil((L+1) i / levels)); every
    level is an interval (start, width). There are far fewer distinct intervals (start <= n,
    width <= ceil(n / levels) + 1) than (candidate, level) pairs when ``levels`` is large,
    which is what lets :func:`_kl_rows` take one log per distinct interval.
    """

    starts: np.ndarray  # (K, levels)
    widths: np.ndarray  # (K, levels)
    max_width: int
    last_start: np.ndarray  # (K,) interval of the level holding bin i - 1
    last_end: np.ndarray


def _level_layout(levels: int, ends: np.ndarray) -> _LevelLayout:
    if ends.size > 1 and ends[-1] - ends[0] == ends.size - 1 and (np.diff(ends) == 1).all():
        return _level_layout_range(levels, int(ends[0]), int(ends[-1]) + 1)
    return _build_level_layout(levels, ends)


@functools.lru_cache(maxsize=16)
def _level_layout_range(levels: int, start: int, stop: int) -> _LevelLayout:
    """Cached for contiguous candidates: the GUI asks for the same (levels, candidates)
    on every click."""
    return _build_level_layout(levels, np.arange(start, stop))


def _build_level_layout(levels: int, ends: np.ndarray) -> _LevelLayout:
    i = np.asarray(ends, dtype=np.intp)
    lv = np.arange(levels + 1)
    bounds = (lv[None, :] * i[:, None] + levels - 1) // levels  # (K, levels + 1)
    last_level = ((i - 1) * levels) // i
    rows = np.arange(i.size)
    widths = np.diff(bounds, axis=1)
    layout = _LevelLayout(
        starts=bounds[:, :-1],
        widths=widths,
        max_width=int(widths.max()),
        last_start=bounds[rows, last_level],
        last_end=bounds[rows, last_level + 1],
    )
    for arr in (layout.starts, layout.widths, layout.last_start, layout.last_end):
        arr.setflags(write=False)
    return layout


def _interval_terms(
    cum: np.ndarray, nonzero: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """M log(M / Z) for the intervals [starts, ends) of every row: M the interval's mass,
    Z its number of non-zero bins (0 where M is 0). Shapes (R, ...) from index arrays."""
    mass = cum[:, ends] - cum[:, starts]
    occupied = nonzero[:, ends] - nonzero[:, starts]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = mass * (np.log(np.maximum(mass, 1e-300)) - np.log(np.maximum(occupied, 1)))
    return term


def _kl_rows(h: np.ndarray, levels: int, ends: np.ndarray) -> np.ndarray:
    n_rows, n = h.shape
    total = h.sum(axis=1)[:, None]  # (R, 1)
    cum = np.zeros((n_rows, n + 1))
    np.cumsum(h, axis=1, out=cum[:, 1:])
    nonzero = np.zeros((n_rows, n + 1))
    np.cumsum(h > 0, axis=1, out=nonzero[:, 1:])
    hlogh = h * np.log(np.maximum(h, 1e-300))  # 0 log 0 = 0
    cum_hlogh = np.zeros((n_rows, n + 1))
    np.cumsum(hlogh, axis=1, out=cum_hlogh[:, 1:])

    layout = _level_layout(levels, ends)
    # sum_L M_L log(M_L / Z_L) per candidate. One log per (candidate, level) is the dominant
    # cost of the search; when the distinct (start, width) intervals are fewer, take the
    # logs once per interval in a table and gather from it.
    n_pairs = layout.starts.size
    n_table = (n + 1) * (layout.max_width + 1)
    if n_table < n_pairs:
        s_grid = np.arange(n + 1)[:, None]
        e_grid = np.minimum(s_grid + np.arange(layout.max_width + 1)[None, :], n)
        table = _interval_terms(cum, nonzero, s_grid, e_grid).reshape(n_rows, -1)
        flat = layout.starts * (layout.max_width + 1) + layout.widths
        level_term = table[:, flat].sum(axis=-1)
    else:
        stops = layout.starts + layout.widths
        level_term = _interval_terms(cum, nonzero, layout.starts, stops).sum(axis=-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        inside = cum[:, ends]  # S_i: mass of bins 0 .. i-1
        tail = np.where(ends[None, :] >= n, 0.0, total - inside)
        tail = np.where(tail > 1e-12 * total, tail, 0.0)  # rounding of prefix sums
        log_total = np.log(total)
        log_inside = np.log(np.where(inside > 0, inside, 1.0))
        # Every bin j < i as if P_j = h_j / T:
        # sum_j p_j log(p_j / q_j), q_j = M_L / (Z_L S_i), collected per level.
        body = (cum_hlogh[:, ends] - inside * log_total - level_term + inside * log_inside) / total
        # Bin i-1 actually carries the outliers too: swap its term.
        last = h[:, ends - 1]
        m_last = cum[:, layout.last_end] - cum[:, layout.last_start]
        z_last = nonzero[:, layout.last_end] - nonzero[:, layout.last_start]
        log_q = (
            np.log(np.where(m_last > 0, m_last, 1.0)) - np.log(np.maximum(z_last, 1.0)) - log_inside
        )
        safe_last = np.where(last > 0, last, 1.0)
        old = np.where(last > 0, last / total * (np.log(safe_last / total) - log_q), 0.0)
        carried = last + tail
        safe_carried = np.where(carried > 0, carried, 1.0)
        new = np.where(carried > 0, carried / total * (np.log(safe_carried / total) - log_q), 0.0)
        kl = body - old + new
    kl = np.where((last <= 0) & (tail > 0), np.inf, kl)
    kl = np.where(inside <= 0, np.inf, kl)
    return np.where(total > 0, kl, np.nan)


def scaled_ranges(
    clips: ArrayLike, vmin: ArrayLike, vmax: ArrayLike, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """Ranges for clip magnitudes ``c`` (the largest ``|x|`` the range keeps).

    Symmetric formats: ``(-c, c)``. Asymmetric: the data range ``[vmin, vmax]`` scaled by
    ``c / max(|vmin|, |vmax|)``, so the clip is the upper bound of data whose larger side is
    positive and the lower bound is scaled proportionally when ``vmin < 0`` (a one-sided
    ReLU range stays ``[0, c]`` after compute_qparams widens it to zero). Broadcasts ``clips``
    (..., K) against ``vmin``/``vmax`` (..., 1).
    """
    c = np.asarray(clips, dtype=np.float64)
    if fmt.symmetric:
        return -c, c.copy()
    lo_d = np.asarray(vmin, dtype=np.float64)
    hi_d = np.asarray(vmax, dtype=np.float64)
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(amax > 0, c / np.where(amax > 0, amax, 1.0), 0.0)
    return s * lo_d, s * hi_d


def range_mse(
    points: ArrayLike, weights: ArrayLike, lo: ArrayLike, hi: ArrayLike, fmt: NumberFormat
) -> np.ndarray:
    """Weighted mean squared error of ``fake_quantize`` under ranges ``(lo, hi)``.

    ``points``/``weights`` are (R, N) (or (N,)); ``lo``/``hi`` (R, K) (or (K,)): every range
    of row ``r`` is applied to that row's points. One per-axis ``compute_qparams`` and one
    ``fake_quantize`` per chunk evaluate all candidates; errors are taken in float64 so the
    square of an error near 1e30 cannot overflow. Returns (R, K) (or (K,)).
    """
    x = np.asarray(points, dtype=np.float64)
    single = x.ndim == 1
    x = np.atleast_2d(x).astype(np.float32)  # activations are float32: quantize those values
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo_a = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi_a = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    lo_a, hi_a = np.broadcast_arrays(lo_a, hi_a)
    lo_a = np.broadcast_to(lo_a, (x.shape[0], lo_a.shape[1]))
    hi_a = np.broadcast_to(hi_a, (x.shape[0], hi_a.shape[1]))
    n_rows, n_pts = x.shape
    k = lo_a.shape[1]
    wsum = w.sum(axis=1)
    out = np.zeros((n_rows, k))
    if n_pts == 0 or k == 0:
        return out[0] if single else out
    x64 = x.astype(np.float64)
    rows_per_chunk = max(1, _MSE_CHUNK // (k * n_pts))
    cand_per_chunk = k if rows_per_chunk > 1 else max(1, _MSE_CHUNK // n_pts)
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(n_rows, r0 + rows_per_chunk)
        for k0 in range(0, k, cand_per_chunk):
            k1 = min(k, k0 + cand_per_chunk)
            qp = compute_qparams(
                lo_a[r0:r1, k0:k1].ravel(), hi_a[r0:r1, k0:k1].ravel(), fmt, axis=0
            )
            block = np.repeat(x[r0:r1], k1 - k0, axis=0)  # (rows * cands, N)
            err = fake_quantize(block, qp, fmt).astype(np.float64)
            err -= np.repeat(x64[r0:r1], k1 - k0, axis=0)
            err *= err
            sq = err.reshape(r1 - r0, k1 - k0, n_pts)
            out[r0:r1, k0:k1] = np.einsum("rkn,rn->rk", sq, w[r0:r1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(wsum[:, None] > 0, out / wsum[:, None], 0.0)
    return out[0] if single else out


def search_mse_ranges(
    points: ArrayLike,
    weights: ArrayLike,
    vmin: ArrayLike,
    vmax: ArrayLike,
    fmt: NumberFormat,
    coarse: int = _MSE_COARSE,
    fine: int = _MSE_FINE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the :func:`scaled_ranges` range minimising :func:`range_mse`.

    The clip ``c = s * max(|vmin|, |vmax|)`` is searched over ``s`` in (0, 1]: a ``coarse``
    grid (64), then ``fine`` (64) points spanning the two grid cells around the best
    (resolution 1/2048 of the full range by default). On ties the largest clip wins (less
    clipping for the same error, as TensorRT's last-argmin). Expected squared error rather
    than KL is the criterion of NVIDIA pytorch-quantization's "mse" calibrator and of
    PyTorch's ``HistogramObserver`` (``_compute_quantization_error``); here the error is that
    of the real format, so FP8 and NF4 work too.
    """
    x = np.atleast_2d(np.asarray(points, dtype=np.float64))
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo_d = np.asarray(vmin, dtype=np.float64).reshape(-1, 1)
    hi_d = np.asarray(vmax, dtype=np.float64).reshape(-1, 1)
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    grid = np.arange(1, coarse + 1) / coarse
    grid = np.broadcast_to(grid, (x.shape[0], grid.size))
    s_best = _best_fraction(x, w, grid, amax, lo_d, hi_d, fmt)
    cell = 1.0 / coarse
    around = s_best[:, None] + (np.arange(fine + 1) / fine * 2.0 - 1.0) * cell
    around = np.clip(around, cell / fine, 1.0)
    s_best = _best_fraction(x, w, around, amax, lo_d, hi_d, fmt)
    lo, hi = scaled_ranges(s_best[:, None] * amax, lo_d, hi_d, fmt)
    return lo[:, 0], hi[:, 0]


def _best_fraction(
    x: np.ndarray,
    w: np.ndarray,
    fractions: np.ndarray,
    amax: np.ndarray,
    lo_d: np.ndarray,
    hi_d: np.ndarray,
    fmt: NumberFormat,
) -> np.ndarray:
    lo, hi = scaled_ranges(fractions * amax, lo_d, hi_d, fmt)
    mse = range_mse(x, w, lo, hi, fmt)
    # Last argmin: the largest clip among equal errors.
    best = mse.shape[1] - 1 - np.argmin(mse[:, ::-1], axis=1)
    return fractions[np.arange(fractions.shape[0]), best]


# ---------------------------------------------------------------------- methods on rows
def _percentile_ranges(
    rows: HistogramRows,
    lo_d: np.ndarray,
    hi_d: np.ndarray,
    amax: np.ndarray,
    q: float,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    if fmt.symmetric:
        t = rows.abs_rows(amax).quantile(q)
        return -t, t
    cut = 1.0 - q
    upper_only = lo_d >= 0.0
    lower_only = (hi_d <= 0.0) & ~upper_only
    q_lo = np.where(lower_only, cut, np.where(upper_only, 0.0, cut / 2.0))
    q_hi = np.where(upper_only, q, np.where(lower_only, 1.0, 1.0 - cut / 2.0))
    lo = np.where(upper_only, lo_d, rows.quantile(q_lo))
    hi = np.where(lower_only, hi_d, rows.quantile(q_hi))
    return lo, hi


def _entropy_ranges(
    rows: HistogramRows,
    lo_d: np.ndarray,
    hi_d: np.ndarray,
    amax: np.ndarray,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's entropy threshold per row (``fmt`` plays no part, as in onnxruntime);
    :func:`choose_row_ranges` then clamps it to the data's [min, max]."""
    del fmt
    n = rows.counts.shape[1] + rows.counts.shape[1] % 2
    n = min(max(_ORT_QUANTIZED_BINS, n), _ENTROPY_MAX_BINS)
    positive = amax > 0.0
    lo = np.zeros(amax.shape)
    hi = np.zeros(amax.shape)
    if not positive.any():
        return lo, hi
    sel = np.flatnonzero(positive)
    sub = HistogramRows(rows.counts[sel], rows.lo[sel], rows.hi[sel])
    counts = symmetric_counts(sub, amax[sel], n)
    kl = ort_entropy_kl(counts)
    kl = np.where(np.isnan(kl), np.inf, kl)
    # The first minimum, as onnxruntime's np.argmin; KLs equal up to float64 rounding
    # (several windows with P = Q exactly, say) are equal.
    best = np.argmax(kl <= kl.min(axis=1, keepdims=True) + _KL_TIE, axis=1)
    i = _ORT_QUANTIZED_BINS // 2 + best
    width = 2.0 * amax[sel] / n
    lo[sel] = -i * width
    hi[sel] = np.where(i < n // 2, (i + 1) * width, amax[sel])
    return lo, hi


def symmetric_counts(rows: HistogramRows, amax: ArrayLike, bins: int) -> np.ndarray:
    """Each row's histogram re-binned onto ``bins`` equal bins over ``[-amax, amax]``, the
    layout of onnxruntime's ``HistogramCollector.collect_value`` (``np.histogram(x, bins,
    range=(-amax, amax))``), as integer counts (float64 array).

    Counts inside a source bin are taken to be spread uniformly (:meth:`HistogramRows.cdf`);
    the cumulative count at every new edge is rounded to an integer, so the counts stay
    whole numbers (as onnxruntime's are) with the same total, each within one count of the
    uniform-spread share, and exactly the source counts when the edges coincide. Mass
    outside ``[-amax, amax]`` (rounding only) goes to the end bins. Returns (R, bins).
    """
    a = np.asarray(amax, dtype=np.float64).reshape(-1)
    t = a[:, None] * np.linspace(-1.0, 1.0, bins + 1)[None, :]
    cum = rows.cdf(t)
    cum[:, 0] = 0.0
    cum[:, -1] = rows.total
    cum = np.maximum.accumulate(np.rint(cum), axis=1)
    return np.diff(cum, axis=1)


def ort_entropy_kl(counts: ArrayLike, num_quantized_bins: int = _ORT_QUANTIZED_BINS) -> np.ndarray:
    """The KL divergence of onnxruntime's ``HistogramCollector.get_entropy_threshold`` for
    every candidate window, computed without a loop over the windows.

    ``counts`` (n,) or (R, n), ``n`` even, at least ``num_quantized_bins`` (``Q``) and at
    most 8192, is a histogram over ``[-a, a]`` with integer counts
    (:func:`symmetric_counts`). With
    ``z = n // 2`` (the bin starting at 0), candidate ``i`` (``Q/2 <= i <= z``) is the window
    of bins ``[z - i, min(z + i + 1, n))``, i.e. ``[-i w, (i + 1) w)`` (the whole range for
    ``i = z``). Per window, as onnxruntime does it:

    * P = the window's counts with everything left of it added to its first bin and
      everything right of it to its last bin (outliers folded into both ends);
    * the window *without* those outliers is merged into ``Q`` quantized bins of
      ``m = len // Q`` bins each, the remainder ``len - Q m`` bins added to the last one;
    * Q = each quantized bin's count divided by its number of non-zero P bins, truncated to
      an integer (onnxruntime writes it into an int64 array) and written over *all* its
      ``m`` bins; the remainder bins get 0;
    * P and Q both go through ``smooth_distribution`` (zeros become ``eps = 1e-4``, the
      non-zeros give up ``eps * zeros / nonzeros`` each), are normalised, and
      KL = sum P log(P / Q) (scipy's ``entropy``). All-zero Q gives +inf.

    Every window's KL is a handful of prefix-sum gathers: masses and non-zero counts of the
    ``Q`` merged bins (``K x Q`` logs), and the smoothed ``sum p log p`` from prefix sums of
    ``h log h``, ``log h`` and ``h^-k`` (a Taylor series in the smoothing shift, exact to
    rounding because counts are whole numbers and the shift is below ``eps n``: 0.2 for
    2048 bins; onnxruntime itself fails beyond 10,000). onnxruntime
    computes the same sums in float32; these are float64. Returns (K,) or (R, K) for
    ``i = Q/2 .. z``; NaN for an empty row.
    """
    h = np.array(counts, dtype=np.float64)
    single = h.ndim == 1
    h = np.atleast_2d(h)
    n = h.shape[1]
    q_bins = int(num_quantized_bins)
    if q_bins < 2 or q_bins % 2 or n % 2 or not q_bins <= n <= 8192:
        raise ValueError(
            "need an even number of bins in [num_quantized_bins, 8192] and an even "
            f"num_quantized_bins >= 2, not {n} and {q_bins}"
        )
    n_cand = n // 2 - q_bins // 2 + 1
    out = np.empty((h.shape[0], n_cand))
    rows_per_chunk = max(1, _ORT_KL_CHUNK // (n_cand * (q_bins + 1)))
    for start in range(0, h.shape[0], rows_per_chunk):
        out[start : start + rows_per_chunk] = _ort_kl_rows(
            h[start : start + rows_per_chunk], q_bins
        )
    return out[0] if single else out


@dataclass(frozen=True, eq=False)
class _OrtWindows:
    """Index arithmetic of onnxruntime's candidate windows for (n bins, Q quantized bins)."""

    s: np.ndarray  # (K,) first bin of the window
    e: np.ndarray  # (K,) one past its last bin
    length: np.ndarray  # (K,) e - s
    m: np.ndarray  # (K,) bins per quantized bin
    r: np.ndarray  # (K,) remainder bins (Q m .. length - 1), counted into the last one
    bounds: np.ndarray  # (K, Q + 1) quantized bin edges s + k m


@functools.lru_cache(maxsize=16)
def _ort_windows(n: int, q_bins: int) -> _OrtWindows:
    z = n // 2
    i = np.arange(q_bins // 2, z + 1)
    s = z - i
    e = np.minimum(z + i + 1, n)
    length = e - s
    m = length // q_bins
    windows = _OrtWindows(
        s=s,
        e=e,
        length=length,
        m=m,
        r=length - q_bins * m,
        bounds=s[:, None] + np.arange(q_bins + 1)[None, :] * m[:, None],
    )
    for arr in (windows.s, windows.e, windows.length, windows.m, windows.r, windows.bounds):
        arr.setflags(write=False)
    return windows


def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0.0, x, 1.0))


def _ort_kl_rows(h: np.ndarray, q_bins: int) -> np.ndarray:
    eps = _ORT_SMOOTH_EPS
    log_eps = math.log(eps)
    n_rows, n = h.shape
    win = _ort_windows(n, q_bins)
    s, e, length, m, r = win.s, win.e, win.length, win.m, win.r
    total = h.sum(axis=1)[:, None]  # (R, 1)

    def prefix(values: np.ndarray) -> np.ndarray:
        cum = np.zeros((n_rows, n + 1))
        np.cumsum(values, axis=1, out=cum[:, 1:])
        return cum

    occupied = h > 0.0
    cum = prefix(h)
    nonzero = prefix(occupied.astype(np.float64))

    # The two end bins of P carry the outliers.
    h_first, h_last = h[:, s], h[:, e - 1]
    left = cum[:, s]
    right = total - cum[:, e]
    p_first = h_first + left
    p_last = h_last + right
    nz_first_fix = (p_first > 0).astype(np.float64) - (h_first > 0)
    nz_last_fix = (p_last > 0).astype(np.float64) - (h_last > 0)
    last_in_group = r == 0  # else bin len - 1 is a remainder bin

    # Quantized bins: mass (without outliers; remainder into the last) and non-zero P bins.
    cum_b = cum[:, win.bounds]  # (R, K, Q + 1)
    nz_b = nonzero[:, win.bounds]
    in_group = np.diff(cum_b, axis=-1)  # (R, K, Q) window counts per quantized bin
    rem_mass = cum[:, e] - cum_b[..., -1]  # (R, K)
    z_occ = np.diff(nz_b, axis=-1)
    z_occ[..., 0] += nz_first_fix
    z_occ[..., -1] += np.where(last_in_group, nz_last_fix, 0.0)
    z_rem = nonzero[:, e] - nz_b[..., -1] + np.where(last_in_group, 0.0, nz_last_fix)

    # Q: each quantized bin's count over its non-zero P bins, truncated as onnxruntime's
    # int64 arrays do (counts are whole numbers, so the floor is exactly that), 0 with
    # no non-zero bin; then smooth_distribution.
    level = in_group.copy()
    level[..., -1] += rem_mass
    level /= np.maximum(z_occ, 1.0)
    np.floor(level, out=level)
    level[..., -1] *= z_occ[..., -1] > 0  # only the last can hold mass (the remainder's)
    q_zero = m * np.count_nonzero(level <= 0.0, axis=-1) + r  # (R, K) zero bins of Q
    q_sum = m * level.sum(axis=-1)
    shift_q = eps * q_zero / np.maximum(length - q_zero, 1)
    log_q = level - shift_q[..., None]
    log_q[level <= 0.0] = eps
    np.log(log_q, out=log_q)

    # P: smooth_distribution's shift d; a quantized bin's P mass is its counts (plus the
    # outliers at the ends) - d per non-zero bin + eps per zero bin.
    p_nonzero = nonzero[:, e] - nonzero[:, s] + nz_first_fix + nz_last_fix
    p_zero = length - p_nonzero
    shift_p = eps * p_zero / np.maximum(p_nonzero, 1.0)
    group_p = in_group
    group_p[..., 0] += left
    group_p[..., -1] += np.where(last_in_group, right, 0.0)
    group_p -= (shift_p + eps)[..., None] * z_occ
    group_p += eps * m[:, None]
    rem_p = rem_mass + np.where(last_in_group, 0.0, right)
    rem_p += -shift_p * z_rem + eps * (r - z_rem)
    cross = np.einsum("rkq,rkq->rk", group_p, log_q) + log_eps * rem_p

    # sum p' log p' over the window: zeros give eps log eps; interior non-zero bins
    # f(h - d) = f(h) - d (log h + 1) + sum_k d^k h^(1-k) / (k (k-1)) (f = x log x); the two
    # end bins directly.
    safe = np.where(occupied, h, 1.0)
    lo_i, hi_i = s + 1, e - 1  # interior bins [s + 1, e - 1)
    xlogx = prefix(_xlogx(h))
    log1 = prefix(np.where(occupied, np.log(safe) + 1.0, 0.0))
    d = shift_p
    self_term = xlogx[:, hi_i] - xlogx[:, lo_i] - d * (log1[:, hi_i] - log1[:, lo_i])
    d_max = float(d.max()) if d.size else 0.0
    if d_max > 0.0:
        # d^k below e^-40 (d <= eps n <= 0.82: at most 202 terms, 5 for a typical 1e-4).
        n_terms = max(2, math.ceil(-40.0 / math.log(d_max)))
        inv = np.where(occupied, 1.0 / safe, 0.0)
        power = inv.copy()
        d_k = d * d
        for k in range(2, n_terms + 1):
            inv_cum = prefix(power)
            self_term += d_k / (k * (k - 1)) * (inv_cum[:, hi_i] - inv_cum[:, lo_i])
            power *= inv
            d_k = d_k * d
    for end in (p_first, p_last):
        self_term += np.where(end > 0, _xlogx(end - d), 0.0)
    self_term += p_zero * eps * log_eps

    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (self_term - cross) / total - np.log(total) + np.log(q_sum)
    kl = np.where(q_sum > 0, kl, np.inf)
    return np.where(total > 0, kl, np.nan)


def _clamp(
    lo: np.ndarray, hi: np.ndarray, lo_d: np.ndarray, hi_d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(lo, lo_d, hi_d)
    hi = np.clip(hi, lo_d, hi_d)
    return lo, np.maximum(hi, lo)


def _manual_range(spec: MethodSpec) -> tuple[float, float]:
    if spec.manual_range is None:
        raise QvizError("manual method chosen but no range was given")
    lo, hi = spec.manual_range
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QvizError(f"manual range must be finite, not [{lo}, {hi}]")
    if not lo < hi:
        raise QvizError(f"manual range needs low < high, not [{lo:g}, {hi:g}]")
    return lo, hi
