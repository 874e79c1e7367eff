"""Latency of two sessions measured side by side on the same feeds, within a time budget."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

__all__ = ["DEFAULT_BUDGET_S", "measure_latency"]

#: Seconds of timed runs (both sessions together) by default: enough for a stable median on
#: a small model, and a bounded wait on a large one.
DEFAULT_BUDGET_S = 3.0
# A median needs a few runs; a budget spent on one run of a huge model still gives one.
_MIN_REPEATS = 3
_MAX_REPEATS = 1000


def measure_latency(
    float_session: ort.InferenceSession,
    native_session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 1,
    repeats: int | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
) -> tuple[float, float, int]:
    """Median milliseconds per run of each session on the same feeds, and the number of
    runs each got. Runs are interleaved so that frequency scaling and other load hit both
    alike.

    ``repeats`` fixes the number of timed runs; otherwise runs continue until ``budget_s``
    seconds have been spent timing (at least 3 runs each, unless one pair of runs alone
    takes longer than the whole budget, when that one pair is the measurement).
    """
    for _ in range(warmup):
        float_session.run(None, dict(feeds))
        native_session.run(None, dict(feeds))
    times_f: list[float] = []
    times_n: list[float] = []
    limit = repeats if repeats is not None else _MAX_REPEATS
    start = time.perf_counter()
    while len(times_f) < limit:
        t0 = time.perf_counter()
        float_session.run(None, dict(feeds))
        t1 = time.perf_counter()
        native_session.run(None, dict(feeds))
        t2 = time.perf_counter()
        times_f.append((t1 - t0) * 1e3)
        times_n.append((t2 - t1) * 1e3)
        if repeats is None and t2 - start >= budget_s:
            first_pair_too_long = len(times_f) == 1
            if len(times_f) >= _MIN_REPEATS or first_pair_too_long:
                break
    return statistics.median(times_f), statistics.median(times_n), len(times_f)
