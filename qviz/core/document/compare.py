"""A/B comparison: a configuration pinned as "A" while the user keeps exploring as "B".

The pinned configuration is a frozen snapshot; its per-tensor results are computed on demand
(and found among the results kept for undo when they were measured before), its end-to-end
evaluation is kept while the model, statistics and evaluation data stay the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from qviz.core.calibration.analysis import TensorKey, TensorResult, analyze_tensor
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.document.events import DocumentEvents
from qviz.core.document.history import History
from qviz.core.document.jobs import AnalysisJob, AnalysisOutcome, EvaluationOutcome
from qviz.core.document.measures import MeasurementState
from qviz.core.document.results import ResultStore
from qviz.core.document.tensors import TensorIndex
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel
from qviz.core.stats.collect import CalibrationStats


@dataclass(frozen=True)
class Pinned:
    """The configuration the current one is compared with, and its evaluations: a live one
    (simulation, the first samples) and a full one (native, every sample), so that A is
    always compared with B measured the same way."""

    config: QuantConfig
    label: str                      # what the user pinned, e.g. the history step's name
    data_revision: int              # the model/statistics/data it was measured against
    live: EvaluationOutcome | None = None
    full: EvaluationOutcome | None = None

    @classmethod
    def of(
        cls, config: QuantConfig, label: str, data_revision: int,
        outcome: EvaluationOutcome | None,
    ) -> Pinned:
        pinned = cls(config, label, data_revision)
        return pinned if outcome is None else pinned.with_evaluation(outcome)

    @property
    def evaluation(self) -> EvaluationOutcome | None:
        """A's most complete evaluation."""
        return self.full or self.live

    def like(self, outcome: EvaluationOutcome) -> EvaluationOutcome | None:
        """A's evaluation measured as ``outcome`` (B's) was, if A has one."""
        return self.full if outcome.full else self.live

    def with_evaluation(self, outcome: EvaluationOutcome) -> Pinned:
        if outcome.full:
            return replace(self, full=outcome)
        return replace(self, live=outcome)


class PinnedComparison:
    """The document's A/B comparison (a part of `Document`, kept apart by concern): pin the
    configuration, swap, and A's results and evaluation."""

    events: DocumentEvents
    model: LoadedModel | None
    stats: CalibrationStats | None
    history: History[QuantConfig, TensorKey]
    measures: MeasurementState
    pinned: Pinned | None
    data_revision: int
    _index: TensorIndex
    _results: ResultStore

    # Provided by `Document`.
    @property
    def config(self) -> QuantConfig:
        raise NotImplementedError

    def config_for(self, key: TensorKey) -> TensorConfig:
        raise NotImplementedError

    def can_analyze(self, key: TensorKey) -> bool:
        raise NotImplementedError

    def analyze(self, key: TensorKey) -> TensorResult | None:
        raise NotImplementedError

    def result(self, key: TensorKey) -> TensorResult | None:
        raise NotImplementedError

    def set_config(
        self, config: QuantConfig, label: str = "Configuration", focus: TensorKey | None = None
    ) -> list[TensorKey]:
        raise NotImplementedError

    def pin(self, label: str | None = None) -> None:
        """Pin the current configuration as "A"; exploring goes on as "B"."""
        evaluation = self.measures.evaluation
        if evaluation is not None and evaluation.config != self.config:
            evaluation = None
        self.pinned = Pinned.of(
            self.config, label or self._step_name(), self.data_revision, evaluation
        )
        self.events.pinned.emit()

    def _step_name(self) -> str:
        """The current configuration as the history names it ("as opened" at the start)."""
        return self.history.current.label if self.history.index else "settings as opened"

    def unpin(self) -> None:
        if self.pinned is not None:
            self.pinned = None
            self.events.pinned.emit()

    def swap_pinned(self) -> None:
        """B becomes A and A becomes the current configuration (one undo step)."""
        pinned = self.pinned
        if pinned is None:
            raise QvizError("nothing is pinned: pin a configuration first (Edit ▸ Pin as A)")
        current = self.measures.evaluation
        keep = current if current is not None and current.config == self.config else None
        self.pinned = Pinned.of(self.config, self._step_name(), self.data_revision, keep)
        self.set_config(pinned.config, f"swap A and B (now: {pinned.label})")
        self.events.pinned.emit()

    def pinned_result(self, key: TensorKey, compute: bool = True) -> TensorResult | None:
        """The tensor's result under the pinned configuration (None without one, when it
        cannot be measured, or when not measured yet and `compute` is False)."""
        if self.pinned is None or self.model is None or not self.can_analyze(key):
            return None
        cfg = self.pinned.config.for_tensor(key.name, key.kind)
        if not cfg.quantize:
            return None
        if cfg == self.config_for(key):
            return self.analyze(key) if compute else self.result(key)
        found = self._results.earlier(key, cfg)
        if found is not None or not compute:
            return found
        try:
            result = analyze_tensor(self.model, self.stats, self._index.tensor(key), cfg)
        except QvizError:
            return None
        self._results.keep(key, result)
        return result

    def pinned_jobs(self) -> list[AnalysisJob]:
        """Jobs measuring the pinned configuration where it differs and is not known yet."""
        if self.pinned is None:
            return []
        jobs = []
        for t in self._index.tensors:
            cfg = self.pinned.config.for_tensor(t.name, t.kind)
            if (cfg.quantize and cfg != self.config_for(t.key) and self.can_analyze(t.key)
                    and self._results.earlier(t.key, cfg) is None):
                jobs.append(AnalysisJob(t.key, t, cfg))
        return jobs

    def accept_pinned_results(self, outcomes: Iterable[AnalysisOutcome]) -> None:
        kept = []
        for key, outcome in outcomes:
            if isinstance(outcome, TensorResult) and key in self._index:
                self._results.keep(key, outcome)
                kept.append(key)
        if kept:
            self.events.pinned_results.emit(tuple(kept))

    def accept_pinned_evaluation(self, outcome: EvaluationOutcome, data_revision: int) -> bool:
        """An evaluation of the pinned configuration; False when it no longer applies."""
        pinned = self.pinned
        if pinned is None or outcome.config != pinned.config:
            return False
        if data_revision != self.data_revision:
            return False
        self.pinned = pinned.with_evaluation(outcome)
        self.events.pinned.emit()
        return True

    def _pinned_measures_changed(self) -> None:
        if self.pinned is not None and self.pinned.evaluation is not None:
            self.pinned = Pinned(self.pinned.config, self.pinned.label, self.data_revision)
            self.events.pinned.emit()

