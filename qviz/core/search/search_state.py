"""The state of one mixed-precision search: every assignment measured, memoised.

Shared by the size-first search (`qviz.core.search.mixed`) and the speed-first one
(`qviz.core.search.fastest`): a configuration is built from an assignment of levels, its
tensors analysed once per setting, measured once on the float reference, and recorded as a
`ParetoPoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping

from qviz.core.calibration.analysis import TensorResult, analyze_tensor, quant_tensors
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.evaluation.criteria import Criterion
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement, measure
from qviz.core.search.mixed_result import ParetoPoint, criterion_holds, criterion_value
from qviz.core.search.precisions import Precision, assignment_config, layers_owning_tensors
from qviz.core.search.reference import FloatReference
from qviz.core.stats.collect import CalibrationStats

__all__ = ["SearchState"]


class SearchState:
    """State of one search: every measured assignment, memoised (nothing is run twice).

    An assignment gives each layer (by display name) a level: an index into ``levels``.
    With `estimate`, each recorded point also carries the latency that function predicts
    for its assignment (the speed objective's per-layer timings).
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
