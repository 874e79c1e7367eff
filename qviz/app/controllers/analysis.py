"""Measures every tensor in the background whenever some lack a result for their settings.

The layer view measures what it shows on the GUI thread at once (milliseconds); this fills in
the rest (the table, the summary), in batches, after a model, statistics or settings change.
While a configuration is pinned for comparison ("A"), its results are measured the same way
on a second runner, so the table can show the change from A.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.document.document import Document
from qviz.core.document.jobs import AnalysisBatch, analyze_in_batches
from qviz.core.progress import Progress


class AnalysisController(QObject):
    """Keeps every tensor of the document measured."""

    finished = Signal()   # every tensor measured for the current settings
    #: How far measuring the current settings has come (done = total at the end); the
    #: status bar shows it with the time left.
    progressed = Signal(Progress)
    idle = Signal()       # nothing being measured any more (done, superseded or failed)

    def __init__(self, doc: Document, reporter: ErrorReporter, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.runner = BackgroundRunner("analysis", self)
        self.runner.progressed.connect(self._on_batch)
        self.runner.succeeded.connect(self._on_done)
        self.runner.failed.connect(lambda exc: reporter.report(exc, "Measuring tensors"))
        self.runner.busyChanged.connect(lambda busy: None if busy else self.idle.emit())
        self.pinned_runner = BackgroundRunner("pinned analysis", self)
        self.pinned_runner.progressed.connect(self._on_pinned_batch)
        self.pinned_runner.failed.connect(lambda exc: reporter.report(exc, "Measuring A"))
        doc.events.model.connect(self.restart)
        doc.events.stats.connect(self.restart)
        doc.events.config.connect(self.restart)
        doc.events.pinned.connect(self.restart_pinned)

    @property
    def is_busy(self) -> bool:
        return self.runner.is_busy or self.pinned_runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads() + self.pinned_runner.live_threads()

    def restart(self, *_: object) -> None:
        """Measure, in the background, every tensor that has no result for its settings."""
        model, stats = self.doc.model, self.doc.stats
        jobs = self.doc.analyze_jobs()
        if model is None or not jobs:
            self.runner.discard()
            self.restart_pinned()
            return
        self.runner.start(
            lambda should_stop: analyze_in_batches(model, stats, jobs),
            f"Measuring {len(jobs)} tensors",
        )

    def restart_pinned(self, *_: object) -> None:
        """The pinned configuration's results, after the current ones (they come first)."""
        model, stats = self.doc.model, self.doc.stats
        jobs = self.doc.pinned_jobs()
        if model is None or not jobs or self.runner.is_busy:
            self.pinned_runner.discard()
            return
        self.pinned_runner.start(
            lambda should_stop: analyze_in_batches(model, stats, jobs),
            f"Measuring {len(jobs)} tensors of A",
        )

    def _on_batch(self, batch: object) -> None:
        assert isinstance(batch, AnalysisBatch)  # what analyze_in_batches yields
        self.doc.accept_results(batch.outcomes)
        self.progressed.emit(batch.progress)

    def _on_pinned_batch(self, batch: object) -> None:
        assert isinstance(batch, AnalysisBatch)
        self.doc.accept_pinned_results(batch.outcomes)

    def _on_done(self, _count: object) -> None:
        self.finished.emit()
        self.restart_pinned()

    def shutdown(self, timeout_s: float) -> bool:
        clean = self.pinned_runner.shutdown(timeout_s)
        return self.runner.shutdown(timeout_s) and clean
