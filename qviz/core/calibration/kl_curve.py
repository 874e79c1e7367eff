"""TensorRT's entropy criterion: KL(P || Q) of a clip against the histogram of ``|x|``.

What the error curve draws for the entropy method
(:func:`qviz.core.calibration.metrics.error_curve`); the ENTROPY method itself follows
onnxruntime (:mod:`qviz.core.calibration.entropy`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.quant.formats import FormatKind, NumberFormat

__all__ = ["entropy_levels", "kl_divergence_curve"]

# Elements (rows x candidates x points) of the KL search per chunk.
_KL_CHUNK = 1 << 22


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
    the ENTROPY method follows onnxruntime instead (:func:`entropy.ort_entropy_kl`).

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
