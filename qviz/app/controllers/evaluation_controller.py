"""Keeps the model-level numbers live: a debounced re-evaluation on a subset after every change,
and the full evaluation one click away.

Nothing here draws. The controller takes frozen inputs from the document
(`Document.measure_inputs`), runs the core's `evaluation_job` on a worker and hands the
outcome back to the document (`accept_evaluation`), which keeps it only if it still describes
the current settings (its revision).

* Live: after calibration and after any change of settings or data, a debounced call (a burst
  of edits costs one run) evaluates the first `LIVE_LIMIT` samples in simulation: quick and
  deterministic. A new run supersedes the previous one.
* Full: every sample with ONNX Runtime's fused INT8 kernels, the fusion report and latency,
  as a foreground job (status bar progress, Esc cancels). A change of settings while it runs
  cancels it: its numbers would describe settings no longer shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import partial

from PySide6.QtCore import QObject, Signal
from superqt.utils import qdebounced

from qviz.app.controllers.jobs import JobController, JobKind
from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.compute.fallback import BackendHolder, run_with
from qviz.core.document.document import Document
from qviz.core.document.jobs import EvaluationOutcome, evaluation_job
from qviz.core.errors import QvizError, first_line

LIVE_LIMIT = 256
DEBOUNCE_MS = 400
BATCH_SIZE = 64
FULL_EVALUATION_LABEL = "Evaluating (every sample, native INT8)"


class LiveState(Enum):
    IDLE = "idle"              # the numbers shown are for the current settings (or none yet)
    PENDING = "pending"        # the settings changed; a run will deliver (or Ctrl+R is needed)
    UNAVAILABLE = "unavailable"  # nothing to evaluate yet (no model, statistics or data)
    PROBLEM = "problem"        # the live run failed for a reason the user can fix


@dataclass(frozen=True)
class LiveStatus:
    state: LiveState
    text: str = ""


class EvaluationController(QObject):
    """Live and full evaluations of one document (see the module docstring)."""

    evaluated = Signal(EvaluationOutcome)   # an outcome the document kept
    dropped = Signal(int)                   # the revision of an outcome computed too late
    statusChanged = Signal(LiveStatus)

    def __init__(
        self,
        doc: Document,
        jobs: JobController,
        reporter: ErrorReporter,
        parent: QObject | None = None,
        *,
        live_limit: int = LIVE_LIMIT,
        debounce_ms: int = DEBOUNCE_MS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__(parent)
        self.doc = doc
        self.jobs = jobs
        self.reporter = reporter
        self.live_limit = live_limit
        self.batch_size = batch_size
        #: Where the full evaluation runs (Run ▸ Compute Backend…); None: here.
        self.compute: BackendHolder | None = None
        self.live_enabled = True
        self.status = LiveStatus(LiveState.UNAVAILABLE, "Open a model (Ctrl+O) to evaluate it")
        self.live = BackgroundRunner("live-evaluation", self)
        self.live.failed.connect(self._on_live_failed)
        # The configuration pinned for comparison ("A") is evaluated the same way, after B.
        self.pinned_live = BackgroundRunner("pinned-evaluation", self)
        self.pinned_live.failed.connect(self._on_live_failed)
        self._debounced = qdebounced(self.evaluate_live_now, timeout=debounce_ms, parent=self)
        self._scheduled = False
        self._closed = False
        for event in (doc.events.model, doc.events.stats, doc.events.config, doc.events.data):
            event.connect(self.settings_changed)
        doc.events.pinned.connect(self.evaluate_pinned)
        # B's live run counts as busy until its runner has finished: A's turn comes then (asked
        # for on B's result alone, it was skipped as "pending" and A never got its numbers).
        self.live.finished.connect(self.evaluate_pinned)

    # ----------------------------------------------------------------- state
    @property
    def current(self) -> EvaluationOutcome | None:
        return self.doc.measures.evaluation

    @property
    def is_pending(self) -> bool:
        """A live evaluation is scheduled or running."""
        return self._scheduled or self.live.is_busy

    def _set_status(self, status: LiveStatus) -> None:
        self.status = status
        self.statusChanged.emit(status)

    def unavailable_reason(self) -> str | None:
        try:
            self.doc.measure_inputs("Evaluation")
        except QvizError as exc:
            return str(exc)
        return None

    # ----------------------------------------------------------------- changes
    def settings_changed(self, *_: object) -> None:
        """Anything that may change the numbers happened (the document's events call this)."""
        if self._closed:
            return
        self._cancel_live()
        if self.jobs.kind is JobKind.EVALUATE:
            self.jobs.cancel()  # its numbers would be for settings no longer shown
        reason = self.unavailable_reason()
        if reason is not None:
            self._set_status(LiveStatus(LiveState.UNAVAILABLE, reason))
            return
        if self.live_enabled:
            self._set_status(LiveStatus(
                LiveState.PENDING, f"Updating: simulation, first {self.live_limit} samples…"
            ))
            self._scheduled = True
            self._debounced()
        else:
            self._set_status(LiveStatus(
                LiveState.PENDING, "Settings changed: Evaluate (Ctrl+R) to measure them"
            ))

    def set_live_enabled(self, on: bool) -> None:
        self.live_enabled = on
        if not on:
            self._cancel_live()
        elif self.current is None:
            self.settings_changed()

    def _cancel_live(self) -> None:
        self._scheduled = False
        self._debounced.cancel()
        self.live.discard()

    # ----------------------------------------------------------------- live runs
    def evaluate_live_now(self) -> int | None:
        """Start the live evaluation now (the debounced call lands here); returns the
        revision it evaluates, None when there is nothing to evaluate."""
        self._scheduled = False
        if self._closed:
            return None
        try:
            inputs = self.doc.measure_inputs("Live evaluation")
        except QvizError:
            return None
        limit, batch = self.live_limit, self.batch_size
        self.live.start(
            lambda should_stop: evaluation_job(
                inputs, full=False, limit=limit, batch_size=batch, should_stop=should_stop
            ),
            "Live evaluation",
            self._accept_live,
        )
        return inputs.revision

    def _on_live_failed(self, exc: BaseException) -> None:
        if isinstance(exc, QvizError):  # repeats on every edit: said in the panel, no dialog
            self._set_status(LiveStatus(LiveState.PROBLEM, first_line(exc)))
        else:
            self.reporter.report(exc, "Live evaluation")

    # ----------------------------------------------------------------- full runs
    def evaluate_full(self) -> None:
        """Run ▸ Evaluate: every sample, native INT8 kernels, fusion and latency."""
        with self.reporter.guard("Evaluating"):
            if self.jobs.is_busy:
                self.reporter.status(f"{self.jobs.label} is running: evaluate when it is done")
                return
            inputs = self.doc.measure_inputs("Evaluation")
            batch, holder = self.batch_size, self.compute
            self._cancel_live()
            self.jobs.start(
                JobKind.EVALUATE,
                lambda should_stop: run_with(holder, lambda compute: evaluation_job(
                    inputs, full=True, limit=None, batch_size=batch, should_stop=should_stop,
                    compute=compute,
                )),
                FULL_EVALUATION_LABEL,
                self._accept_full,
            )

    def _accept_live(self, outcome: EvaluationOutcome) -> None:
        self.accept(outcome)
        self.evaluate_pinned()

    def evaluate_pinned(self) -> None:
        """Evaluate the pinned configuration ("A") the way B's numbers on screen were measured
        (live, or full after Run ▸ Evaluate), if A has no such numbers yet and nothing more
        urgent runs."""
        pinned, b = self.doc.pinned, self.current
        full = b is not None and b.full
        if (
            self._closed or pinned is None or self.is_pending or self.pinned_live.is_busy
            or (not full and not self.live_enabled)
            or (pinned.full if full else pinned.live) is not None
        ):
            return
        try:
            inputs = self.doc.measure_inputs("Evaluation", pinned.config)
        except QvizError:
            return
        limit = None if full else self.live_limit
        batch, data_revision = self.batch_size, self.doc.data_revision
        self.pinned_live.start(
            lambda should_stop: evaluation_job(
                inputs, full=full, limit=limit, batch_size=batch, should_stop=should_stop
            ),
            "Pinned evaluation",
            partial(self._accept_pinned, data_revision=data_revision),
        )

    def _accept_pinned(self, outcome: EvaluationOutcome, data_revision: int) -> None:
        self.doc.accept_pinned_evaluation(outcome, data_revision)

    def _accept_full(self, outcome: EvaluationOutcome) -> None:
        if not self.accept(outcome):
            self.reporter.status("Evaluation finished for earlier settings: dropped. Ctrl+R again.")
            return
        verdict = {True: " · PASS", False: " · FAIL", None: ""}[self.doc.measures.passed()]
        self.reporter.status(f"Evaluated on {outcome.label}: {outcome_summary(outcome)}{verdict}")
        self.evaluate_pinned()  # A measured the same way, for the side-by-side

    # ----------------------------------------------------------------- results
    def accept(self, outcome: EvaluationOutcome) -> bool:
        """Hand an outcome to the document; False (and `dropped`) when it was computed for
        settings no longer in force."""
        if not self.doc.accept_evaluation(outcome):
            if outcome.revision != self.doc.revision:
                self.dropped.emit(outcome.revision)
            return False
        self._set_status(LiveStatus(LiveState.IDLE))
        self.evaluated.emit(outcome)
        return True

    # ----------------------------------------------------------------- closing
    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop any scheduled or running live evaluation; wait until its thread is left."""
        self._closed = True
        self._cancel_live()
        clean = self.pinned_live.shutdown(timeout_s)
        return self.live.shutdown(timeout_s) and clean


def outcome_summary(outcome: EvaluationOutcome) -> str:
    """"accuracy 93.10 % float → 93.00 % native INT8 (−0.10 points)" or the output SQNR."""
    from qviz.core.evaluation.evaluate import Metric

    e = outcome.evaluation
    acc_f = e.float_metrics.get(Metric.ACCURACY)
    acc_q = e.quantized_metrics.get(Metric.ACCURACY)
    if acc_f is not None and acc_q is not None:
        drop = e.accuracy_drop
        change = "" if drop is None else f" ({-drop:+.2f} points)".replace("-", "−")
        return f"accuracy {acc_f:.2f} % float → {acc_q:.2f} % native INT8{change}"
    sqnr = e.quantized_metrics.get(Metric.SQNR)
    return "output SQNR —" if sqnr is None else f"output SQNR {sqnr:.2f} dB"
