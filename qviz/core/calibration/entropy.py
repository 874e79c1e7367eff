"""The ENTROPY method: onnxruntime's ``EntropyCalibrater``, vectorised over rows and windows.

``HistogramCollector.collect_value`` and ``get_entropy_threshold`` in
``onnxruntime/quantization/calibrate.py`` (1.32), adapted to qviz's histograms: each row is
re-binned onto onnxruntime's symmetric layout (:func:`symmetric_counts`) and every candidate
window is scored at once (:func:`ort_entropy_kl`). See
:func:`qviz.core.calibration.methods.choose_row_ranges` for how the result is used.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.stats.histogram import HistogramRows

__all__ = ["entropy_ranges", "ort_entropy_kl", "symmetric_counts"]

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


def entropy_ranges(rows: HistogramRows, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's entropy threshold per row, for rows whose values reach ``amax`` (R,)
    either side of zero: ``(-i w, (i + 1) w)`` for the best window ``i``. No format plays a
    part, as in onnxruntime; the caller clamps the range to the data's [min, max]."""
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
