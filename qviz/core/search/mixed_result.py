"""What a mixed-precision search found: every configuration it measured (`ParetoPoint`), the
trade-off front, and the confirmed answer (`MixedResult`), judged by the user's criterion."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import QuantConfig
from qviz.core.evaluation.criteria import Comparison, Criterion, CriterionMetric, Verdict
from qviz.core.evaluation.results import Evaluation, Metric, RunMode, metrics_to_json
from qviz.core.jsonnum import json_number as _num
from qviz.core.runtime.latency import PairTiming
from qviz.core.search.measure import Measurement
from qviz.core.search.precisions import Objective, Precision
from qviz.core.search.sensitivity_report import SensitivityReport
from qviz.core.search.speed_table import SpeedTable

__all__ = [
    "LayerChoice",
    "MixedResult",
    "ParetoPoint",
    "cost_key",
    "criterion_holds",
    "criterion_metric",
    "criterion_value",
    "goodness",
    "pareto_front",
]


def criterion_metric(criterion: Criterion) -> Metric:
    """The evaluation metric a criterion reads."""
    return {
        CriterionMetric.ACCURACY_DROP: Metric.ACCURACY,
        CriterionMetric.OUTPUT_COSINE: Metric.COSINE,
        CriterionMetric.OUTPUT_SQNR: Metric.SQNR,
        CriterionMetric.AGREEMENT: Metric.AGREEMENT,
    }[criterion.metric]


def criterion_value(
    criterion: Criterion, metrics: Mapping[Metric, float], float_metrics: Mapping[Metric, float]
) -> float:
    """The number `criterion` compares, from a measurement (NaN when it was not measured)."""
    if criterion.metric is CriterionMetric.ACCURACY_DROP:
        f, q = float_metrics.get(Metric.ACCURACY), metrics.get(Metric.ACCURACY)
        return math.nan if f is None or q is None else f - q
    return metrics.get(criterion_metric(criterion), math.nan)


def criterion_holds(criterion: Criterion, value: float) -> bool:
    assert criterion.comparison is not None
    return criterion.comparison.holds(value, criterion.threshold)


@dataclass(frozen=True)
class ParetoPoint:
    """One configuration the search measured on its subset.

    ``value`` is the criterion's number (e.g. the accuracy drop in points), ``passed`` whether
    it met the criterion *on the search subset*; ``config`` can be applied as it is.
    """

    index: int
    label: str  # how it was reached: "all int4", "promote features.0 to int8"...
    assignment: Mapping[str, str]  # layer display name -> precision name
    config: QuantConfig
    size_bytes: int
    n_float_layers: int
    value: float
    passed: bool
    measurement: Measurement
    latency_ms: float | None = None  # predicted from per-layer timings (speed objective)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignment", MappingProxyType(dict(self.assignment)))

    @property
    def mode(self) -> RunMode | None:
        return self.measurement.mode


def cost_key(objective: Objective, p: ParetoPoint) -> tuple[float, ...]:
    if objective is Objective.FLOAT_LAYERS:
        return (p.n_float_layers, p.size_bytes)
    if objective is Objective.FASTEST:
        latency = math.inf if p.latency_ms is None else p.latency_ms
        return (latency, p.size_bytes)
    return (p.size_bytes, p.n_float_layers)


def _latency(p: ParetoPoint) -> float:
    return math.nan if p.latency_ms is None else p.latency_ms


def goodness(criterion: Criterion, value: float) -> float:
    """`value` oriented so that larger is better (an unmeasured value is the worst)."""
    if math.isnan(value):
        return -math.inf
    return -value if criterion.comparison is Comparison.AT_MOST else value


def pareto_front(
    points: Sequence[ParetoPoint],
    criterion: Criterion,
    cost: Callable[[ParetoPoint], float] = lambda p: float(p.size_bytes),
) -> tuple[ParetoPoint, ...]:
    """Points no other point beats on both `cost` (size by default; latency for the speed
    objective) and criterion value, by increasing cost; points without a cost are left out."""
    front: list[ParetoPoint] = []
    best = -math.inf
    costed = [p for p in points if not math.isnan(cost(p))]
    for p in sorted(costed, key=lambda p: (cost(p), -goodness(criterion, p.value))):
        g = goodness(criterion, p.value)
        if g > best:
            front.append(p)
            best = g
    return tuple(front)


@dataclass(frozen=True)
class LayerChoice:
    """The precision chosen for one layer, named as every runtime can find it."""

    name: str  # display name: torch module path when known
    node_name: str  # the ONNX node
    module_path: str | None
    op_type: str
    depth: int
    tensors: tuple[str, ...]  # weight and activations this precision applies to
    precision: str
    changed: bool  # differs from the lowest allowed precision


@dataclass(frozen=True)
class MixedResult:
    """The answer of a mixed-precision search, confirmed by a real evaluation.

    ``evaluation`` is the confirmation run (None only when the answer quantizes nothing and
    is the float model itself); ``verdict`` the criterion checked on it. ``passed`` is that
    verdict. ``chosen`` is the search-subset point of the same configuration.
    """

    criterion: Criterion
    objective: Objective
    allowed: tuple[Precision, ...]
    choices: tuple[LayerChoice, ...]
    config: QuantConfig
    results: tuple[TensorResult, ...]
    evaluation: Evaluation | None
    verdict: Verdict | None
    passed: bool
    chosen: ParetoPoint
    points: tuple[ParetoPoint, ...]
    sensitivity: SensitivityReport
    float_size_bytes: int
    search_samples: int
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    confirmations: tuple[Evaluation, ...] = field(default=(), repr=False)
    # The speed objective: every layer's measured time at each precision, and the answer
    # timed end to end against float at each batch (none: the answer is float itself).
    speed_table: SpeedTable | None = None
    timings: tuple[tuple[int, PairTiming], ...] = ()

    @property
    def changed(self) -> tuple[LayerChoice, ...]:
        """Layers moved off the lowest allowed precision."""
        return tuple(c for c in self.choices if c.changed)

    @property
    def size_bytes(self) -> int:
        """The chosen model's size as measured (initializer bytes as stored)."""
        if self.evaluation is not None:
            return self.evaluation.size.quantized_bytes
        return self.chosen.size_bytes

    @property
    def measured_value(self) -> float | None:
        """The criterion's number from the confirmation evaluation."""
        return None if self.verdict is None else self.verdict.value

    @property
    def baseline(self) -> ParetoPoint:
        """Every layer at the lowest allowed precision."""
        return self.points[0]

    def pareto_front(self) -> tuple[ParetoPoint, ...]:
        """The trade-off front: against predicted latency for the speed objective, else
        against size."""
        if self.objective is Objective.FASTEST:
            return pareto_front(self.points, self.criterion, _latency)
        return pareto_front(self.points, self.criterion)

    def to_json(self) -> dict[str, Any]:
        e = self.evaluation
        front = {p.index for p in self.pareto_front()}
        return {
            "criterion": self.criterion.spec,
            "objective": self.objective.value,
            "allowed": [p.name for p in self.allowed],
            "passed": self.passed,
            "verdict": None if self.verdict is None else self.verdict.text,
            "measured": None
            if e is None
            else {
                "mode": e.mode.value,
                "kernel_precision": e.precision.value,
                "samples": e.n_samples,
                "data": e.data_description,
                "value": _num(self.measured_value),
                "float": metrics_to_json(e.float_metrics),
                "quantized": metrics_to_json(e.quantized_metrics),
            },
            "size_bytes": {
                "float": self.float_size_bytes,
                "quantized": self.size_bytes,
                "ratio": _num(self.float_size_bytes / self.size_bytes) if self.size_bytes else None,
            },
            "layers": [
                {
                    "name": c.name,
                    "node_name": c.node_name,
                    "module_path": c.module_path,
                    "op_type": c.op_type,
                    "depth": c.depth,
                    "tensors": list(c.tensors),
                    "precision": c.precision,
                    "changed": c.changed,
                }
                for c in self.choices
            ],
            "changed": [c.name for c in self.changed],
            "chosen_point": self.chosen.index,
            "search_samples": self.search_samples,
            "points": [
                {
                    "index": p.index,
                    "label": p.label,
                    "size_bytes": p.size_bytes,
                    "n_float_layers": p.n_float_layers,
                    "value": _num(p.value),
                    "passed": p.passed,
                    "pareto": p.index in front,
                    "assignment": dict(p.assignment),
                    "predicted_ms": _num(p.latency_ms),
                    "measurement": p.measurement.to_json(),
                }
                for p in self.points
            ],
            "sensitivity": self.sensitivity.to_json(),
            "speed": None if self.speed_table is None else self.speed_table.to_json(),
            "timings": [
                {
                    "batch_size": batch,
                    "float_ms": _num(t.a_ms),
                    "quantized_ms": _num(t.b_ms),
                    "speedup": _num(t.speedup),
                    "runs": t.runs,
                }
                for batch, t in self.timings
            ],
            "elapsed_s": _num(self.elapsed_s),
            "notes": list(self.notes),
        }
