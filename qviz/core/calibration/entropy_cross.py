"""The cross term ``sum P' log Q'`` of onnxruntime's entropy search: the shared pieces and
the direct form.

:func:`qviz.core.calibration.entropy.ort_entropy_kl` scores every candidate window of a
histogram; P's own term is a handful of prefix sums over the bins (:class:`BinPrefix`), but
Q's needs each window's ``Q`` merged bins (``Q = num_quantized_bins``), whose levels depend
on where the window starts. :func:`direct_cross` gathers every window's ``Q`` merged bins:
``K x Q`` logs per row for ``K`` windows (``n / 2 - Q / 2 + 1``), about ``n Q / 2``. The
tiled form (:mod:`qviz.core.calibration.entropy_tiled`) gets the same numbers from prefix
sums over the tilings of merged bins, far cheaper on many rows of a few hundred bins.

Both return, per row and window, the cross term (unnormalised) and ``sum Q``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ORT_SMOOTH_EPS", "BinPrefix", "OrtWindows", "RowWindows", "direct_cross",
           "ort_windows", "q_shift"]

#: smooth_distribution's ``eps`` (onnxruntime's entropy calibration).
ORT_SMOOTH_EPS = 1e-4
# The series of log(L - d) in (d / L)^k stops below this (as P's own series does).
_SERIES_LOG_TOL = -40.0
# Elements (tiling groups x summed features x rows) of the tiled form per row chunk (32 MB):
# rows enough that each step of the prefix sums is a long vector add; features as for 5
# terms of the series (typical: the shift of Q is ~1e-4).
_TILED_CHUNK = 1 << 22
_TILED_FEATURES = 16


@dataclass(frozen=True, eq=False)
class OrtWindows:
    """Index arithmetic of onnxruntime's candidate windows for (n bins, Q quantized bins)."""

    s: np.ndarray  # (K,) first bin of the window
    e: np.ndarray  # (K,) one past its last bin
    length: np.ndarray  # (K,) e - s
    m: np.ndarray  # (K,) bins per quantized bin
    r: np.ndarray  # (K,) remainder bins (Q m .. length - 1), counted into the last one
    bounds: np.ndarray  # (K, Q + 1) quantized bin edges s + k m
    q_bins: int


@functools.lru_cache(maxsize=16)
def ort_windows(n: int, q_bins: int) -> OrtWindows:
    z = n // 2
    i = np.arange(q_bins // 2, z + 1)
    s = z - i
    e = np.minimum(z + i + 1, n)
    length = e - s
    m = length // q_bins
    windows = OrtWindows(
        s=s,
        e=e,
        length=length,
        m=m,
        r=length - q_bins * m,
        bounds=s[:, None] + np.arange(q_bins + 1)[None, :] * m[:, None],
        q_bins=q_bins,
    )
    for arr in (windows.s, windows.e, windows.length, windows.m, windows.r, windows.bounds):
        arr.setflags(write=False)
    return windows


class BinPrefix:
    """Prefix sums over the bins of R rows of integer counts h, each (R, n + 1): of h, of
    the non-zero flags, of ``h log h`` and ``log h + 1``, and (on demand, kept) of
    ``h^-j``. P's own term and the single-bin windows' Q term read the same arrays."""

    def __init__(self, h: np.ndarray) -> None:
        self.h = h
        self.occupied = h > 0.0
        self.safe = np.where(self.occupied, h, 1.0)
        self.cum = self.prefix(h)
        self.nonzero = self.prefix(self.occupied.astype(np.float64))
        self._inv: np.ndarray | None = None
        self._powers: list[np.ndarray] = []  # h^-1, h^-2, ... (0 for empty bins)
        self._power_prefix: dict[int, np.ndarray] = {}

    def prefix(self, values: np.ndarray) -> np.ndarray:
        cum = np.zeros((values.shape[0], values.shape[1] + 1))
        np.cumsum(values, axis=1, out=cum[:, 1:])
        return cum

    @functools.cached_property
    def xlogx(self) -> np.ndarray:
        return self.prefix(self.h * np.log(self.safe))

    @functools.cached_property
    def log1(self) -> np.ndarray:
        """Of ``log h + 1`` over the non-zero bins."""
        return self.prefix(np.where(self.occupied, np.log(self.safe) + 1.0, 0.0))

    def inv_power(self, j: int) -> np.ndarray:
        """Of ``h^-j`` (``j >= 1``) over the non-zero bins, the powers taken by repeated
        multiplication."""
        if j not in self._power_prefix:
            if self._inv is None:
                self._inv = np.where(self.occupied, 1.0 / self.safe, 0.0)
                self._powers.append(self._inv.copy())
            while len(self._powers) < j:
                self._powers.append(self._powers[-1] * self._inv)
            self._power_prefix[j] = self.prefix(self._powers[j - 1])
        return self._power_prefix[j]


@dataclass(frozen=True, eq=False)
class RowWindows:
    """What both forms need of R rows of ``n`` bins and their K windows (float64)."""

    win: OrtWindows
    bins: BinPrefix
    left: np.ndarray  # (R, K) counts left of the window (folded into its first bin)
    right: np.ndarray  # (R, K) counts right of it (folded into its last bin)
    nz_first_fix: np.ndarray  # (R, K) change of the first bin's non-zero flag by `left`
    nz_last_fix: np.ndarray  # (R, K) same for the last bin and `right`
    shift_p: np.ndarray  # (R, K) smooth_distribution's shift of P's non-zero bins

    def windows(self, k: np.ndarray) -> RowWindows:
        """The same rows with only windows ``k``."""
        w = self.win
        sub = OrtWindows(w.s[k], w.e[k], w.length[k], w.m[k], w.r[k], w.bounds[k], w.q_bins)
        return RowWindows(sub, self.bins, self.left[:, k], self.right[:, k],
                          self.nz_first_fix[:, k], self.nz_last_fix[:, k], self.shift_p[:, k])


def q_shift(q_zero: np.ndarray, length: np.ndarray) -> np.ndarray:
    return ORT_SMOOTH_EPS * q_zero / np.maximum(length - q_zero, 1)


def direct_cross(rw: RowWindows) -> tuple[np.ndarray, np.ndarray]:
    """``(sum P' log Q', sum Q)`` per (row, window), every window's Q bins gathered."""
    eps = ORT_SMOOTH_EPS
    win, cum, nonzero = rw.win, rw.bins.cum, rw.bins.nonzero
    e, m, r = win.e, win.m, win.r
    last_in_group = r == 0  # else bin len - 1 is a remainder bin

    # Quantized bins: mass (without outliers; remainder into the last) and non-zero P bins.
    cum_b = cum[:, win.bounds]  # (R, K, Q + 1)
    nz_b = nonzero[:, win.bounds]
    in_group = np.diff(cum_b, axis=-1)  # (R, K, Q) window counts per quantized bin
    rem_mass = cum[:, e] - cum_b[..., -1]  # (R, K)
    z_occ = np.diff(nz_b, axis=-1)
    z_occ[..., 0] += rw.nz_first_fix
    z_occ[..., -1] += np.where(last_in_group, rw.nz_last_fix, 0.0)
    z_rem = nonzero[:, e] - nz_b[..., -1] + np.where(last_in_group, 0.0, rw.nz_last_fix)

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
    shift_q = q_shift(q_zero, win.length)
    log_q = level - shift_q[..., None]
    log_q[level <= 0.0] = eps
    np.log(log_q, out=log_q)

    # P: a quantized bin's P mass is its counts (plus the outliers at the ends) - d per
    # non-zero bin + eps per zero bin.
    shift_p = rw.shift_p
    group_p = in_group
    group_p[..., 0] += rw.left
    group_p[..., -1] += np.where(last_in_group, rw.right, 0.0)
    group_p -= (shift_p + eps)[..., None] * z_occ
    group_p += eps * m[:, None]
    rem_p = rem_mass + np.where(last_in_group, 0.0, rw.right)
    rem_p += -shift_p * z_rem + eps * (r - z_rem)
    cross = np.einsum("rkq,rkq->rk", group_p, log_q) + math.log(eps) * rem_p
    return cross, q_sum


