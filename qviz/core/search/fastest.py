"""Mixed precision for speed: the fastest measured configuration that meets the criterion.

The size-first search (`qviz.core.search.mixed`) climbs from the smallest configuration. Speed
does not follow bits: on a CPU a 4-bit weight ORT cannot fuse is dequantized on every run, a
thin convolution's integer kernel can lose to float's, and keeping a layer float can be the
fastest choice. So this search starts from time measured on this machine:

1. **time every layer at every precision**: for each quantized precision allowed, the model
   with every layer at it is profiled against float at the user's batch and thread count
   (`SpeedTable`: each layer's kernel + Q/DQ + layout time; its float time);
2. **each layer at its fastest precision** — the predicted fastest configuration — measured
   against the criterion;
3. if it fails, **promote** layers towards accuracy (one precision step at a time, most
   sensitive first by the all-lowest configuration's sensitivity), keeping steps that help,
   until one passes;
4. **speed pass**: each layer, most predicted time saved first, is moved to a faster
   precision when the measured result still meets the criterion;
5. **confirm** the passing candidates in predicted-time order: a full evaluation against the
   criterion, then a real end-to-end timing against float (interleaved, medians). The first
   that meets the criterion and is not slower than float is the answer; when every candidate
   confirmed is slower than float, the answer is the float model itself, said so.

Every configuration measured is a `ParetoPoint` with its predicted latency, so the Pareto
plot can show latency against the metric.

Where things run: the accuracy of each candidate (the sensitivity pass, the measurements, the
confirming evaluations) goes to the run's compute backend like the size-first search's, the
same numbers wherever it ran. The timings — the per-layer profiles and the end-to-end
confirmation — are taken here, in this process, because the answer must be fastest on the
machine the user runs qviz on; they run while no job is (the profiles before the workers
start, each confirmation timing after its evaluation, and this search guesses nothing ahead),
so a local process pool does not compete with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np

from qviz.core.calibration.config import QuantConfig
from qviz.core.compute.backend import ComputeBackend, SharedPool
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, Verdict
from qviz.core.evaluation.results import Evaluation, EvaluationCancelled, RunMode
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress
from qviz.core.runtime.latency import PairTiming, time_pair
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, Threads, build_session
from qviz.core.runtime.speed import layer_speed
from qviz.core.runtime.speed_check import is_slower, timing_feeds
from qviz.core.search.mixed_result import (
    LayerChoice,
    MixedResult,
    ParetoPoint,
    cost_key,
    criterion_metric,
    goodness,
)
from qviz.core.search.precisions import Objective, Precision
from qviz.core.search.reference import complete_reference, prepare_reference
from qviz.core.search.search_state import SearchState, Trials
from qviz.core.search.sensitivity import layer_sensitivity, module_path
from qviz.core.search.speed_table import SpeedTable
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset
    from qviz.core.search.sensitivity_cache import SensitivityCache

__all__ = ["SPEED_BUDGET", "Timer", "fastest_precision", "measure_speed_table"]

#: How long each timing of the speed search runs: each precision's profile, and each
#: candidate's end-to-end timing against float.
SPEED_BUDGET = TimingBudget(seconds=1.5, min_runs=5, max_runs=200)
#: Times one configuration's Q/DQ model against float on some feeds.
Timer = Callable[[QdqModel, Mapping[str, np.ndarray]], PairTiming]
#: Candidates confirmed at most (as the size-first search).
MAX_CONFIRMATIONS = 3


def measure_speed_table(
    model: LoadedModel,
    search: SearchState,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: Threads,
    precision: KernelPrecision,
    budget: TimingBudget,
) -> Generator[str, None, SpeedTable]:
    """Profile, for each quantized level of `search`, the model with every layer at it
    against float; yields each level's name before timing it."""
    per_level: dict[str, dict[str, tuple[float, float, str]]] = {}
    others: list[float] = []
    batch = 1
    for k, level in enumerate(search.levels):
        if level.is_float:
            continue
        yield level.name
        results = search.results(search.config(dict.fromkeys(search.layers, k)))
        if not results:
            continue
        qdq = build_qdq(model, results)
        speed = layer_speed(model, qdq, feeds, threads=threads, precision=precision,
                            budget=budget, whole_model=False)
        batch = speed.batch_size
        per_level[level.name] = {
            x.name: (x.float_ms, x.quantized_ms, x.kernel) for x in speed.layers
        }
        others.append(speed.other_float_ms)
    return SpeedTable.merge(batch, threads.intra_op, per_level, others)


def fastest_precision(
    model: LoadedModel,
    stats: CalibrationStats,
    base: QuantConfig,
    data: Dataset,
    criterion: Criterion,
    levels: tuple[Precision, ...],
    *,
    limit: int | None,
    confirm_limit: int | None,
    batch_size: int,
    native: bool,
    precision: KernelPrecision,
    max_trials: int | None,
    cache: SensitivityCache | None,
    should_stop: Callable[[], bool],
    speed_batches: tuple[int, ...],
    threads: Threads,
    budget: TimingBudget = SPEED_BUDGET,
    table: SpeedTable | None = None,
    timer: Timer | None = None,
    compute: ComputeBackend | None = None,
) -> Generator[Progress, None, MixedResult]:
    """The speed-first search (see the module docstring); the arguments are
    `mixed_precision`'s, with the batches and threads to time at: the per-layer times at the
    first batch, the answer confirmed not slower than float at every one. `levels` are sorted
    from the cheapest (fewest bits) to float. A `table` measured before is used as it is;
    `timer` times one configuration's Q/DQ model against float on some feeds (default:
    interleaved runs within `budget`). Accuracy runs go to `compute` (one at a time here
    when None); timings are taken here."""
    with ExitStack() as stack:
        return (
            yield from _fastest(
                model, stats, base, data, criterion, levels, limit=limit,
                confirm_limit=confirm_limit, batch_size=batch_size, native=native,
                precision=precision, max_trials=max_trials, cache=cache,
                should_stop=should_stop, speed_batches=speed_batches, threads=threads,
                budget=budget, table=table, timer=timer, compute=compute, stack=stack,
            )
        )  # fmt: skip


def _fastest(
    model: LoadedModel,
    stats: CalibrationStats,
    base: QuantConfig,
    data: Dataset,
    criterion: Criterion,
    levels: tuple[Precision, ...],
    *,
    limit: int | None,
    confirm_limit: int | None,
    batch_size: int,
    native: bool,
    precision: KernelPrecision,
    max_trials: int | None,
    cache: SensitivityCache | None,
    should_stop: Callable[[], bool],
    speed_batches: tuple[int, ...],
    threads: Threads,
    budget: TimingBudget,
    table: SpeedTable | None,
    timer: Timer | None,
    compute: ComputeBackend | None,
    stack: ExitStack,
) -> Generator[Progress, None, MixedResult]:
    if not speed_batches or min(speed_batches) < 1:
        raise QvizError(f"timing batches must be at least 1, got {list(speed_batches)}")
    start = time.perf_counter()
    ref = yield from prepare_reference(model, data, limit=limit, batch_size=batch_size,
                                       run_float=False, should_stop=should_stop)
    search = SearchState(model, stats, base, levels, criterion, ref, native=native,
                         precision=precision, should_stop=should_stop)
    names = list(search.layers)
    if not names:
        raise QvizError("the model has no layer qviz can quantize")
    trial_budget = max_trials if max_trials is not None else 2 * len(names) * len(levels)
    if trial_budget < 0:
        raise QvizError(f"max_trials must not be negative, got {max_trials}")
    level_names = [p.name for p in levels]
    float_level = next((k for k, p in enumerate(levels) if p.is_float), None)

    # 1. Time every layer at every precision.
    all_feeds = [timing_feeds(data, b) for b in speed_batches]
    feeds = all_feeds[0]
    if table is None:
        timing = measure_speed_table(model, search, feeds, threads=threads,
                                     precision=precision, budget=budget)
        while True:
            if should_stop():
                raise EvaluationCancelled()
            try:
                name = next(timing)
            except StopIteration as stop:
                table = stop.value
                break
            yield Progress(0, 0, time.perf_counter() - start, None,
                           f"timing every layer at {name} against float")
    assert table is not None
    speeds: SpeedTable = table

    def precision_of(levels_now: Mapping[str, int]) -> dict[str, str]:
        return {n: level_names[k] for n, k in levels_now.items()}

    search.estimate = lambda levels_now: speeds.estimate(precision_of(levels_now))

    # The ranking: the all-lowest configuration's sensitivity (also the first point).
    ref = yield from complete_reference(ref, should_stop=should_stop)
    search.ref = ref
    pool = search.open(compute, data, stack)  # after the profiles: nothing runs beside them
    lowest = dict.fromkeys(names, 0)
    report = yield from layer_sensitivity(
        model, search.results(search.config(lowest)), data, metric=criterion_metric(criterion),
        limit=limit, batch_size=batch_size, native=native, precision=precision, cache=cache,
        reference=ref, compute=SharedPool(pool), should_stop=should_stop,
    )  # fmt: skip
    search.record(lowest, f"all {levels[0].name}", report.quantized)
    ranked = [s.name for s in report.ranking() if s.name in lowest]
    ranked += [n for n in names if n not in ranked]

    trials = Trials(search, trial_budget + 2, "searching for speed")
    run = trials.run

    # 2. Each layer at its fastest precision.
    current = {n: level_names.index(speeds.fastest(n, level_names)) for n in names}
    point = yield from run(current, "each layer at its fastest precision")
    passing = point.passed
    # 3. Promote towards accuracy, most sensitive first, until it passes.
    if not passing:
        best = goodness(criterion, point.value)
        for _ in range(1, len(levels)):
            for name in ranked:
                if trials.count >= trial_budget or current[name] >= len(levels) - 1:
                    continue
                trial = {**current, name: current[name] + 1}
                point = yield from run(trial, f"promote {name} to {levels[trial[name]].name}")
                if point.passed:
                    current, passing = trial, True
                    break
                g = goodness(criterion, point.value)
                if g > best:
                    current, best = trial, g
            if passing or trials.count >= trial_budget:
                break

    # 4. Speed pass: each layer to a faster precision while the criterion still holds.
    if passing:

        def saving(name: str) -> float:
            now = speeds.time(name, level_names[current[name]])
            return now - min(speeds.time(name, p) for p in level_names)

        for name in sorted(names, key=saving, reverse=True):
            now = speeds.time(name, level_names[current[name]])
            faster = sorted(
                (k for k, p in enumerate(level_names) if speeds.time(name, p) < now),
                key=lambda k: speeds.time(name, level_names[k]),
            )
            for k in faster:
                if trials.count >= trial_budget:
                    break
                trial = {**current, name: k}
                point = yield from run(trial, f"{name} to {levels[k].name} (faster)")
                if point.passed:
                    current = trial
                    break

    # 5. Confirm: the criterion on the full data, then a real timing against float.
    candidates = sorted((p for p in search.points if p.passed),
                        key=lambda p: cost_key(Objective.FASTEST, p))
    notes: list[str] = []
    if not candidates:
        candidates = [max(search.points, key=lambda p: goodness(criterion, p.value))]
        notes.append(f"no configuration tried met {criterion.spec} on the search subset; "
                     "the closest one is reported")
    plain_float = build_session(model.model, SessionConfig.for_float(threads))

    def default_timer(q: QdqModel, f: Mapping[str, np.ndarray]) -> PairTiming:
        native_session = build_session(q.model, SessionConfig.for_native(precision, threads))
        return time_pair(plain_float, native_session, f, budget)

    time_it = timer or default_timer
    Confirmed = tuple[ParetoPoint, Evaluation | None, Verdict | None, tuple[PairTiming, ...]]
    answer: Confirmed | None = None
    slower: Confirmed | None = None  # met the criterion, but ran slower than float
    closest: Confirmed | None = None  # did not meet it on the full data
    confirmations: list[Evaluation] = []
    for point in candidates[:MAX_CONFIRMATIONS]:
        results = search.results(point.config)
        if not results:
            answer = (point, None, None, ())
            break
        label = f"confirming {point.label} on the full data"
        ev = yield from search.confirm(results, confirm_limit, batch_size, label)
        confirmations.append(ev)
        v = criterion.check(ev)
        if not v.passed:
            closest = closest or (point, ev, v, ())
            notes.append(f"{point.label} met {criterion.spec} on {ref.n_samples} samples but "
                         f"not on {ev.n_samples} ({v.text})")
            continue
        yield Progress(0, 0, time.perf_counter() - start, None,
                       f"timing {point.label} against float")
        qdq = build_qdq(model, results)
        timed = tuple(time_it(qdq, f) for f in all_feeds)
        if not any(is_slower(t.speedup) for t in timed):
            answer = (point, ev, v, timed)
            break
        slower = slower or (point, ev, v, timed)
        ran = ", ".join(f"{t.speedup:.2f}× at batch {b}"
                        for b, t in zip(speed_batches, timed, strict=True))
        notes.append(f"{point.label} meets {criterion.spec} but ran {ran} against float")
    if answer is None and slower is not None and float_level is not None:
        # Nothing quantized that meets the criterion beat float: float itself is fastest.
        all_float = dict.fromkeys(names, float_level)
        point = yield from run(all_float, "every layer float (faster than any tried)")
        answer = (point, None, None, ())
        notes.append("no quantized configuration confirmed is faster than float at batch "
                     f"{', '.join(map(str, speed_batches))}: the fastest is the float model itself")
    chosen, evaluation, verdict, measured = (
        answer or slower or closest or (candidates[0], None, None, ())
    )

    passed = verdict.passed if verdict is not None else chosen.passed
    if evaluation is None and not search.results(chosen.config):
        notes.append("the answer keeps every layer float: it is the float model itself")
    final = {n: level_names.index(chosen.assignment[n]) for n in names}
    choices = tuple(
        LayerChoice(name=n, node_name=layer.node_name, module_path=module_path(layer),
                    op_type=layer.op_type, depth=layer.depth,
                    tensors=tuple(t for t, _ in tensors), precision=level_names[final[n]],
                    changed=final[n] != 0)
        for n, (layer, tensors) in search.layers.items()
    )  # fmt: skip
    if trials.count >= trial_budget:
        notes.append(f"the search stopped after its budget of {trial_budget} trials")
    if evaluation is not None and evaluation.mode is RunMode.SIMULATION:
        notes.append("the confirmation ran in the simulation")
    if evaluation is not None:
        notes.extend(evaluation.notes)
    notes.extend(report.notes)
    return MixedResult(
        criterion=criterion, objective=Objective.FASTEST, allowed=levels, choices=choices,
        config=chosen.config, results=tuple(search.results(chosen.config)),
        evaluation=evaluation, verdict=verdict, passed=passed, chosen=chosen,
        points=tuple(search.points), sensitivity=report,
        float_size_bytes=report.float_size_bytes, search_samples=ref.n_samples,
        elapsed_s=time.perf_counter() - start, notes=tuple(dict.fromkeys(notes)),
        confirmations=tuple(confirmations), speed_table=speeds,
        timings=tuple(zip(speed_batches, measured, strict=False)),
    )  # fmt: skip

