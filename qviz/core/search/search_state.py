"""The state of one mixed-precision search: every assignment measured, memoised.

Shared by the size-first search (`qviz.core.search.mixed`) and the speed-first one
(`qviz.core.search.fastest`): a configuration is built from an assignment of levels, its
tensors analysed once per setting, measured once on the float reference — by the run's
compute backend (`qviz.core.compute`), the same code wherever it runs — and recorded as a
`ParetoPoint`. With parallel workers, idle ones measure the assignments the search is likely
to ask for next (`prefetch`); the search still takes its decisions one by one in its own
order, so its points are a sequential run's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from qviz.core.calibration.analysis import TensorResult, analyze_tensor, quant_tensors
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.compute.backend import ComputeBackend, LocalBackend, WorkerPool, opened, wait_for
from qviz.core.compute.jobs import (
    EvaluateJob,
    JobDone,
    JobEvent,
    JobFailed,
    MeasureJob,
    WorkContext,
    job_total,
)
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.results import Evaluation
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement
from qviz.core.search.mixed_result import ParetoPoint, criterion_holds, criterion_value
from qviz.core.search.precisions import Precision, assignment_config, layers_owning_tensors
from qviz.core.search.reference import FloatReference
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset

__all__ = ["SearchState", "Trials"]


class SearchState:
    """State of one search: every measured assignment, memoised (nothing is run twice).

    An assignment gives each layer (by display name) a level: an index into ``levels``.
    With `estimate`, each recorded point also carries the latency that function predicts
    for its assignment (the speed objective's per-layer timings). Measurements need the
    workers `open` starts.
    """

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
        estimate: Callable[[Mapping[str, int]], float] | None = None,
    ) -> None:
        self.model, self.stats, self.base, self.levels = model, stats, base, levels
        self.criterion, self.ref = criterion, ref
        self.native, self.precision, self.should_stop = native, precision, should_stop
        self.layers = layers_owning_tensors(model)
        self.points: list[ParetoPoint] = []
        self.by_assignment: dict[tuple[int, ...], ParetoPoint] = {}
        self._analysed: dict[tuple[str, TensorKind, TensorConfig], TensorResult] = {}
        self.estimate = estimate
        self.pool: WorkerPool | None = None
        self.speculate = False
        # Speculative measurements (see `prefetch`): running, and finished but not yet asked
        # for. They become points only when the search asks for them, in its own order.
        self._running: dict[tuple[int, ...], int] = {}
        self._tickets: dict[int, tuple[int, ...]] = {}
        self._ready: dict[tuple[int, ...], Measurement] = {}

    def open(self, compute: ComputeBackend | None, data: Dataset, stack: ExitStack) -> WorkerPool:
        """Start `compute`'s workers (one at a time here when None) on the model, the
        reference (its float pass done) and `data`; `stack` closes them."""
        backend = compute or LocalBackend()
        context = WorkContext(self.model, reference=self.ref, data=data)
        self.pool = stack.enter_context(opened(backend, context, self.should_stop))
        self.speculate = backend.parallel
        return self.pool

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
            latency_ms=None if self.estimate is None else self.estimate(levels),
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

    def other_event(self, event: JobEvent) -> None:
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
        assert self.pool is not None, "open() the search's workers first"
        ticket = self._running.pop(key, None)
        if ticket is None:
            ticket = self.pool.submit(self._job(levels, label))
        else:
            del self._tickets[ticket]
        m = yield from wait_for(
            self.pool, ticket, should_stop=self.should_stop, others=self.other_event
        )
        return self.record(levels, label, m)

    def confirm(
        self, results: Sequence[TensorResult], limit: int | None, batch_size: int, label: str
    ) -> Generator[Progress, None, Evaluation]:
        """A full `evaluate` of one configuration on the workers (the search's answer)."""
        assert self.pool is not None, "open() the search's workers first"
        job = EvaluateJob(
            tuple(results), self.native, self.precision, limit, batch_size, label=label
        )
        clock = ProgressClock(job_total(self.pool.context, job), label)
        gen = wait_for(
            self.pool,
            self.pool.submit(job),
            should_stop=self.should_stop,
            others=self.other_event,
        )
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                evaluation: Evaluation = stop.value
                return evaluation
            yield clock.report(done)


class Trials:
    """Candidates measured one after another under one progress clock: `count` is how many
    were new (a known assignment costs nothing and counts for nothing against the budget)."""

    def __init__(self, search: SearchState, runs: int, what: str) -> None:
        self.search = search
        self.per_run = search.ref.n_samples
        self.clock = ProgressClock(self.per_run * runs, what)
        self.count = 0

    def run(self, levels: Mapping[str, int], label: str) -> Generator[Progress, None, ParetoPoint]:
        before = len(self.search.points)
        gen = self.search.measure(levels, label)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                point: ParetoPoint = stop.value
                break
            at = min(self.count * self.per_run + done, self.clock.total - 1)
            yield self.clock.report(at, label)
        if len(self.search.points) > before:
            self.count += 1
        return point
