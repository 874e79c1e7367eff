"""Mixed precision: the cheapest per-layer precisions that still meet the user's criterion.

Given an acceptance criterion (``accuracy_drop<=0.5``, ``sqnr>=30``...) and the precisions each
layer may take (``int4,int8,float``: a layer is its weight and the input activation(s) it
owns), `mixed_precision` searches for a configuration that meets the criterion at the smallest
model size (or with the fewest float layers), and proves it:

1. every layer at the lowest allowed precision, and the per-layer `sensitivity` of that
   configuration (cached like any sensitivity report) — the ranking the search starts from;
2. **promote** layers one at a time, most sensitive first, one precision step at a time
   (everything to the second level before anything goes to the third), measuring each
   candidate for real and keeping a step only when it improves the measured result, until
   one meets the criterion;
3. **demote** what the promotion overshot: each promoted layer, biggest saving first, is moved
   back down a step when the measured result still meets the criterion — this corrects the
   ranking's mistakes, including precision ladders that are not monotone (on AVX2 CPUs without
   VNNI, ORT's default int8 kernels can be *worse* than 4-bit weights run in float);
4. **confirm** the cheapest configuration that met the criterion with a full `evaluate` (the
   whole data set unless told otherwise, native INT8 where the formats allow). Only that
   evaluation's numbers are reported as the answer; if it fails, the next cheapest is
   confirmed, up to `MAX_CONFIRMATIONS`.

Every configuration tried is kept as a `ParetoPoint` (size, criterion value, float layers, the
`QuantConfig` itself), so an app can plot the trade-off and apply any point. All of them are
measured on real Q/DQ graphs — the search subset (``limit`` samples) for the points, the
confirmation for the answer — never predicted.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from qviz.core.calibration.analysis import (
    TensorResult,
    analyze_tensor,
    check_stats_match,
    quant_tensors,
)
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Comparison, Criterion, CriterionMetric, Verdict
from qviz.core.evaluation.evaluate import Evaluation, Metric, RunMode, evaluate
from qviz.core.jsonnum import json_number as _num
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.runtime.fusion import KernelPrecision
from qviz.core.search.sensitivity import (
    DEFAULT_LIMIT,
    FloatReference,
    Measurement,
    SensitivityReport,
    complete_reference,
    layer_sensitivity,
    measure,
    module_path,
    prepare_reference,
)
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset
    from qviz.core.search.sensitivity_cache import SensitivityCache

__all__ = [
    "MAX_CONFIRMATIONS",
    "LayerChoice",
    "MixedResult",
    "Objective",
    "ParetoPoint",
    "Precision",
    "assignment_config",
    "criterion_metric",
    "criterion_value",
    "mixed_precision",
    "pareto_front",
    "parse_precisions",
]

#: Candidates confirmed on the full data at most before the search reports a FAIL: a subset
#: that passes while the full data fails means the margin is thin; more tries would only
#: overfit the confirmation set.
MAX_CONFIRMATIONS = 3
_FLOAT_BITS = 32


# --------------------------------------------------------------------------- precisions


@dataclass(frozen=True)
class Precision:
    """What one layer may be: a weight format and an activation format, or float (both None).

    ``name`` is what the user wrote (``int4``, ``int8``, ``float``, ``int4/int4``...).
    Quantization methods, granularity and symmetry come from the base configuration; only the
    formats change.
    """

    name: str
    weight: NumberFormat | None
    activation: NumberFormat | None

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.activation is None

    @property
    def cost(self) -> tuple[int, int]:
        """Sort key from cheapest to dearest: weight bits (they dominate size), then
        activation bits; float counts as 32."""
        w = _FLOAT_BITS if self.weight is None else self.weight.bits
        a = _FLOAT_BITS if self.activation is None else self.activation.bits
        return (w, a)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``float``; or a weight format (``int4``, ``int8``, ``uint8``, ``nf4``,
        ``fp8_e4m3fn``...) with int8 activations; or ``WEIGHT/ACTIVATION`` (``int4/int4``).
        QvizError for anything else."""
        key = str(text).strip().lower()
        if key in ("float", "fp32", "float32", "f32"):
            return cls("float", None, None)
        w_text, _, a_text = key.partition("/")
        weight = NumberFormat.parse(w_text)
        activation = NumberFormat.parse(a_text) if a_text else NumberFormat()
        if activation.kind is FormatKind.NF4:
            raise QvizError(f"precision {text!r}: NF4 is a weight-only format")
        return cls(key, weight, activation)

    def tensor_config(self, base: TensorConfig, kind: TensorKind) -> TensorConfig:
        """`base` (method, granularity, symmetry) at this precision's format for `kind`."""
        fmt = self.weight if kind is TensorKind.WEIGHT else self.activation
        if fmt is None:
            return replace(base, quantize=False)
        if fmt.kind is FormatKind.INT:
            fmt = replace(fmt, symmetric=base.fmt.symmetric, pow2_scale=base.fmt.pow2_scale)
        return replace(base, fmt=fmt, quantize=True)


def parse_precisions(text: str | Sequence[str]) -> tuple[Precision, ...]:
    """``"int4,int8,float"`` (or a list) as precisions sorted from cheapest to dearest.
    QvizError for an unknown name, a repeat, or no quantized precision at all."""
    items = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text)
    items = [i for i in items if i]
    if not items:
        raise QvizError("no precision allowed: give e.g. int4,int8,float")
    precisions = [Precision.parse(i) for i in items]
    seen: dict[tuple[Any, Any], str] = {}
    for p in precisions:
        key = (p.weight, p.activation)
        if key in seen:
            raise QvizError(f"precision {p.name!r} is given twice (as {seen[key]!r})")
        seen[key] = p.name
    if all(p.is_float for p in precisions):
        raise QvizError("allow at least one quantized precision besides float")
    return tuple(sorted(precisions, key=lambda p: p.cost))


class Objective(Enum):
    """What "cheapest" means."""

    SIZE = "size"  # smallest model (initializer bytes as stored)
    FLOAT_LAYERS = "float-layers"  # fewest layers kept in float, then smallest


# --------------------------------------------------------------------------- criteria


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


def _holds(criterion: Criterion, value: float) -> bool:
    assert criterion.comparison is not None
    return criterion.comparison.holds(value, criterion.threshold)


# --------------------------------------------------------------------------- layers


def _layers_owning_tensors(
    model: LoadedModel,
) -> dict[str, tuple[Layer, list[tuple[str, TensorKind]]]]:
    """Each layer with the tensors it owns (weight, activations it reads first), depth order."""
    owned: dict[str, tuple[Layer, list[tuple[str, TensorKind]]]] = {}
    for t in quant_tensors(model):
        owned.setdefault(t.layer.name, (t.layer, []))[1].append((t.name, t.kind))
    return dict(sorted(owned.items(), key=lambda kv: kv[1][0].depth))


def assignment_config(
    model: LoadedModel,
    base: QuantConfig,
    assignment: Mapping[str, Precision],
    default: Precision,
) -> QuantConfig:
    """The QuantConfig giving each layer its precision: defaults at `default`, overrides for
    the tensors of layers at another one (base overrides are replaced, not merged)."""
    weights = default.tensor_config(base.weights, TensorKind.WEIGHT)
    activations = default.tensor_config(base.activations, TensorKind.ACTIVATION)
    overrides: dict[str, TensorConfig] = {}
    for name, (_layer, tensors) in _layers_owning_tensors(model).items():
        p = assignment.get(name, default)
        if p == default:
            continue
        for tensor, kind in tensors:
            base_cfg = base.weights if kind is TensorKind.WEIGHT else base.activations
            overrides[tensor] = p.tensor_config(base_cfg, kind)
    return QuantConfig(weights=weights, activations=activations, overrides=overrides)


# --------------------------------------------------------------------------- results


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignment", MappingProxyType(dict(self.assignment)))

    @property
    def mode(self) -> RunMode | None:
        return self.measurement.mode


def _cost_key(objective: Objective, p: ParetoPoint) -> tuple[float, ...]:
    if objective is Objective.FLOAT_LAYERS:
        return (p.n_float_layers, p.size_bytes)
    return (p.size_bytes, p.n_float_layers)


def _goodness(criterion: Criterion, value: float) -> float:
    """`value` oriented so that larger is better (an unmeasured value is the worst)."""
    if math.isnan(value):
        return -math.inf
    return -value if criterion.comparison is Comparison.AT_MOST else value


def pareto_front(points: Sequence[ParetoPoint], criterion: Criterion) -> tuple[ParetoPoint, ...]:
    """Points no other point beats on both size and criterion value, by increasing size."""
    front: list[ParetoPoint] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p.size_bytes, -_goodness(criterion, p.value))):
        g = _goodness(criterion, p.value)
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
        return pareto_front(self.points, self.criterion)

    def to_json(self) -> dict[str, Any]:
        from qviz.core.search.sensitivity_cache import measurement_to_json, report_to_json

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
                "float": {k.value: _num(v) for k, v in e.float_metrics.items()},
                "quantized": {k.value: _num(v) for k, v in e.quantized_metrics.items()},
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
                    "measurement": measurement_to_json(p.measurement),
                }
                for p in self.points
            ],
            "sensitivity": report_to_json(self.sensitivity),
            "elapsed_s": _num(self.elapsed_s),
            "notes": list(self.notes),
        }



# --------------------------------------------------------------------------- the search


class _Search:
    """State of one search: every measured assignment, memoised (nothing is run twice)."""

    def __init__(
        self,
        model: LoadedModel,
        stats: CalibrationStats,
        base: QuantConfig,
        levels: tuple[Precision, ...],
        criterion: Criterion,
        ref: FloatReference,
        *,
        native: bool,
        precision: KernelPrecision,
        should_stop: Callable[[], bool],
    ) -> None:
        self.model, self.stats, self.base, self.levels = model, stats, base, levels
        self.criterion, self.ref = criterion, ref
        self.native, self.precision, self.should_stop = native, precision, should_stop
        self.layers = _layers_owning_tensors(model)
        self.points: list[ParetoPoint] = []
        self.by_assignment: dict[tuple[int, ...], ParetoPoint] = {}
        self._analysed: dict[tuple[str, TensorKind, TensorConfig], TensorResult] = {}

    def key(self, levels: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(levels[name] for name in self.layers)

    def config(self, levels: Mapping[str, int]) -> QuantConfig:
        assignment = {name: self.levels[k] for name, k in levels.items()}
        return assignment_config(self.model, self.base, assignment, self.levels[0])

    def results(self, config: QuantConfig) -> list[TensorResult]:
        """`analyze`, memoised per tensor and setting: the search re-analyses the same few
        (tensor, format) pairs many times, and entropy/MSE ranges are not free."""
        out = []
        for t in quant_tensors(self.model):
            cfg = config.for_tensor(t.name, t.kind)
            if not cfg.quantize:
                continue
            k = (t.name, t.kind, cfg)
            if k not in self._analysed:
                self._analysed[k] = analyze_tensor(self.model, self.stats, t, cfg)
            out.append(self._analysed[k])
        return out

    def record(self, levels: Mapping[str, int], label: str, m: Measurement) -> ParetoPoint:
        value = criterion_value(self.criterion, m.metrics, self.ref.float_metrics)
        point = ParetoPoint(
            index=len(self.points),
            label=label,
            assignment={name: self.levels[k].name for name, k in levels.items()},
            config=self.config(levels),
            size_bytes=m.size_bytes,
            n_float_layers=sum(1 for k in levels.values() if self.levels[k].is_float),
            value=value,
            passed=_holds(self.criterion, value),
            measurement=m,
        )
        self.points.append(point)
        self.by_assignment[self.key(levels)] = point
        return point

    def measure(self, levels: Mapping[str, int], label: str) -> Generator[int, None, ParetoPoint]:
        known = self.by_assignment.get(self.key(levels))
        if known is not None:
            return known
        results = self.results(self.config(levels))
        m = yield from measure(
            self.ref,
            results,
            native=self.native,
            precision=self.precision,
            should_stop=self.should_stop,
        )
        return self.record(levels, label, m)


def _lowest_label(levels: tuple[Precision, ...]) -> str:
    return f"all {levels[0].name}"


def mixed_precision(
    model: LoadedModel,
    stats: CalibrationStats,
    base: QuantConfig,
    data: Dataset,
    criterion: Criterion,
    allowed: Sequence[Precision] | str,
    *,
    objective: Objective = Objective.SIZE,
    limit: int | None = DEFAULT_LIMIT,
    confirm_limit: int | None = None,
    batch_size: int = 128,
    native: bool = True,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    max_trials: int | None = None,
    cache: SensitivityCache | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, MixedResult]:
    """Find the cheapest per-layer precisions (from `allowed`) meeting `criterion`.

    `base` gives the methods, granularity and symmetry (its formats and overrides are
    replaced). Candidates are measured on the first `limit` samples; the answer is confirmed
    with `evaluate` on the first `confirm_limit` samples (all by default), natively unless
    ``native=False``. `max_trials` caps the candidates measured after the sensitivity pass
    (default: enough for every layer to climb every level and come back down once).

    Yields `Progress` phase by phase (reading data, float pass, sensitivity, candidates,
    confirmation; each message says which; the candidates' total is the trial budget, an
    upper bound the search usually stops short of); returns the `MixedResult`; raises
    `EvaluationCancelled` when `should_stop()` turns true between batches.
    """
    start = time.perf_counter()
    levels = (
        parse_precisions(allowed)
        if isinstance(allowed, str)
        else tuple(sorted(allowed, key=lambda p: p.cost))
    )
    if not levels or all(p.is_float for p in levels):
        raise QvizError("allow at least one quantized precision besides float")
    if levels[0].is_float:
        raise QvizError("float cannot be the cheapest precision")
    if criterion.metric.needs_labels and data.labels is None:
        raise QvizError(f"{criterion.spec} needs labels, and {data.description} has none")
    if confirm_limit is not None and confirm_limit < 1:
        raise QvizError(f"the confirmation sample limit must be at least 1, got {confirm_limit}")
    check_stats_match(model, stats)

    ref = yield from prepare_reference(
        model,
        data,
        limit=limit,
        batch_size=batch_size,
        run_float=False,
        should_stop=should_stop,
    )
    search = _Search(
        model,
        stats,
        base,
        levels,
        criterion,
        ref,
        native=native,
        precision=precision,
        should_stop=should_stop,
    )
    names = list(search.layers)
    if not names:
        raise QvizError("the model has no layer qviz can quantize")
    budget = max_trials if max_trials is not None else 2 * len(names) * len(levels)
    if budget < 0:
        raise QvizError(f"max_trials must not be negative, got {max_trials}")

    # 1. All lowest, and its sensitivity: the ranking, and the first Pareto point.
    # The float pass first, so the sensitivity pass and every candidate share it.
    ref = yield from complete_reference(ref, should_stop=should_stop)
    search.ref = ref
    current = dict.fromkeys(names, 0)
    lowest_results = search.results(search.config(current))
    report: SensitivityReport = yield from layer_sensitivity(
        model,
        lowest_results,
        data,
        metric=criterion_metric(criterion),
        limit=limit,
        batch_size=batch_size,
        native=native,
        precision=precision,
        cache=cache,
        reference=ref,
        should_stop=should_stop,
    )
    search.record(current, _lowest_label(levels), report.quantized)
    ranked = [s.name for s in report.ranking() if s.name in current]
    ranked += [n for n in names if n not in ranked]  # layers quantizing nothing at lowest

    per_run = ref.n_samples
    clock = ProgressClock(per_run * (budget + 1), "searching")
    trials = 0

    def run(levels_now: Mapping[str, int], label: str) -> Generator[Progress, None, ParetoPoint]:
        nonlocal trials
        before = len(search.points)
        gen = search.measure(levels_now, label)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                point: ParetoPoint = stop.value
                break
            yield clock.report(min(trials * per_run + done, clock.total - 1), label)
        if len(search.points) > before:
            trials += 1
        return point

    passing = search.points[0].passed
    # 2. Promote, most sensitive first, one level at a time. A promotion that does not make
    # the measured result better is undone: precision ladders need not be monotone (saturating
    # int8 kernels can lose to 4-bit weights run in float), and keeping such a step would
    # only cost size.
    if not passing:
        best = _goodness(criterion, search.points[0].value)
        for k in range(1, len(levels)):
            for name in ranked:
                if trials >= budget:
                    break
                if current[name] >= k:
                    continue
                trial = {**current, name: k}
                point = yield from run(trial, f"promote {name} to {levels[k].name}")
                if point.passed:
                    current, passing = trial, True
                    break
                g = _goodness(criterion, point.value)
                if g > best:
                    current, best = trial, g
            if passing or trials >= budget:
                break

    # 3. Demote what the promotion overshot, biggest saving first.
    if passing:

        def saving(name: str) -> tuple[int, int]:
            """What demoting `name` one step saves: float layers first when that is the
            objective, then weight bits (parameters x bits, the size it frees)."""
            layer = search.layers[name][0]
            hi, lo = levels[current[name]], levels[current[name] - 1]
            float_first = 1 if objective is Objective.FLOAT_LAYERS and hi.is_float else 0
            return (float_first, layer.param_count * (hi.cost[0] - lo.cost[0]))

        for name in sorted([n for n in names if current[n] > 0], key=saving, reverse=True):
            while current[name] > 0 and trials < budget:
                trial = dict(current)
                trial[name] -= 1
                point = yield from run(trial, f"demote {name} to {levels[trial[name]].name}")
                if not point.passed:
                    break
                current = trial

    # 4. Confirm the cheapest passing candidates with a real, full evaluation.
    candidates = sorted(
        (p for p in search.points if p.passed), key=lambda p: _cost_key(objective, p)
    )
    notes: list[str] = []
    if not candidates:
        # Nothing met the criterion on the subset: confirm the best attempt, reported as FAIL.
        candidates = [max(search.points, key=lambda p: _goodness(criterion, p.value))]
        notes.append(
            f"no configuration tried met {criterion.spec} on the search subset; "
            "the closest one is reported"
        )
    confirmations: list[Evaluation] = []
    chosen = candidates[0]
    evaluation: Evaluation | None = None
    verdict: Verdict | None = None
    for point in candidates[:MAX_CONFIRMATIONS]:
        chosen = point
        results = search.results(point.config)
        if not results:
            notes.append("the answer keeps every layer float: it is the float model itself")
            evaluation, verdict = None, None
            break
        label = f"confirming {point.label} on the full data"
        gen = evaluate(
            model,
            results,
            data,
            native=native,
            precision=precision,
            limit=confirm_limit,
            batch_size=batch_size,
            latency=False,
            should_stop=should_stop,
        )
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                evaluation = stop.value
                break
            yield Progress(p.done, p.total, p.elapsed_s, p.remaining_s, label)
        assert evaluation is not None
        confirmations.append(evaluation)
        verdict = criterion.check(evaluation)
        if verdict.passed or not point.passed:
            break
        notes.append(
            f"{point.label} met the criterion on {ref.n_samples} samples but not on "
            f"{evaluation.n_samples} ({verdict.text}); trying the next cheapest"
        )

    passed = verdict.passed if verdict is not None else chosen.passed
    final_levels = {name: _level_of(levels, chosen.assignment[name]) for name in names}
    choices = tuple(
        LayerChoice(
            name=name,
            node_name=layer.node_name,
            module_path=module_path(layer),
            op_type=layer.op_type,
            depth=layer.depth,
            tensors=tuple(t for t, _ in tensors),
            precision=levels[final_levels[name]].name,
            changed=final_levels[name] != 0,
        )
        for name, (layer, tensors) in search.layers.items()
    )
    if trials >= budget:
        notes.append(f"the search stopped after its budget of {budget} trials")
    if evaluation is not None and evaluation.mode is RunMode.SIMULATION:
        notes.append("the confirmation ran in the simulation")
    if evaluation is not None:
        notes.extend(evaluation.notes)
    notes.extend(report.notes)
    return MixedResult(
        criterion=criterion,
        objective=objective,
        allowed=levels,
        choices=choices,
        config=chosen.config,
        results=tuple(search.results(chosen.config)),
        evaluation=evaluation,
        verdict=verdict,
        passed=passed,
        chosen=chosen,
        points=tuple(search.points),
        sensitivity=report,
        float_size_bytes=report.float_size_bytes,
        search_samples=ref.n_samples,
        elapsed_s=time.perf_counter() - start,
        notes=tuple(dict.fromkeys(notes)),
        confirmations=tuple(confirmations),
    )


def _level_of(levels: tuple[Precision, ...], name: str) -> int:
    for i, p in enumerate(levels):
        if p.name == name:
            return i
    raise KeyError(name)
