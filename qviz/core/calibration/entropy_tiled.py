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
  scored once into a few features whose prefix sums every window of that tiling reads.

Q's smoothing shift ``d_q`` varies per window, so ``log(L - d_q)`` is expanded as
``log L - sum_k (d_q / L)^k / k`` (to ``e^-40``, as P's own series; ``d_q <= eps n``), exact
to rounding. Cost per row: about ``n`` prefix sums per distinct ``m`` (``n / Q`` of them)
times the series' terms, against the direct form's ``n Q / 2`` gathered merged bins.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
# Elements (groups x summed features x rows) of a batch of tilings per row chunk (4 MB):
# rows enough that each step of its prefix sums is a long vector add.
_TILED_CHUNK = 1 << 19
# Groups of consecutive tilings scored in one go, at most (fewer numpy calls per row chunk).
_BATCH_GROUPS = 1024


def _series_terms(d_max: float, smallest_level: float) -> int:
    if d_max <= 0.0:
        return 0
    return max(1, math.ceil(_SERIES_LOG_TOL / math.log(d_max / smallest_level)))


@dataclass(frozen=True, eq=False)
class _Tiling:
    """One tiling ``(m, o)``: groups ``[o + g m, o + (g + 1) m)``, and the windows that use
    it (``windows``: positions in ``_Tilings.tiled``), each reading its interior groups
    ``g0 + 1 .. g0 + Q - 2`` (``g0``: its first group)."""

    m: int
    column: int  # of its first group among all tilings' groups
    groups: int
    windows: np.ndarray
    g0: np.ndarray


@dataclass(frozen=True, eq=False)
class _Tilings:
    tiled: np.ndarray  # (J,) the windows with m >= 2 that the tilings score
    direct: np.ndarray  # the other windows with m >= 2, left to the direct form
    tilings: tuple[_Tiling, ...]
    starts: np.ndarray  # (G,) first bin of every tiling's groups, side by side
    sizes: np.ndarray  # (G,) their m
    batches: tuple[tuple[int, int], ...]  # tilings [a, b) whose groups are scored together


@functools.lru_cache(maxsize=16)
def _tilings(win_key: tuple[int, int]) -> _Tilings:
    """The tilings worth it: each scores all its groups once, so one that a window or two
    use (the whole-range window, say) leaves them to the direct form (``direct``)."""
    win = ort_windows(*win_key)
    n, q_bins = win_key
    keys = sorted({(int(m), int(s) % int(m)) for m, s in zip(win.m, win.s, strict=True)
                   if m >= 2})
    kept: list[tuple[int, int, np.ndarray]] = []
    direct = []
    for m, o in keys:
        windows = np.flatnonzero((win.m == m) & (win.s % m == o))
        if windows.size * q_bins < 3 * ((n - o) // m):
            direct.append(windows)
        else:
            kept.append((m, o, windows))
    tiled = np.concatenate([w for _, _, w in kept]) if kept else np.zeros(0, np.intp)
    tilings, starts = [], []
    at = column = 0
    for m, o, windows in kept:
        groups = (n - o) // m
        tiling = _Tiling(m, column, groups, np.arange(at, at + windows.size),
                         (win.s[windows] - o) // m)
        at += windows.size
        column += groups
        starts.append(o + m * np.arange(groups))
        for arr in (tiling.windows, tiling.g0):
            arr.setflags(write=False)
        tilings.append(tiling)
    batches: list[tuple[int, int]] = []
    for i, t in enumerate(tilings):
        if batches and t.column + t.groups - tilings[batches[-1][0]].column <= _BATCH_GROUPS:
            batches[-1] = (batches[-1][0], i + 1)
        else:
            batches.append((i, i + 1))
    none = np.zeros(0, np.intp)
    out = _Tilings(
        tiled, np.concatenate(direct) if direct else none, tuple(tilings),
        np.concatenate(starts) if starts else none,
        np.concatenate([np.full(t.groups, t.m) for t in tilings]) if tilings else none,
        tuple(batches),
    )
    for arr in (out.tiled, out.direct, out.starts, out.sizes):
        arr.setflags(write=False)
    return out


def _cumsum_rows(x: np.ndarray) -> None:
    """Inclusive prefix sums of ``x`` (G, W) along its first axis, in place.

    In blocks of about sqrt(G) rows: prefix sums inside every block at once, then each
    block carries the last row of the one before it. About 2 sqrt(G) vector adds over all
    W columns, where a row-by-row loop takes G (numpy's cumsum along a non-last axis is
    slower still: it does not vectorise over the columns).
    """
    g = x.shape[0]
    b = max(1, math.isqrt(g))
    nb = g // b
    blocks = x[: nb * b].reshape(nb, b, -1)
    for j in range(1, b):
        blocks[:, j] += blocks[:, j - 1]
    for i in range(1, nb):
        blocks[i] += blocks[i - 1, -1]
    for row in range(nb * b, g):
        x[row] += x[row - 1]


def _tiling_features(cum: np.ndarray, nonzero: np.ndarray, starts: np.ndarray,
                     sizes: np.ndarray, n_terms: int) -> np.ndarray:
    """Per group (G, F, R) (first bins ``starts``, sizes ``sizes``) of rows whose prefix
    sums are ``cum``, ``nonzero`` (n + 1, R): non-empty (0/1), L, then for w1 = M + eps m
    (non-empty groups) and w2 = z: ``w log L`` and ``w L^-k`` for k = 1 .. n_terms."""
    eps = ORT_SMOOTH_EPS
    stops = starts + sizes
    mass = cum[stops] - cum[starts]
    z = nonzero[stops] - nonzero[starts]
    level = np.floor(mass / np.maximum(z, 1.0))
    occupied = z > 0
    w1 = np.where(occupied, mass + eps * sizes[:, None], 0.0)
    safe = np.maximum(level, 1.0)  # an empty group has w1 = w2 = 0
    log_l = np.log(safe)
    feats = np.empty((level.shape[0], 4 + 2 * n_terms, level.shape[1]))
    feats[:, 0] = occupied
    feats[:, 1] = level
    np.multiply(w1, log_l, out=feats[:, 2])
    np.multiply(z, log_l, out=feats[:, 3])
    inv = 1.0 / safe
    power = inv.copy()
    for k in range(1, n_terms + 1):
        np.multiply(w1, power, out=feats[:, 2 + 2 * k])
        np.multiply(z, power, out=feats[:, 3 + 2 * k])
        power *= inv
    return feats


def _tiling_sums(rw: RowWindows, tiles: _Tilings) -> tuple[np.ndarray, int]:
    """The features of :func:`_tiling_features` summed over each tiled window's interior:
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
    rows = bins.cum.shape[0]
    out = np.empty((n_feats, rows, j.size))
    widest = max(
        tiles.tilings[b - 1].column + tiles.tilings[b - 1].groups - tiles.tilings[a].column
        for a, b in tiles.batches
    )
    step = max(1, _TILED_CHUNK // (n_feats * widest))
    for r0 in range(0, rows, step):
        part = slice(r0, min(rows, r0 + step))
        cum = np.ascontiguousarray(bins.cum[part].T)
        nonzero = np.ascontiguousarray(bins.nonzero[part].T)
        for a, b in tiles.batches:
            c0 = tiles.tilings[a].column
            c1 = tiles.tilings[b - 1].column + tiles.tilings[b - 1].groups
            feats = _tiling_features(cum, nonzero, tiles.starts[c0:c1], tiles.sizes[c0:c1],
                                     n_terms)
            for t in tiles.tilings[a:b]:
                own = feats[t.column - c0 : t.column - c0 + t.groups]
                _cumsum_rows(own.reshape(t.groups, -1))
                sums = own[t.g0 + q_bins - 2] - own[t.g0]
                out[:, part, t.windows] = sums.transpose(1, 2, 0)
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
