"""Run ▸ Sensitivity and Run ▸ Mixed precision: the two searches, in the background.

The core's `sensitivity` generator runs on one runner, `mixed_precision` on another, each
from frozen inputs the document gives (`measure_inputs`). Reports are cached on disk
(`SensitivityCache`: the same model, scales and samples never run twice) and handed to the
document, which keeps them (and saves them with the session); the table's columns, the chart
and the mixed-precision dialog draw them from there. Applying a mixed-precision point is a
change of the document's configuration, undoable like any other.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.compute.fallback import BackendHolder, run_with
from qviz.core.document.document import Document
from qviz.core.document.jobs import MixedOutcome, MixedRequest, mixed_job, sensitivity_job
from qviz.core.errors import QvizError
from qviz.core.evaluation.display import fmt_metric_change
from qviz.core.evaluation.evaluate import EvaluationCancelled, Metric
from qviz.core.progress import Progress
from qviz.core.search.mixed import MixedResult, ParetoPoint
from qviz.core.search.sensitivity import SensitivityReport
from qviz.core.search.sensitivity_cache import SensitivityCache

log = logging.getLogger(__name__)


class SensitivityController(QObject):
    """Sensitivity and mixed precision for one document."""

    sensitivityProgress = Signal(Progress)
    sensitivityFinished = Signal(SensitivityReport)  # now the document's
    sensitivityCancelled = Signal()
    sensitivityBusy = Signal(bool)
    mixedProgress = Signal(Progress)
    mixedFinished = Signal(MixedResult)
    mixedCancelled = Signal()
    mixedFailed = Signal(str)
    mixedBusy = Signal(bool)
    configApplied = Signal(ParetoPoint)  # a point whose configuration the document now has

    def __init__(
        self, doc: Document, reporter: ErrorReporter, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.doc = doc
        self.reporter = reporter
        #: Where reports are cached (None: no cache). Tests point it at a temporary folder.
        self.cache: SensitivityCache | None = SensitivityCache()
        self.metric: Metric | None = None  # None: accuracy with labels, else output SQNR
        #: Where the runs go (Run ▸ Compute Backend…); None: here, one at a time.
        self.compute: BackendHolder | None = None
        self.runner = BackgroundRunner("sensitivity", self)
        self.mixed_runner = BackgroundRunner("mixed precision", self)
        for runner, progress, cancelled, busy in (
            (self.runner, self.sensitivityProgress, self.sensitivityCancelled,
             self.sensitivityBusy),
            (self.mixed_runner, self.mixedProgress, self.mixedCancelled, self.mixedBusy),
        ):
            runner.progressed.connect(
                lambda p, signal=progress: signal.emit(p) if isinstance(p, Progress) else None
            )
            runner.cancelled.connect(cancelled)
            runner.busyChanged.connect(busy)
        self.runner.failed.connect(lambda exc: self._on_failed(exc, "Sensitivity"))
        self.mixed_runner.failed.connect(lambda exc: self._on_failed(exc, "Mixed precision"))
        doc.events.model.connect(self._on_model)

    @property
    def busy(self) -> bool:
        return self.runner.is_busy or self.mixed_runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads() + self.mixed_runner.live_threads()

    # ----------------------------------------------------------------- sensitivity
    def run_sensitivity(self, limit: int) -> bool:
        """Measure the current settings' sensitivity on `limit` samples (cached)."""
        try:
            inputs = self.doc.measure_inputs("Sensitivity")
        except QvizError as exc:
            self.reporter.report(exc, "Sensitivity")
            return False
        metric, cache, holder = self.metric, self.cache, self.compute
        self.runner.start(
            lambda should_stop: run_with(holder, lambda compute: sensitivity_job(
                inputs, limit=limit, metric=metric, cache=cache, should_stop=should_stop,
                compute=compute,
            )),
            "Sensitivity",
            self._on_sensitivity_done,
        )
        self.reporter.status(
            f"Sensitivity: measuring every layer on {limit} samples of "
            f"{inputs.data_path.name}…"
        )
        return True

    def _on_sensitivity_done(self, report: SensitivityReport) -> None:
        if not self.doc.accept_sensitivity(report):
            return  # measured on a model that is no longer open
        top = report.ranking()[0] if report.layers else None
        how = "from the cache" if report.cached else f"{report.n_runs} runs"
        m = report.metric
        most = (
            f"; most sensitive: {top.name} (Δ {fmt_metric_change(top.drop, m)}, recovery "
            f"{fmt_metric_change(top.recovery, m)})"
            if top is not None else ""
        )
        self.reporter.status(f"Sensitivity of {len(report.layers)} layers ({how}){most}")
        self.sensitivityFinished.emit(report)

    def set_metric(self, metric: Metric) -> None:
        """Re-rank the report by another metric (nothing is re-run)."""
        self.metric = metric
        with self.reporter.guard("Sensitivity"):
            self.doc.measures.set_sensitivity_metric(metric)

    # ----------------------------------------------------------------- mixed precision
    def run_mixed(self, request: MixedRequest) -> bool:
        """Search for a mixed configuration meeting the request's criterion, in the
        background."""
        try:
            inputs = self.doc.measure_inputs("Mixed precision")
        except QvizError as exc:
            self.reporter.report(exc, "Mixed precision")
            self.mixedFailed.emit(str(exc))
            return False
        cache, holder = self.cache, self.compute
        self.mixed_runner.start(
            lambda should_stop: run_with(holder, lambda compute: mixed_job(
                inputs, request, cache=cache, should_stop=should_stop, compute=compute
            )),
            "Mixed precision",
            self._on_mixed_done,
        )
        self.reporter.status(
            f"Mixed precision: searching for {request.criterion.spec} with "
            f"{request.allowed_text}…"
        )
        return True

    def _on_mixed_done(self, outcome: MixedOutcome) -> None:
        if not self.doc.accept_mixed(outcome):
            return
        result = outcome.result
        verdict = result.verdict.text if result.verdict is not None else "float model"
        self.reporter.status(f"Mixed precision: {verdict}; {len(result.changed)} layers changed")
        self.mixedFinished.emit(result)

    def apply_point(self, point: ParetoPoint) -> None:
        """Make a point's configuration the document's (one undo step)."""
        with self.reporter.guard("Applying the configuration"):
            changed = self.doc.set_config(
                point.config, f"mixed-precision point #{point.index} ({point.label})"
            )
            self.reporter.status(
                f"Applied mixed-precision point #{point.index} ({point.label}): "
                f"{len(changed)} tensors changed"
            )
            self.configApplied.emit(point)

    # ----------------------------------------------------------------- common
    def _on_failed(self, exc: BaseException, context: str) -> None:
        if isinstance(exc, EvaluationCancelled):  # stopped inside a batch: a cancellation
            (self.sensitivityCancelled if context == "Sensitivity" else self.mixedCancelled).emit()
            return
        message = self.reporter.report(exc, context)
        if context == "Mixed precision":
            self.mixedFailed.emit(message)

    def _on_model(self) -> None:
        # Runs started on the previous model must not land on this one.
        self.runner.discard()
        self.mixed_runner.discard()

    def shutdown(self, timeout_s: float) -> bool:
        """Stop both runs and wait for their threads (bounded)."""
        try:
            clean = self.runner.shutdown(timeout_s)
            clean = self.mixed_runner.shutdown(timeout_s) and clean
        except Exception:  # closing must always succeed
            log.exception("error while stopping sensitivity runs")
            return False
        return clean
