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

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from qviz.core.calibration.analysis import (
    TensorResult,
    analyze_tensor,
    check_stats_match,
    quant_tensors,
)
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.compute.backend import (
    ComputeBackend,
    LocalBackend,
    SharedPool,
    WorkerPool,
    opened,
    wait_for,
)
from qviz.core.compute.jobs import (
    EvaluateJob,
    JobDone,
    JobEvent,
    JobFailed,
    MeasureJob,
    WorkContext,
    job_total,
)
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, Verdict
from qviz.core.evaluation.results import Evaluation, RunMode
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement
from qviz.core.search.mixed_result import (
    LayerChoice,
    MixedResult,
    ParetoPoint,
    cost_key,
    criterion_holds,
    criterion_metric,
    criterion_value,
    goodness,
    pareto_front,
)
from qviz.core.search.precisions import (
    Objective,
    Precision,
    assignment_config,
    layers_owning_tensors,
    parse_precisions,
)
from qviz.core.search.reference import (
    DEFAULT_LIMIT,
    FloatReference,
    complete_reference,
    prepare_reference,
)
from qviz.core.search.sensitivity import layer_sensitivity, module_path
from qviz.core.search.sensitivity_report import SensitivityReport
from qviz.core.stats.collect import CalibrationStats
from qviz.core.transforms.plan import transform_model

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset
    from qviz.core.search.sensitivity_cache import SensitivityCache

# The precisions and the result types live in `precisions` and `mixed_result`; their public
# names are re-exported here, where callers know them from.
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
        self.layers = layers_owning_tensors(model)
        self.points: list[ParetoPoint] = []
        self.by_assignment: dict[tuple[int, ...], ParetoPoint] = {}
        self._analysed: dict[tuple[str, TensorKind, TensorConfig], TensorResult] = {}
        self.pool: WorkerPool | None = None
        self.speculate = False
        # Speculative measurements (see `prefetch`): running, and finished but not yet asked
        # for. They become points only when the search asks for them, in its own order.
        self._running: dict[tuple[int, ...], int] = {}
        self._tickets: dict[int, tuple[int, ...]] = {}
        self._ready: dict[tuple[int, ...], Measurement] = {}

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
            passed=criterion_holds(self.criterion, value),
            measurement=m,
        )
        self.points.append(point)
        self.by_assignment[self.key(levels)] = point
        return point

    def _job(self, levels: Mapping[str, int], label: str) -> MeasureJob:
        results = tuple(self.results(self.config(levels)))
        return MeasureJob(results, self.native, self.precision, label)

    def prefetch(self, candidates: Sequence[Mapping[str, int]]) -> None:
        """Start measuring, on idle workers, the assignments the search is likely to ask for
        next. Only with parallel workers: the search still takes its decisions one by one in
        the same order, so its points and answer are those of a sequential run; a guess it
        never asks for is simply never recorded."""
        if not self.speculate or self.pool is None:
            return
        free = self.pool.workers - len(self._running)
        for levels in candidates:
            if free <= 0:
                return
            key = self.key(levels)
            if key in self.by_assignment or key in self._running or key in self._ready:
                continue
            ticket = self.pool.submit(self._job(levels, ""))
            self._running[key], self._tickets[ticket] = ticket, key
            free -= 1

    def _other(self, event: JobEvent) -> None:
        """An event of a speculative job, seen while waiting for another."""
        key = self._tickets.get(event.ticket)
        if key is None or not isinstance(event, JobDone | JobFailed):
            return
        del self._tickets[event.ticket], self._running[key]
        if isinstance(event, JobDone):
            self._ready[key] = event.value
        # A failed guess is dropped: if the search asks for it, it runs (and fails) for real.

    def measure(self, levels: Mapping[str, int], label: str) -> Generator[int, None, ParetoPoint]:
        key = self.key(levels)
        known = self.by_assignment.get(key)
        if known is not None:
            return known
        if key in self._ready:
            return self.record(levels, label, self._ready.pop(key))
        assert self.pool is not None
        ticket = self._running.pop(key, None)
        if ticket is None:
            ticket = self.pool.submit(self._job(levels, label))
        else:
            del self._tickets[ticket]
        m = yield from wait_for(
            self.pool, ticket, should_stop=self.should_stop, others=self._other
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
    compute: ComputeBackend | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, MixedResult]:
    """Find the cheapest per-layer precisions (from `allowed`) meeting `criterion`.

    `base` gives the methods, granularity and symmetry (its formats and overrides are
    replaced). Candidates are measured on the first `limit` samples; the answer is confirmed
    with `evaluate` on the first `confirm_limit` samples (all by default), natively unless
    ``native=False``. `max_trials` caps the candidates measured after the sensitivity pass
    (default: enough for every layer to climb every level and come back down once).

    Every run goes to `compute` (`qviz.core.compute`; one at a time here when None). With
    parallel workers, idle ones measure the candidates the search is likely to ask for next;
    the search still decides in the same order, so its points and answer are a sequential
    run's.

    Yields `Progress` phase by phase (reading data, float pass, sensitivity, candidates,
    confirmation; each message says which; the candidates' total is the trial budget, an
    upper bound the search usually stops short of); returns the `MixedResult`; raises
    `EvaluationCancelled` when `should_stop()` turns true between batches.
    """
    with ExitStack() as stack:
        return (
            yield from _mixed_precision(
                model, stats, base, data, criterion, allowed, objective=objective,
                limit=limit, confirm_limit=confirm_limit, batch_size=batch_size,
                native=native, precision=precision, max_trials=max_trials, cache=cache,
                compute=compute, stack=stack, should_stop=should_stop,
            )
        )  # fmt: skip


def _mixed_precision(
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
    max_trials: int | None,
    cache: SensitivityCache | None,
    compute: ComputeBackend | None,
    stack: ExitStack,
    should_stop: Callable[[], bool],
) -> Generator[Progress, None, MixedResult]:
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
    # Transforms (SmoothQuant, equalization) are chosen once, from the base settings: every
    # candidate is measured on the same transformed model.
    plan = transform_model(model, stats, base)
    assert plan.stats is not None
    model, stats = plan.model, plan.stats

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
    backend = compute or LocalBackend()
    context = WorkContext(model, reference=ref, data=data)
    search.pool = pool = stack.enter_context(opened(backend, context, should_stop))
    search.speculate = backend.parallel
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
        compute=SharedPool(pool),
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
        best = goodness(criterion, search.points[0].value)
        for k in range(1, len(levels)):
            for i, name in enumerate(ranked):
                if trials >= budget:
                    break
                if current[name] >= k:
                    continue
                trial = {**current, name: k}
                search.prefetch(
                    [{**current, n: k} for n in ranked[i + 1 :] if current[n] < k]
                )
                point = yield from run(trial, f"promote {name} to {levels[k].name}")
                if point.passed:
                    current, passing = trial, True
                    break
                g = goodness(criterion, point.value)
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

        order = sorted([n for n in names if current[n] > 0], key=saving, reverse=True)
        for i, name in enumerate(order):
            while current[name] > 0 and trials < budget:
                trial = dict(current)
                trial[name] -= 1
                guesses = [{**trial, name: trial[name] - 1}] if trial[name] > 0 else []
                guesses += [{**current, n: current[n] - 1} for n in order[i + 1 :]]
                search.prefetch(guesses)
                point = yield from run(trial, f"demote {name} to {levels[trial[name]].name}")
                if not point.passed:
                    break
                current = trial

    # 4. Confirm the cheapest passing candidates with a real, full evaluation.
    candidates = sorted(
        (p for p in search.points if p.passed), key=lambda p: cost_key(objective, p)
    )
    notes: list[str] = []
    if not candidates:
        # Nothing met the criterion on the subset: confirm the best attempt, reported as FAIL.
        candidates = [max(search.points, key=lambda p: goodness(criterion, p.value))]
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
        job = EvaluateJob(
            tuple(results), native, precision, confirm_limit, batch_size, label=label
        )
        confirm_clock = ProgressClock(job_total(context, job), label)
        gen = wait_for(pool, pool.submit(job), should_stop=should_stop, others=search._other)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                evaluation = stop.value
                break
            yield confirm_clock.report(done)
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
