"""Latency of two sessions measured side by side on the same feeds.

Runs are interleaved, alternating which session goes first, so that frequency scaling, caches
and the neighbours' load hit both alike; the figures are medians (one run in ten taking ten
times longer on a shared machine must not move them). `time_pair` also keeps each pair's
ratio: its median is the steadiest speed-up a loaded machine gives, since both runs of a pair
see about the same load.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.sessions import run_session

__all__ = ["PairTiming", "time_pair"]


@dataclass(frozen=True)
class PairTiming:
    """Median milliseconds per run of sessions A and B, the median of the per-pair ratios
    A/B (B's speed-up over A), the ratios' quartiles (how steady it was) and the runs made."""

    a_ms: float
    b_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float
    runs: int

    @property
    def speedup(self) -> float:
        """How many times faster B ran than A (median of the paired ratios)."""
        return self.ratio


def time_pair(
    a: ort.InferenceSession,
    b: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    budget: TimingBudget | None = None,
) -> PairTiming:
    """Time `a` and `b` on `feeds`, interleaved, within `budget` (see `TimingBudget`)."""
    budget = budget or TimingBudget()
    feeds = dict(feeds)
    for _ in range(budget.warmup):
        run_session(a, feeds)
        run_session(b, feeds)
    times_a: list[float] = []
    times_b: list[float] = []
    deadline = time.perf_counter() + budget.seconds
    while len(times_a) < budget.min_runs or (
        len(times_a) < budget.max_runs and time.perf_counter() < deadline
    ):
        first_a = len(times_a) % 2 == 0
        for s, out in ((a, times_a), (b, times_b)) if first_a else ((b, times_b), (a, times_a)):
            t0 = time.perf_counter()
            run_session(s, feeds)
            out.append((time.perf_counter() - t0) * 1e3)
    ratios = sorted(x / y if y > 0 else math.inf for x, y in zip(times_a, times_b, strict=True))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return PairTiming(
        float(statistics.median(times_a)),
        float(statistics.median(times_b)),
        float(statistics.median(ratios)),
        float(q[0]),
        float(q[2]),
        len(times_a),
    )

