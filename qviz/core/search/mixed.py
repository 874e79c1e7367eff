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
from collections.abc import Callable, Generator, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from qviz.core.calibration.analysis import (
    check_stats_match,
)
from qviz.core.calibration.config import QuantConfig
from qviz.core.compute.backend import ComputeBackend, SharedPool
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, Verdict
from qviz.core.evaluation.results import Evaluation, RunMode
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress
from qviz.core.runtime.sessions import KernelPrecision, Threads
from qviz.core.search.fastest import fastest_precision
from qviz.core.search.mixed_result import (
    LayerChoice,
    MixedResult,
    ParetoPoint,
    cost_key,
    criterion_metric,
    criterion_value,
    goodness,
    pareto_front,
)
from qviz.core.search.precisions import (
    Objective,
    Precision,
    assignment_config,
    parse_precisions,
)
from qviz.core.search.reference import (
    DEFAULT_LIMIT,
    complete_reference,
    prepare_reference,
)
from qviz.core.search.search_state import SearchState, Trials
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
    speed_batches: tuple[int, ...] = (),
    threads: Threads | None = None,
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

    With ``objective=Objective.FASTEST`` the search is `fastest_precision`'s: the fastest
    configuration that meets the criterion, timed at each of `speed_batches` (default
    `batch_size`) with `threads` intra-op threads (timings on this machine; its accuracy
    measurements go to `compute` too).

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
                speed_batches=speed_batches, threads=threads,
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
    objective: Objective,
    limit: int | None,
    confirm_limit: int | None,
    batch_size: int,
    native: bool,
    precision: KernelPrecision,
    max_trials: int | None,
    cache: SensitivityCache | None,
    compute: ComputeBackend | None,
    stack: ExitStack,
    should_stop: Callable[[], bool],
    speed_batches: tuple[int, ...],
    threads: Threads | None,
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
    if objective is Objective.FASTEST:
        # Speed does not follow bits: a search of its own, from measured per-layer times.
        return (
            yield from fastest_precision(
                model, stats, base, data, criterion, levels, limit=limit,
                confirm_limit=confirm_limit, batch_size=batch_size, native=native,
                precision=precision, max_trials=max_trials, cache=cache, compute=compute,
                should_stop=should_stop, speed_batches=speed_batches or (batch_size,),
                threads=threads or Threads(),
            )
        )  # fmt: skip

    ref = yield from prepare_reference(
        model,
        data,
        limit=limit,
        batch_size=batch_size,
        run_float=False,
        should_stop=should_stop,
    )
    search = SearchState(
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
    pool = search.open(compute, data, stack)
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

    trials = Trials(search, budget + 1, "searching")
    run = trials.run

    passing = search.points[0].passed
    # 2. Promote, most sensitive first, one level at a time. A promotion that does not make
    # the measured result better is undone: precision ladders need not be monotone (saturating
    # int8 kernels can lose to 4-bit weights run in float), and keeping such a step would
    # only cost size.
    if not passing:
        best = goodness(criterion, search.points[0].value)
        for k in range(1, len(levels)):
            for i, name in enumerate(ranked):
                if trials.count >= budget:
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
            if passing or trials.count >= budget:
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
            while current[name] > 0 and trials.count < budget:
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
        evaluation = yield from search.confirm(results, confirm_limit, batch_size, label)
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
    if trials.count >= budget:
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
