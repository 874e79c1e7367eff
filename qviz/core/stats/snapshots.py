"""Snapshots of the streaming statistics while calibration runs: how the ranges converge.

After 16, 32, 64 … samples, each activation's statistics are kept (without per-channel
arrays), so choosing a range on them shows how it moves as data grows. Histograms keep the
calibration's resolution — a range chosen on fewer bins differs by itself — unless that would
take more than `BUDGET` bytes over all snapshots: then they are coarsened alike, and the final
statistics are coarsened the same way when compared with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np

from qviz.core.stats.histogram import Histogram
from qviz.core.stats.tensor_stats import TensorStats

FIRST = 16
BUDGET = 128 << 20
MIN_BINS = 256


@dataclass(frozen=True)
class Snapshot:
    """Statistics of every activation after the first `samples` calibration samples."""

    samples: int
    tensors: Mapping[str, TensorStats]


def snapshot_points(total: int) -> Iterator[int]:
    """16, 32, 64 … below `total`."""
    n = FIRST
    while n < total:
        yield n
        n *= 2


def snapshot_bins(n_tensors: int, bins: int, total_samples: int) -> int:
    """The resolution snapshots can afford for `n_tensors` tensors within `BUDGET`."""
    n_snapshots = max(1, len(list(snapshot_points(total_samples))))
    per_bin = 8 * n_tensors * n_snapshots
    while bins > MIN_BINS and bins * per_bin > BUDGET and bins % 2 == 0:
        bins //= 2
    return bins


def coarse(stats: TensorStats, bins: int) -> TensorStats:
    """`stats` with a histogram of at most `bins` bins and no per-channel arrays."""
    hist = stats.histogram
    factor = max(1, hist.bins // bins)
    if factor > 1 and hist.bins % factor == 0:
        counts = hist.counts.reshape(-1, factor).sum(axis=1)
        hist = Histogram(np.asarray(counts, dtype=np.float64), hist.lo, hist.hi)
    return replace(
        stats, histogram=hist, channel_axis=None, channel_min=None, channel_max=None,
        exponent_counts=None,
    )
