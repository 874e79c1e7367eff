"""The document's end-to-end measurements: evaluation, fusion, criteria, sensitivity, mixed.

Each is kept with what it was measured for, so the views can say whether it still describes
the settings on screen: an evaluation for an older revision is no longer *current* (the
last full one stays, greyed, for its fusion report); a sensitivity report is *stale* once the
scales it measured differ from the current ones (compared bit for bit by digest).
"""

from __future__ import annotations

from collections.abc import Sequence

from qviz.core.calibration.analysis import TensorResult
from qviz.core.document.events import DocumentEvents
from qviz.core.document.jobs import EvaluationOutcome, MixedOutcome
from qviz.core.evaluation.criteria import (
    DEFAULT_CRITERIA,
    DEFAULT_CRITERIA_NO_LABELS,
    Criterion,
    Verdict,
    check_all,
    overall,
    parse_criteria,
)
from qviz.core.evaluation.evaluate import Metric
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.fusion import FusionReport
from qviz.core.runtime.speed import SpeedProfile
from qviz.core.search.sensitivity import LayerSensitivity, SensitivityReport, results_digest


class MeasurementState:
    """Held by a `Document`; its changes are announced on the document's events."""

    def __init__(self, events: DocumentEvents) -> None:
        self._events = events
        self._model_sha: str | None = None
        self.evaluation: EvaluationOutcome | None = None  # newest, for the current revision
        self.last_full: EvaluationOutcome | None = None   # newest full one, maybe outdated
        self._revision = 0
        self.criteria_text: str | None = None  # None: the defaults for the data
        self._criteria: tuple[Criterion, ...] | None = None
        self._has_labels = True
        self.sensitivity: SensitivityReport | None = None
        self.sensitivity_stale = False
        self.mixed: MixedOutcome | None = None

    # ----------------------------------------------------------------- invalidation
    def model_changed(self, sha256: str, revision: int) -> None:
        self._model_sha = sha256
        self._revision = revision
        self.evaluation = None
        self.last_full = None
        self._events.evaluation.emit()
        if self.sensitivity is not None and self.sensitivity.model_sha256 != sha256:
            self.sensitivity = None
            self.sensitivity_stale = False
            self._events.sensitivity.emit()
        if self.mixed is not None and self.mixed.result.sensitivity.model_sha256 != sha256:
            # Its configurations name another model's tensors: never apply them here.
            self.mixed = None
            self._events.mixed.emit()

    def invalidate(self, revision: int) -> None:
        """The settings changed: the evaluation shown is for earlier ones."""
        self._revision = revision
        if self.evaluation is not None or self.last_full is not None:
            self.evaluation = None
            self._events.evaluation.emit()

    # ----------------------------------------------------------------- evaluation
    def accept_evaluation(self, outcome: EvaluationOutcome, revision: int) -> bool:
        if outcome.full:
            self.last_full = outcome
        if outcome.revision != revision:
            if outcome.full:
                self._events.evaluation.emit()  # its fusion report is shown, greyed
            return False
        if not outcome.full and self.evaluation is not None and self.evaluation.full:
            return False  # the full evaluation of the same settings says more
        self.evaluation = outcome
        self._has_labels = outcome.evaluation.has_labels
        self._events.evaluation.emit()
        return True

    @property
    def fusion(self) -> FusionReport | None:
        """The last native evaluation's fusion report (see `fusion_current`)."""
        return None if self.last_full is None else self.last_full.evaluation.fusion

    @property
    def fusion_current(self) -> bool:
        return self.last_full is not None and self.last_full.revision == self._revision

    @property
    def speed(self) -> SpeedProfile | None:
        """The last full evaluation's per-layer speed (current as `fusion_current` says)."""
        return None if self.last_full is None else self.last_full.evaluation.speed

    # ----------------------------------------------------------------- criteria
    @property
    def default_criteria_text(self) -> str:
        return DEFAULT_CRITERIA if self._has_labels else DEFAULT_CRITERIA_NO_LABELS

    @property
    def effective_criteria_text(self) -> str:
        return self.criteria_text if self.criteria_text is not None else self.default_criteria_text

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        if self.criteria_text is not None and self._criteria is not None:
            return self._criteria
        return parse_criteria(self.effective_criteria_text)

    def set_criteria_text(self, text: str | None) -> tuple[Criterion, ...]:
        if text is None:
            self.criteria_text, self._criteria = None, None
        else:
            criteria = parse_criteria(text)  # QvizError: the criteria in force stay
            self.criteria_text, self._criteria = text, criteria
        self._events.criteria.emit()
        return self.criteria

    def verdicts(self) -> tuple[Verdict, ...]:
        """The criteria judged on the current evaluation (empty without one)."""
        if self.evaluation is None:
            return ()
        return check_all(self.criteria, self.evaluation.evaluation)

    def passed(self) -> bool | None:
        return overall(self.verdicts())

    # ----------------------------------------------------------------- sensitivity
    def accept_sensitivity(self, report: object, model: LoadedModel | None) -> bool:
        if not isinstance(report, SensitivityReport):
            raise TypeError(f"not a SensitivityReport: {type(report).__name__}")
        if model is None or report.model_sha256 != model.sha256:
            return False  # measured on a model that is no longer open
        self.sensitivity = report
        self.sensitivity_stale = False
        self._events.sensitivity.emit()
        return True

    def set_sensitivity_metric(self, metric: Metric) -> None:
        """Re-rank the report by another metric (nothing is re-run); QvizError when the
        report cannot be read in that metric (e.g. accuracy without labels)."""
        if self.sensitivity is None:
            return
        self.sensitivity = self.sensitivity.with_metric(metric)
        self._events.sensitivity.emit()

    def check_sensitivity(self, results: Sequence[TensorResult] | None) -> None:
        """Whether the report still describes the settings: the same scales, bit for bit.
        `results` are every quantized tensor's (None while some are not measured yet: the
        staleness stays as it was until it can be told)."""
        report = self.sensitivity
        if report is None or results is None:
            return
        stale = report.model_sha256 != self._model_sha or (
            results_digest(results) != report.results_digest
        )
        if stale != self.sensitivity_stale:
            self.sensitivity_stale = stale
            self._events.sensitivity.emit()

    def sensitivity_row(self, layer: str) -> LayerSensitivity | None:
        if self.sensitivity is None:
            return None
        try:
            return self.sensitivity.layer(layer)
        except KeyError:
            return None

    # ----------------------------------------------------------------- mixed precision
    def accept_mixed(self, outcome: MixedOutcome, model: LoadedModel | None) -> bool:
        if model is None or outcome.result.sensitivity.model_sha256 != model.sha256:
            return False
        self.mixed = outcome
        self._events.mixed.emit()
        return True

