"""Quantization error of histogram bins, integrated exactly against the format's grid.

For scale ``s`` and zero point ``z`` a value ``x`` sits at ``u = x / s + z`` in code units,
and the quantizer returns the nearest level ``L(u)`` of the format (INT: the integers of the
storage range; FP8, FP4 and NF4: their representable values at scale 1), saturating at the
outermost ones. The error is ``s * eps(u)`` with ``eps(u) = L(u) - u``. Taking a histogram's
values to be spread uniformly inside each bin (the one assumption every histogram number in
qviz makes), the error of a bin is an integral of ``eps`` over an interval, and ``eps`` is
piecewise linear: its integrals (of ``eps^2``, ``eps`` and ``u * eps``) are piecewise
polynomials with closed forms, accumulated once per format in a :class:`LevelGrid`. A bin's
squared error then costs two lookups, whatever its width against the step: exact rounding
and clipping error under the uniform-in-bin model, with no sample points.

`row_metrics` applies this to many histograms at once (a weight's channels), each with its
own scale and zero point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.quantize import quantization_levels
from qviz.core.stats.histogram import HistogramRows

__all__ = ["LevelGrid", "RowErrors", "level_grid", "row_errors", "row_sse"]


@dataclass(frozen=True, eq=False)
class LevelGrid:
    """A format's levels in code units and the running integrals of its error.

    ``levels`` (K,) sorted; ``mids`` (K-1,) the rounding boundaries between them; ``c2``,
    ``c1``, ``cu`` (K,) the constants that make ``A_k(u) + c_k`` continuous across segments,
    where segment ``k`` is the interval rounded to ``levels[k]`` and ``A_k`` the antiderivative
    of ``eps^2``, ``eps`` or ``u * eps`` there. ``integer`` grids (INT formats) find segments by
    arithmetic instead of a search."""

    levels: np.ndarray
    mids: np.ndarray
    c2: np.ndarray
    c1: np.ndarray
    cu: np.ndarray
    half_gaps: np.ndarray
    integer: bool

    @property
    def clip_low(self) -> float:
        """Code below which values are clipped (outermost level minus half its gap)."""
        return float(self.levels[0] - (self.levels[1] - self.levels[0]) / 2)

    @property
    def clip_high(self) -> float:
        return float(self.levels[-1] + (self.levels[-1] - self.levels[-2]) / 2)

    def segment(self, u: np.ndarray) -> np.ndarray:
        """Index of the level each code ``u`` rounds to."""
        if self.integer:
            k = np.floor(u + 0.5) - self.levels[0]
            return np.clip(k, 0, self.levels.size - 1).astype(np.intp)
        return np.searchsorted(self.mids, u)

    def integrals(
        self, u: np.ndarray, z: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Running integrals at ``u`` (any shape) of ``eps^2`` and, given the zero point
        ``z`` (broadcasting against ``u``), of ``(u - z) * eps`` (None without ``z``), and
        the segment index of each ``u``.

        INT grids use closed forms: with unit gaps every whole segment adds 1/12 to the
        integral of ``eps^2``, nothing to that of ``eps`` and 1/24 to that of ``u * eps``,
        so no table lookup is needed."""
        if self.integer:
            k = np.floor(u + 0.5)
            first = self.levels[0]
            np.clip(k, first, self.levels[-1], out=k)
            d = u - k  # k is now the level itself
            d2 = d * d
            d3 = d2 * d
            d3 /= 3.0
            if z is not None:
                # -d^3/3 - (level - z) d^2/2 + index/24, with index = level - first
                h = (z - k) * d2
                h /= 2.0
                h -= d3
                h += (k - first) / 24.0
            k -= first  # now the index
            g2 = d3
            g2 += k / 12.0
            return g2, (h if z is not None else None), k
        idx = np.searchsorted(self.mids, u)
        level = self.levels[idx]
        d = u - level
        d2 = d * d
        g2 = d2 * d / 3.0 + self.c2[idx]
        if z is None:
            return g2, None, idx
        g1 = -d2 / 2.0 + self.c1[idx]
        gu = -d2 * d / 3.0 - level * d2 / 2.0 + self.cu[idx]
        return g2, gu - z * g1, idx

    def eps(self, u: np.ndarray) -> np.ndarray:
        return self.levels[self.segment(u)] - u

    def straddled_half_gap(self, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        """The largest half gap between levels whose rounding boundary lies between codes in
        segments ``ka`` and ``kb`` (0 where they are the same). Gaps grow away from zero in
        every format qviz has, so the widest boundary in an interval is at one of its ends."""
        last = self.half_gaps.size - 1
        widest = np.maximum(
            self.half_gaps[np.minimum(ka + 1, last)], self.half_gaps[np.minimum(kb, last)]
        )
        return np.where(kb > ka, widest, 0.0)


def _antiderivatives(level: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    d = u - level
    return d**3 / 3.0, -(d**2) / 2.0, -(d**3) / 3.0 - level * d**2 / 2.0


@functools.lru_cache(maxsize=32)
def level_grid(fmt: NumberFormat) -> LevelGrid:
    """The :class:`LevelGrid` of ``fmt`` (cached: a format's grid never changes)."""
    integer = fmt.kind is FormatKind.INT
    if integer:
        lo, hi = fmt.saturation_range
        levels = np.arange(lo, hi + 1, dtype=np.float64)
    else:
        levels = quantization_levels(1.0, np.zeros((), dtype=fmt.storage_dtype), fmt)
    mids = (levels[:-1] + levels[1:]) / 2.0
    consts = [np.zeros(levels.size) for _ in range(3)]
    if levels.size > 1:
        left = _antiderivatives(levels[:-1], mids)
        right = _antiderivatives(levels[1:], mids)
        for c, a_left, a_right in zip(consts, left, right, strict=True):
            c[1:] = np.cumsum(a_left - a_right)
    gaps = np.diff(levels)
    half = np.concatenate(([gaps[0] / 2], gaps / 2)) if gaps.size else np.zeros(1)
    for arr in (levels, mids, *consts, half):
        arr.setflags(write=False)
    return LevelGrid(levels, mids, consts[0], consts[1], consts[2], half, integer)


@dataclass(frozen=True, eq=False)
class RowErrors:
    """Per histogram row (float64, R each): sum of squared errors, sum of ``x * error``,
    values clipped, largest absolute error (over the occupied bins' intervals)."""

    sse: np.ndarray
    sum_x_err: np.ndarray
    clipped: np.ndarray
    max_abs: np.ndarray


def _bin_edges_in_codes(
    rows: HistogramRows, s: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every row's bin edges in code units (R, B+1), and each row's bin width there (R, 1)."""
    n_bins = rows.counts.shape[1]
    du = rows.width.reshape(-1, 1) / s
    u = du * np.arange(n_bins + 1)
    u += rows.lo.reshape(-1, 1) / s + z
    return u, du


def row_sse(
    rows: HistogramRows, scale: np.ndarray, zero_point: np.ndarray, fmt: NumberFormat
) -> np.ndarray:
    """Sum of squared errors of each row under its own scale and zero point (R,): the one
    number an MSE search needs."""
    s = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    z = np.asarray(zero_point, dtype=np.float64).reshape(-1, 1)
    u, du = _bin_edges_in_codes(rows, s, z)
    g2, _, _ = level_grid(fmt).integrals(u)
    mean2 = np.diff(g2, axis=1)
    mean2 /= du
    return (s * s)[:, 0] * np.einsum("rb,rb->r", rows.counts, mean2)


def row_errors(
    rows: HistogramRows,
    scale: np.ndarray,
    zero_point: np.ndarray,
    fmt: NumberFormat,
    data_min: np.ndarray,
    data_max: np.ndarray,
) -> RowErrors:
    """Errors of quantizing each row's values with its own ``scale``/``zero_point`` (R,) in
    ``fmt`` (the zero point is in code units, 0 for FP/NF4 formats). ``data_min`` and
    ``data_max`` (R,) are each row's exact extremes: the largest error is at one of them
    (clipping) or half the widest gap between levels they span (rounding)."""
    grid = level_grid(fmt)
    s = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    z = np.asarray(zero_point, dtype=np.float64).reshape(-1, 1)
    u, du = _bin_edges_in_codes(rows, s, z)
    # sum of x * error: x = s (u - z), so the integral of (u - z) * eps.
    g2, h, seg = grid.integrals(u, z)
    assert h is not None
    counts = rows.counts
    s2 = (s * s)[:, 0]
    sse = s2 * np.einsum("rb,rb->r", counts, np.diff(g2, axis=1)) / du[:, 0]
    sum_x_err = s2 * np.einsum("rb,rb->r", counts, np.diff(h, axis=1)) / du[:, 0]
    # Clipped: the mass beyond the outermost levels plus half their gaps.
    bounds = (np.array([grid.clip_low, grid.clip_high])[None, :] - z) * s
    cdf = rows.cdf(bounds)
    clipped = cdf[:, 0] + (rows.total - cdf[:, 1])
    u_min = np.asarray(data_min, dtype=np.float64) / s[:, 0] + z[:, 0]
    u_max = np.asarray(data_max, dtype=np.float64) / s[:, 0] + z[:, 0]
    worst = np.maximum(np.abs(grid.eps(u_min)), np.abs(grid.eps(u_max)))
    if grid.integer:  # every gap is 1: half a step wherever a bin crosses a boundary
        rounding = np.where((seg[:, 1:] > seg[:, :-1]).any(axis=1), 0.5, 0.0)
    else:  # gaps differ: the widest one an occupied bin straddles, or a bin's ends
        spans = grid.straddled_half_gap(seg[:, :-1], seg[:, 1:])
        ends = np.abs(grid.levels[seg] - u)
        spans = np.maximum(spans, np.maximum(ends[:, :-1], ends[:, 1:]))
        rounding = np.where(counts > 0, spans, 0.0).max(axis=1)
    worst = np.maximum(worst, rounding) * s[:, 0]
    return RowErrors(sse, sum_x_err, clipped, worst)
