"""No slower model unannounced: an exported Q/DQ model timed against float, and what to do.

`check_speed` profiles the exported model against the float one at the user's batch and
thread count (`layer_speed`: each layer, then the whole model without the profiler). When the
quantized model is slower (its median paired speed-up below 1 / (1 + `NOISE`)), it explains
which layers lose time and why (`explain_slow_layers`), then builds and *measures* the
configuration that keeps those layers float, so the one line it returns names a
configuration that was seen not to be slower — or says that none was and float is fastest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qviz.core.errors import QvizError
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.jsonnum import json_number as _num
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.fusion import fusion_report
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.sessions import KernelPrecision, Threads
from qviz.core.runtime.slowdown import NOISE, SlowLayer, explain_slow_layers
from qviz.core.runtime.speed import SpeedProfile, layer_speed
from qviz.core.runtime.speed_text import fmt_speedup, threads_text

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.data.dataset import Dataset

__all__ = ["CHECK_BUDGET", "SpeedCheck", "check_speed", "is_slower", "keep_float", "timing_feeds"]

#: How long an export's check times each configuration by default: each phase (profiled,
#: then the whole model) at least 5 runs, then up to one second.
CHECK_BUDGET = TimingBudget(seconds=1.0, min_runs=5, max_runs=100)
#: How one configuration's Q/DQ model is timed against float (injectable for tests).
Measure = Callable[[QdqModel], SpeedProfile]


def is_slower(speedup: float) -> bool:
    """Whether a measured speed-up means "slower than float", beyond the noise."""
    return speedup < 1 / (1 + NOISE)


def timing_feeds(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples of `data`, fed as the model takes them (fewer when the data
    has fewer: the profile then says the batch it ran)."""
    if batch < 1:
        raise QvizError(f"the timing batch must be at least 1, got {batch}")
    for feeds in data.batches(batch):
        return dict(feeds)
    raise QvizError(f"{data.description} has no samples to time the models on")


def keep_float(results: Sequence[TensorResult], layers: Sequence[str]) -> list[TensorResult]:
    """`results` without the tensors the named layers own (weight and the inputs they read
    first): the configuration that keeps those layers float."""
    drop = set(layers)
    return [r for r in results if r.layer.name not in drop]


@dataclass(frozen=True)
class SpeedCheck:
    """The exported model against float, and, when it is slower, the layers that lose time
    (`slow`) and the measured speed-up of the configuration keeping them float
    (``alternative``; None when it was not measured: not slower, or nothing to keep)."""

    speed: SpeedProfile
    slow: tuple[SlowLayer, ...]
    keep_float: tuple[str, ...] = ()
    alternative: SpeedProfile | None = None
    random_input: bool = False

    @property
    def speedup(self) -> float:
        return self.speed.speedup

    @property
    def slower(self) -> bool:
        return is_slower(self.speedup)

    @property
    def alternative_speedup(self) -> float | None:
        return None if self.alternative is None else self.alternative.speedup

    @property
    def summary(self) -> str:
        """One line: how fast the exported model ran against float, at which batch."""
        x = self.speedup
        how = (
            f"{x:.2f}× faster than float" if x > 1 + NOISE
            else f"{x:.2f}× the speed of float" if self.slower
            else f"as fast as float ({x:.2f}×)"
        )  # fmt: skip
        return (
            f"the exported model runs {how} at batch {self.speed.batch_size} "
            f"({threads_text(self.speed.threads)})"
        )

    @property
    def warning(self) -> str | None:
        """The one line to show when the model is slower than float, else None."""
        if not self.slower:
            return None
        parts = [
            f"SLOWER than float: the exported model runs {fmt_speedup(self.speedup)} at "
            f"batch {self.speed.batch_size} ({threads_text(self.speed.threads)})"
        ]
        if self.slow:
            first = self.slow[0]
            more = f" (and {len(self.slow) - 1} more layers)" if len(self.slow) > 1 else ""
            parts.append(f"{first.layer} loses the most: {first.reason}{more}")
        else:
            parts.append(
                "no single layer loses much: the Q/DQ and layout changes between layers add up"
            )
        alt = self.alternative_speedup
        names = ", ".join(self.keep_float)
        if alt is not None and not is_slower(alt):
            parts.append(f"keeping {names} float measured {fmt_speedup(alt)} against float")
        elif alt is not None:
            parts.append(
                f"keeping {names} float measured {fmt_speedup(alt)} too: no configuration tried "
                "beats float here, the float model is the fastest"
            )
        else:
            parts.append("the float model is faster here")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "speedup": _num(self.speedup),
            "slower": self.slower,
            "batch_size": self.speed.batch_size,
            "threads": self.speed.threads,
            "random_input": self.random_input,
            "warning": self.warning,
            "slow_layers": [s.to_json() for s in self.slow],
            "keep_float": list(self.keep_float),
            "alternative_speedup": _num(self.alternative_speedup),
            "speed": self.speed.to_json(),
        }


def check_speed(
    model: LoadedModel,
    results: Sequence[TensorResult],
    feeds: Mapping[str, np.ndarray],
    *,
    threads: Threads | None = None,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    budget: TimingBudget | None = None,
    qdq: QdqModel | None = None,
    random_input: bool = False,
    measure: Measure | None = None,
) -> SpeedCheck:
    """Time the Q/DQ model of `results` (or `qdq`, already built) against float on `feeds`;
    when it is slower, measure the configuration keeping the slow layers float too."""

    def default_measure(q: QdqModel) -> SpeedProfile:
        return layer_speed(model, q, feeds, threads=threads, precision=precision,
                           budget=budget or CHECK_BUDGET)

    timed = measure or default_measure
    qdq = qdq if qdq is not None else build_qdq(model, results)
    speed = timed(qdq)
    if not is_slower(speed.speedup):
        return SpeedCheck(speed, (), random_input=random_input)
    fusion = fusion_report(qdq, precision)
    bits = {p.layer.name: p.weight.fmt.bits for p in qdq.layers if p.weight is not None}
    slow = explain_slow_layers(speed, fusion, model.layers, bits)
    names = tuple(s.layer for s in slow)
    alternative = None
    rest = keep_float(results, names)
    if names and rest:
        alt_qdq = build_qdq(model, rest)
        if alt_qdq.layers:
            alternative = timed(alt_qdq)
    return SpeedCheck(speed, slow, names, alternative, random_input)
