"""The tiled form of the entropy search's cross term ``sum P' log Q'`` (see
:mod:`qviz.core.calibration.entropy_cross` for the direct one and what both compute).

A window of ``m`` bins per merged bin starting at bin ``s`` merges the groups of one fixed
*tiling* of the histogram into ``m``-bin groups (the one starting at ``s mod m``); only its
first and last merged bins differ from that tiling's groups (outliers, remainder bins). So
the interior of every window is a difference of two prefix sums over its tiling:

* ``m = 1`` (every window shorter than ``2 Q``: all but the last of a 256-bin histogram's,
  a third of a 512-bin one's): the groups are the bins, a non-empty one holds P' = h - d_p
  over Q' = h - d_q, and ``sum (h - d_p) log(h - d_q)`` comes from the prefix sums over
  the bins that P's own term reads (``h log h``, ``log h``, ``h^-k``): ``K`` gathers each;
* ``m >= 2``: each tiling's groups (mass M, non-zero bins z, level L = floor(M / z)) are
  scored once into a few features whose prefix sums every window of that tiling reads
  (a compiled loop, :func:`_tiling_kernel`: the prefix sums run along the groups, which
  NumPy does slowly, and need no (groups x features x rows) array).

Q's smoothing shift ``d_q`` varies per window, so ``log(L - d_q)`` is expanded as
``log L - sum_k (d_q / L)^k / k`` (to ``e^-40``, as P's own series; ``d_q <= eps n``), exact
to rounding. Cost per row: about ``n`` prefix sums per distinct ``m`` (``n / Q`` of them)
times the series' terms, against the direct form's ``n Q / 2`` gathered merged bins.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from qviz.core.calibration.entropy_cross import (
    ORT_SMOOTH_EPS,
    RowWindows,
    direct_cross,
    ort_windows,
    q_shift,
)

__all__ = ["tiled_cross"]

# The series of log(L - d) in (d / L)^k stops below this (as P's own series does).
_SERIES_LOG_TOL = -40.0


def _series_terms(d_max: float, smallest_level: float) -> int:
    if d_max <= 0.0:
        return 0
    return max(1, math.ceil(_SERIES_LOG_TOL / math.log(d_max / smallest_level)))


@dataclass(frozen=True, eq=False)
class _Tiling:
    """One tiling ``(m, o)``: groups ``[o + g m, o + (g + 1) m)`` (first bins ``starts``),
    and the windows that use it (``windows``: positions in ``_Tilings.tiled``), each
    reading its interior groups ``g0 + 1 .. g0 + Q - 2`` (``g0``: its first group)."""

    m: int
    starts: np.ndarray
    windows: np.ndarray
    g0: np.ndarray


@dataclass(frozen=True, eq=False)
class _Tilings:
    tiled: np.ndarray  # (J,) the windows with m >= 2 that the tilings score
    direct: np.ndarray  # the other windows with m >= 2, left to the direct form
    tilings: tuple[_Tiling, ...]


@functools.lru_cache(maxsize=16)
def _tilings(win_key: tuple[int, int]) -> _Tilings:
    """The tilings worth it: each scores all its groups once, so one that a window or two
    use (the whole-range window, say) leaves them to the direct form (``direct``)."""
    win = ort_windows(*win_key)
    n, q_bins = win_key
    keys = sorted({(int(m), int(s) % int(m)) for m, s in zip(win.m, win.s, strict=True)
                   if m >= 2})
    tilings, tiled, direct = [], [], []
    at = 0
    for m, o in keys:
        windows = np.flatnonzero((win.m == m) & (win.s % m == o))
        groups = (n - o) // m
        if windows.size * q_bins < 3 * groups:
            direct.append(windows)
            continue
        tiling = _Tiling(m, o + m * np.arange(groups), np.arange(at, at + windows.size),
                         (win.s[windows] - o) // m)
        for arr in (tiling.starts, tiling.windows, tiling.g0):
            arr.setflags(write=False)
        tilings.append(tiling)
        tiled.append(windows)
        at += windows.size
    none = np.zeros(0, np.intp)
    out = _Tilings(np.concatenate(tiled) if tiled else none,
                   np.concatenate(direct) if direct else none, tuple(tilings))
    for arr in (out.tiled, out.direct):
        arr.setflags(write=False)
    return out


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _tiling_kernel(
    mass: np.ndarray, z: np.ndarray, level: np.ndarray, log_l: np.ndarray, inv: np.ndarray,
    m: int, g0: np.ndarray, windows: np.ndarray, q_bins: int, n_terms: int, eps: float,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """For every row of one tiling's groups (R, G: mass M, non-zero bins z, level L, log L
    and 1 / L, both at least at L = 1), the features non-empty, L, then for w1 = M + eps m
    and w2 = z: ``w log L`` and ``w L^-k`` (k = 1 .. n_terms), summed over each of its
    windows' interior groups into ``out[:, r, windows]``: one running prefix sum per row
    instead of a (G, F, R) array of features and their prefix sums."""
    groups = mass.shape[1]
    n_feats = 4 + 2 * n_terms
    prefix = np.zeros((groups + 1, n_feats))
    for r in range(mass.shape[0]):
        for g in range(groups):
            zg = z[r, g]
            if zg > 0.0:
                w1 = mass[r, g] + eps * m
                prefix[g + 1, 0] = prefix[g, 0] + 1.0
                prefix[g + 1, 1] = prefix[g, 1] + level[r, g]
                prefix[g + 1, 2] = prefix[g, 2] + w1 * log_l[r, g]
                prefix[g + 1, 3] = prefix[g, 3] + zg * log_l[r, g]
                power = inv[r, g]
                for k in range(1, n_terms + 1):
                    prefix[g + 1, 2 + 2 * k] = prefix[g, 2 + 2 * k] + w1 * power
                    prefix[g + 1, 3 + 2 * k] = prefix[g, 3 + 2 * k] + zg * power
                    power *= inv[r, g]
            else:
                for f in range(n_feats):
                    prefix[g + 1, f] = prefix[g, f]
        for j in range(g0.size):
            lo = g0[j] + 1
            hi = g0[j] + q_bins - 1
            for f in range(n_feats):
                out[f, r, windows[j]] = prefix[hi, f] - prefix[lo, f]


def _tiling_sums(rw: RowWindows, tiles: _Tilings) -> tuple[np.ndarray, int]:
    """The features of :func:`_tiling_kernel` summed over each tiled window's interior:
    (F, R, J), and the series' terms they hold.

    The terms follow from a bound on every such window's ``d_q``, known before anything is
    summed: an empty merged bin is ``m`` zero bins of the histogram, so Q has at most the
    window's zero bins + ``2 m`` (its two end bins) + ``r`` zeros."""
    win, bins = rw.win, rw.bins
    j = tiles.tiled
    q_bins = win.q_bins
    grouped, s, m = win.bounds[j, -1], win.s[j], win.m[j]
    zeros = (grouped - s) - (bins.nonzero[:, grouped] - bins.nonzero[:, s])
    q_zero = np.minimum(zeros + 2 * m, q_bins * m) + win.r[j]
    d_max = float(q_shift(q_zero, win.length[j]).max())
    n_terms = _series_terms(d_max, 1.0)
    n_feats = 4 + 2 * n_terms
    out = np.empty((n_feats, bins.cum.shape[0], j.size))
    for t in tiles.tilings:
        stops = t.starts + t.m
        mass = bins.cum[:, stops] - bins.cum[:, t.starts]
        z = bins.nonzero[:, stops] - bins.nonzero[:, t.starts]
        level = np.floor(mass / np.maximum(z, 1.0))
        safe = np.maximum(level, 1.0)  # an empty group adds nothing
        # The logs and reciprocals vectorised here; the kernel sums without temporaries.
        _tiling_kernel(mass, z, level, np.log(safe), 1.0 / safe, t.m, t.g0, t.windows, q_bins,
                       n_terms, ORT_SMOOTH_EPS, out)
    return out, n_terms


def _end_group(
    mass: np.ndarray, p_mass: np.ndarray, z: np.ndarray, m: np.ndarray, shift_p: np.ndarray,
    shift_q: np.ndarray,
) -> np.ndarray:
    """Cross term of a window's first or last merged bin: ``mass`` its Q count, ``p_mass``
    its P count, ``z`` its non-zero P bins out of ``m``."""
    eps = ORT_SMOOTH_EPS
    level = np.floor(mass / np.maximum(z, 1.0)) * (z > 0)
    p = p_mass - (shift_p + eps) * z + eps * m
    log_q = np.log(np.where(level > 0.0, level - shift_q, eps))
    return p * log_q


def tiled_cross(rw: RowWindows) -> tuple[np.ndarray, np.ndarray]:
    """``(sum P' log Q', sum Q)`` per (row, window), equal to
    :func:`~qviz.core.calibration.entropy_cross.direct_cross` up to float64 rounding."""
    eps = ORT_SMOOTH_EPS
    log_eps = math.log(eps)
    win, bins = rw.win, rw.bins
    cum, nonzero = bins.cum, bins.nonzero
    q_bins = win.q_bins
    s, e, m, r = win.s, win.e, win.m, win.r
    last_in_group = r == 0
    shift_p = rw.shift_p
    tiles = _tilings((cum.shape[1] - 1, q_bins))
    single = np.flatnonzero(m == 1)
    lo_1, hi_1 = s[single] + 1, s[single] + q_bins - 1  # interior bins of those windows

    # Interior merged bins: how many are non-empty, and their levels' sum.
    # (Zeros for the windows the direct form scores: their values here are replaced.)
    n_occupied = np.zeros(rw.shift_p.shape)
    level_sum = np.zeros(rw.shift_p.shape)
    n_occupied[:, single] = nonzero[:, hi_1] - nonzero[:, lo_1]
    level_sum[:, single] = cum[:, hi_1] - cum[:, lo_1]
    if tiles.tilings:
        sums, n_terms = _tiling_sums(rw, tiles)
        n_occupied[:, tiles.tiled] = sums[0]
        level_sum[:, tiles.tiled] = sums[1]

    # The first and last merged bins (outliers, remainder): directly.
    first_b, last_b, end_b = win.bounds[:, 1], win.bounds[:, -2], win.bounds[:, -1]
    first_mass = cum[:, first_b] - cum[:, s]
    first_z = nonzero[:, first_b] - nonzero[:, s] + rw.nz_first_fix
    last_mass = cum[:, e] - cum[:, last_b]  # the remainder is counted into it
    last_z = nonzero[:, end_b] - nonzero[:, last_b] + np.where(last_in_group, rw.nz_last_fix, 0)
    first_level = np.floor(first_mass / np.maximum(first_z, 1.0)) * (first_z > 0)
    last_level = np.floor(last_mass / np.maximum(last_z, 1.0)) * (last_z > 0)

    empty = (q_bins - 2) - n_occupied
    q_zero = m * (empty + (first_level <= 0) + (last_level <= 0)) + r
    q_sum = m * (level_sum + first_level + last_level)
    shift_q = np.where(q_sum > 0, q_shift(q_zero, win.length), 0.0)

    interior = np.zeros(rw.shift_p.shape)
    if single.size:
        interior[:, single] = _single_bin_interior(
            rw, lo_1, hi_1, shift_p[:, single], shift_q[:, single]
        )
    if tiles.tilings:
        interior[:, tiles.tiled] = _tiling_interior(
            sums, n_terms, shift_p[:, tiles.tiled], shift_q[:, tiles.tiled]
        )
    interior += empty * (eps * m * log_eps)

    first = _end_group(first_mass, first_mass + rw.left, first_z, m, shift_p, shift_q)
    last_group_mass = cum[:, end_b] - cum[:, last_b]
    last_p = last_group_mass + np.where(last_in_group, rw.right, 0.0)
    last = _end_group(last_mass, last_p, last_z, m, shift_p, shift_q)
    rem_mass = cum[:, e] - cum[:, end_b]
    z_rem = nonzero[:, e] - nonzero[:, end_b] + np.where(last_in_group, 0.0, rw.nz_last_fix)
    rem_p = rem_mass + np.where(last_in_group, 0.0, rw.right)
    rem_p += -shift_p * z_rem + eps * (r - z_rem)
    cross = interior + first + last + log_eps * rem_p
    if tiles.direct.size:
        cross[:, tiles.direct], q_sum[:, tiles.direct] = direct_cross(rw.windows(tiles.direct))
    return cross, q_sum


def _single_bin_interior(
    rw: RowWindows, lo: np.ndarray, hi: np.ndarray, shift_p: np.ndarray, shift_q: np.ndarray
) -> np.ndarray:
    """``sum (h - d_p) log(h - d_q)`` over the non-zero bins ``[lo, hi)`` of each window:
    ``sum h log h - d_p sum log h - sum_k d_q^k / k (sum h^(1-k) - d_p sum h^-k)``."""
    bins = rw.bins

    def over(prefix: np.ndarray) -> np.ndarray:
        return prefix[:, hi] - prefix[:, lo]

    count = over(bins.nonzero)
    out = over(bins.xlogx) - shift_p * (over(bins.log1) - count)
    n_terms = _series_terms(float(shift_q.max()) if shift_q.size else 0.0, 1.0)
    d_k = shift_q
    below = count  # sum h^(1-k), k = 1
    for k in range(1, n_terms + 1):
        at_k = over(bins.inv_power(k))
        out -= d_k / k * (below - shift_p * at_k)
        below = at_k
        d_k = d_k * shift_q
    return out


def _tiling_interior(
    sums: np.ndarray, n_terms: int, shift_p: np.ndarray, shift_q: np.ndarray
) -> np.ndarray:
    """``sum (w1 - (d_p + eps) w2) log(L - d_q)`` over the non-empty interior groups, from
    :func:`_tiling_sums`, with ``log(L - d_q) = log L - sum_k (d_q / L)^k / k``."""
    a = sums[2].copy()
    b = sums[3].copy()
    d_k = shift_q
    for k in range(1, n_terms + 1):
        a -= d_k / k * sums[2 + 2 * k]
        b -= d_k / k * sums[3 + 2 * k]
        d_k = d_k * shift_q
    return a - (shift_p + ORT_SMOOTH_EPS) * b
