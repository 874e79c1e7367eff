"""The ENTROPY method: onnxruntime's ``EntropyCalibrater``, vectorised over rows and windows.

``HistogramCollector.collect_value`` and ``get_entropy_threshold`` in
``onnxruntime/quantization/calibrate.py`` (1.32), adapted to qviz's histograms: each row is
re-binned onto onnxruntime's symmetric layout (:func:`symmetric_counts`) and every candidate
window is scored at once (:func:`ort_entropy_kl`; Q's side in the direct or the tiled form,
:mod:`~qviz.core.calibration.entropy_cross`, :mod:`~qviz.core.calibration.entropy_tiled`).
See :func:`qviz.core.calibration.methods.choose_row_ranges` for how the result is used.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.calibration.entropy_cross import (
    ORT_SMOOTH_EPS,
    BinPrefix,
    RowWindows,
    direct_cross,
    ort_windows,
)
from qviz.core.calibration.entropy_tiled import tiled_cross
from qviz.core.stats.histogram import HistogramRows

__all__ = [
    "ENTROPY_QUANTIZED_BINS",
    "KlForm",
    "entropy_bins",
    "entropy_ranges",
    "kl_form",
    "ort_entropy_kl",
    "symmetric_counts",
]

# onnxruntime's entropy calibration (HistogramCollector.get_entropy_threshold): quantized
# bins (``num_quantized_bins``, default 128).
ENTROPY_QUANTIZED_BINS = 128
# Bins of the symmetric histogram the entropy search runs on, at most: the row's own count
# up to this (smooth_distribution's shift, eps * zeros / nonzeros, stays below 0.41).
_ENTROPY_MAX_BINS = 4096
# Elements (rows x candidates x quantized bins) of that search per chunk: small enough
# (2 MB arrays) to stay in cache, large enough for one 2048-bin histogram in one go.
_ORT_KL_CHUNK = 1 << 18
# Where the tiled form is used (AUTO): its work grows as n^2 / Q per row against the direct
# form's n Q / 2, with a fixed cost per tiling (about n / Q of them): it wins from 2 rows up
# to 2048 bins, ties on one row and loses at 4096 bins (bench/bench_entropy.py --sizes).
_TILED_MAX_BINS = 2048
# Its rows per chunk: ORT_KL_CHUNK / (windows x this).
_TILED_ROW_COST = 32
# KL values this close to the minimum are ties (the rounding of these float64 sums is
# ~1e-14; onnxruntime's own float32 sums carry ~1e-7 relative, so where windows differ by
# less than that its choice among them is down to rounding).
_KL_TIE = 1e-12


class KlForm(Enum):
    """How :func:`ort_entropy_kl` computes Q's side of every window (same numbers up to
    float64 rounding; see :mod:`qviz.core.calibration.entropy_cross`)."""

    AUTO = "auto"  # TILED where it is the cheaper (see _TILED_MAX_BINS), else DIRECT
    DIRECT = "direct"  # each window's Q merged bins: about n Q / 2 per row
    TILED = "tiled"  # prefix sums over the tilings of merged bins: about n^2 / Q per row


def entropy_ranges(
    rows: HistogramRows, amax: np.ndarray, *, form: KlForm | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's entropy threshold per row, for rows whose values reach ``amax`` (R,)
    either side of zero: ``(-i w, (i + 1) w)`` for the best window ``i``. No format plays a
    part, as in onnxruntime; the caller clamps the range to the data's [min, max].
    ``form``: how the windows are scored (:class:`KlForm`; default AUTO)."""
    n = entropy_bins(rows.counts.shape[1])
    positive = amax > 0.0
    lo = np.zeros(amax.shape)
    hi = np.zeros(amax.shape)
    if not positive.any():
        return lo, hi
    sel = np.flatnonzero(positive)
    sub = rows if sel.size == amax.size else HistogramRows(
        rows.counts[sel], rows.lo[sel], rows.hi[sel]
    )
    counts = symmetric_counts(sub, amax[sel], n)
    kl = ort_entropy_kl(counts, form=KlForm.AUTO if form is None else form)
    kl = np.where(np.isnan(kl), np.inf, kl)
    # The first minimum, as onnxruntime's np.argmin; KLs equal up to float64 rounding
    # (several windows with P = Q exactly, say) are equal.
    best = np.argmax(kl <= kl.min(axis=1, keepdims=True) + _KL_TIE, axis=1)
    i = ENTROPY_QUANTIZED_BINS // 2 + best
    width = 2.0 * amax[sel] / n
    lo[sel] = -i * width
    hi[sel] = np.where(i < n // 2, (i + 1) * width, amax[sel])
    return lo, hi


def entropy_bins(row_bins: int) -> int:
    """Bins of the symmetric histogram the search runs on for rows of ``row_bins`` bins."""
    return min(max(ENTROPY_QUANTIZED_BINS, row_bins + row_bins % 2), _ENTROPY_MAX_BINS)


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
    np.rint(cum, out=cum)
    steps = np.diff(cum, axis=1)
    if (steps < 0.0).any():  # a CDF does not fall (monotone rounding): a guard, no more
        steps = np.diff(np.maximum.accumulate(cum, axis=1), axis=1)
    return steps


def kl_form(rows: int, bins: int) -> KlForm:
    """The cheaper form for ``rows`` histograms of ``bins`` bins (what AUTO picks)."""
    if bins <= _TILED_MAX_BINS and rows >= 2:
        return KlForm.TILED
    return KlForm.DIRECT


def ort_entropy_kl(
    counts: ArrayLike, num_quantized_bins: int = ENTROPY_QUANTIZED_BINS, *,
    form: KlForm = KlForm.AUTO,
) -> np.ndarray:
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

    Every window's KL is a handful of prefix-sum gathers: the smoothed ``sum p log p`` from
    prefix sums of ``h log h``, ``log h`` and ``h^-k`` (a Taylor series in the smoothing
    shift, exact to rounding because counts are whole numbers and the shift is below
    ``eps n``: 0.2 for 2048 bins; onnxruntime itself fails beyond 10,000), and Q's side as
    ``form`` says (:mod:`qviz.core.calibration.entropy_cross`). onnxruntime computes the
    same sums in float32; these are float64. Returns (K,) or (R, K) for ``i = Q/2 .. z``;
    NaN for an empty row.
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
    if form is KlForm.AUTO:
        form = kl_form(h.shape[0], n)
    tiled = form is KlForm.TILED
    n_cand = n // 2 - q_bins // 2 + 1
    out = np.empty((h.shape[0], n_cand))
    per_row = n_cand * (_TILED_ROW_COST if tiled else q_bins + 1)
    rows_per_chunk = max(1, _ORT_KL_CHUNK // per_row)
    for start in range(0, h.shape[0], rows_per_chunk):
        out[start : start + rows_per_chunk] = _ort_kl_rows(
            h[start : start + rows_per_chunk], q_bins, tiled
        )
    return out[0] if single else out


def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0.0, x, 1.0))


def _ort_kl_rows(h: np.ndarray, q_bins: int, tiled: bool) -> np.ndarray:
    eps = ORT_SMOOTH_EPS
    log_eps = math.log(eps)
    win = ort_windows(h.shape[1], q_bins)
    s, e, length = win.s, win.e, win.length
    total = h.sum(axis=1)[:, None]  # (R, 1)
    bins = BinPrefix(h)
    cum, nonzero = bins.cum, bins.nonzero

    # The two end bins of P carry the outliers.
    h_first, h_last = h[:, s], h[:, e - 1]
    left = cum[:, s]
    right = total - cum[:, e]
    p_first = h_first + left
    p_last = h_last + right
    nz_first_fix = (p_first > 0).astype(np.float64) - (h_first > 0)
    nz_last_fix = (p_last > 0).astype(np.float64) - (h_last > 0)

    # P: smooth_distribution's shift d of every non-zero bin.
    p_nonzero = nonzero[:, e] - nonzero[:, s] + nz_first_fix + nz_last_fix
    p_zero = length - p_nonzero
    shift_p = eps * p_zero / np.maximum(p_nonzero, 1.0)
    windows = RowWindows(win, bins, left, right, nz_first_fix, nz_last_fix, shift_p)
    cross, q_sum = tiled_cross(windows) if tiled else direct_cross(windows)

    # sum p' log p' over the window: zeros give eps log eps; interior non-zero bins
    # f(h - d) = f(h) - d (log h + 1) + sum_k d^k h^(1-k) / (k (k-1)) (f = x log x); the two
    # end bins directly.
    lo_i, hi_i = s + 1, e - 1  # interior bins [s + 1, e - 1)
    xlogx, log1 = bins.xlogx, bins.log1
    d = shift_p
    self_term = xlogx[:, hi_i] - xlogx[:, lo_i] - d * (log1[:, hi_i] - log1[:, lo_i])
    d_max = float(d.max()) if d.size else 0.0
    if d_max > 0.0:
        # d^k below e^-40 (d <= eps n <= 0.82: at most 202 terms, 5 for a typical 1e-4).
        n_terms = max(2, math.ceil(-40.0 / math.log(d_max)))
        d_k = d * d
        for k in range(2, n_terms + 1):
            inv_cum = bins.inv_power(k - 1)
            self_term += d_k / (k * (k - 1)) * (inv_cum[:, hi_i] - inv_cum[:, lo_i])
            d_k = d_k * d
    for end in (p_first, p_last):
        self_term += np.where(end > 0, _xlogx(end - d), 0.0)
    self_term += p_zero * eps * log_eps

    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (self_term - cross) / total - np.log(total) + np.log(q_sum)
    kl = np.where(q_sum > 0, kl, np.inf)
    return np.where(total > 0, kl, np.nan)
