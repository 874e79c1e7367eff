"""Merging the statistics the transforms read: per-channel moments and Gram matrices.

Exact: per-channel counts (sums), means and mean squares (count-weighted: a sum of sums, never
an average of averages), Gram matrices and their row counts (sums of ``x xᵀ``).

With the usual bounded error: each channel's histogram. The merged channel spans the union of
its ranges in the parts (a part in which the channel saw nothing adds no range), in the same
number of bins; every part's counts are laid onto it through its piecewise-linear cumulative
count — the "values are uniform within a bin" reading every histogram in qviz makes — so a
quantile moves by at most one merged bin plus one source bin.

A part without moments (collected with ``--channel-bins`` unset, or before schema 2) or without
Gram matrices leaves the merge without them: absent means not collected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qviz.core.stats.channel_stats import ChannelMoments
from qviz.core.stats.gram import GramStats
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.tensor_stats import TensorStats

__all__ = ["merge_grams", "merge_moments"]


def merge_moments(parts: Sequence[TensorStats]) -> ChannelMoments | None:
    """The moments of all of `parts` together (None when a part has none or the channel
    counts differ)."""
    moments = [p.moments for p in parts]
    if not moments or any(m is None for m in moments):
        return None
    ms = [m for m in moments if m is not None]
    if len({m.channels for m in ms}) != 1:
        return None
    counts = np.stack([m.count for m in ms])
    count = counts.sum(axis=0)
    safe = np.where(count > 0, count, 1.0)
    mean = np.where(count > 0, (counts * np.stack([m.mean for m in ms])).sum(axis=0) / safe, 0.0)
    mean_sq = np.where(
        count > 0, (counts * np.stack([m.mean_sq for m in ms])).sum(axis=0) / safe, 0.0
    )
    hist = _merge_histograms(ms, counts)
    if hist is None:
        return ChannelMoments(count, mean, mean_sq)
    return ChannelMoments(count, mean, mean_sq, *hist)


def _merge_histograms(
    ms: Sequence[ChannelMoments], counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    rows = [m.rows() for m in ms if m.has_histograms]
    if len(rows) != len(ms) or len({r.counts.shape[1] for r in rows}) != 1:
        return None
    bins = rows[0].counts.shape[1]
    seen = counts > 0  # (parts, channels): a part whose channel saw nothing adds no range
    los = np.stack([r.lo for r in rows])
    his = np.stack([r.hi for r in rows])
    any_seen = seen.any(axis=0)
    lo = np.where(any_seen, np.where(seen, los, np.inf).min(axis=0), los[0])
    hi = np.where(any_seen, np.where(seen, his, -np.inf).max(axis=0), his[0])
    steps = np.arange(bins + 1, dtype=np.float64) / bins
    edges = lo[:, None] + (hi - lo)[:, None] * steps[None, :]  # (channels, bins + 1)
    edges[:, -1] = hi  # the last edge exactly: nothing falls past it
    merged = np.zeros((lo.size, bins))
    for r in rows:
        merged += np.diff(_cdf(r, edges), axis=1)
    return np.maximum(merged, 0.0), lo, hi


def _cdf(rows: HistogramRows, x: np.ndarray) -> np.ndarray:
    """`rows.cdf`, with everything at or past a row's top edge counted (its last bin whole)."""
    cum = rows.cdf(x)
    return np.where(x >= rows.hi[:, None], rows.total[:, None], cum)


def merge_grams(parts: Sequence[Mapping[str, GramStats]]) -> dict[str, GramStats]:
    """The Gram matrices of all of `parts` together, by weight (none unless every part has
    every one); weights sharing one matrix in the first part share the merged one."""
    if not parts or any(not p for p in parts):
        return {}
    first = parts[0]
    if any(set(p) != set(first) for p in parts[1:]):
        return {}
    merged: dict[int, GramStats] = {}
    out: dict[str, GramStats] = {}
    for weight, gram in first.items():
        done = merged.get(id(gram))
        if done is None:
            others = [p[weight] for p in parts]
            if any(g.dim != gram.dim or g.kernel != gram.kernel for g in others):
                return {}
            done = GramStats(
                np.sum(np.stack([g.matrix for g in others]), axis=0),
                sum(g.rows for g in others),
                gram.kernel,
            )
            merged[id(gram)] = done
        out[weight] = done
    return out
