"""Latency of two sessions measured side by side on the same feeds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

__all__ = ["measure_latency"]


def measure_latency(
    float_session: ort.InferenceSession,
    native_session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 3,
    repeats: int = 20,
) -> tuple[float, float]:
    """Median milliseconds per run of each session on the same feeds, runs interleaved so
    that frequency scaling and other load hit both alike."""
    for _ in range(warmup):
        float_session.run(None, dict(feeds))
        native_session.run(None, dict(feeds))
    times_f: list[float] = []
    times_n: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        float_session.run(None, dict(feeds))
        t1 = time.perf_counter()
        native_session.run(None, dict(feeds))
        t2 = time.perf_counter()
        times_f.append((t1 - t0) * 1e3)
        times_n.append((t2 - t1) * 1e3)
    return statistics.median(times_f), statistics.median(times_n)
