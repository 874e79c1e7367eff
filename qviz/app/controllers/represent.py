"""Statistics of the evaluation data, collected in the background after each calibration, so
the views can say whether the calibration data represents it."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.document.document import Document
from qviz.core.document.jobs import collect_eval_stats
from qviz.core.stats.collect import CalibrationStats

BATCH_SIZE = 64


class EvalStatsController(QObject):
    """Collects the evaluation data's statistics whenever calibration or the data changes."""

    collected = Signal()

    def __init__(self, doc: Document, reporter: ErrorReporter, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.reporter = reporter
        self.runner = BackgroundRunner("evaluation statistics", self)
        self.runner.failed.connect(lambda exc: reporter.report(exc, "Evaluation statistics"))
        doc.events.stats.connect(self.restart)
        doc.events.data.connect(self.restart)
        doc.events.model.connect(self.runner.discard)

    def restart(self) -> None:
        doc = self.doc
        model, path = doc.model, doc.evaluation_path
        if model is None or doc.stats is None or path is None:
            self.runner.discard()
            return
        if doc.eval_data_path is None and doc.holdout is None:
            self.runner.discard()  # evaluated on the calibration data: nothing to compare
            return
        holdout = doc.evaluation_holdout
        self.runner.start(
            lambda should_stop: collect_eval_stats(model, path, holdout, BATCH_SIZE, should_stop),
            "Evaluation statistics",
            self._accept,
        )

    def _accept(self, stats: CalibrationStats) -> None:
        with self.reporter.guard("Evaluation statistics"):
            self.doc.set_eval_stats(stats)
            summary = self.doc.summary()
            flagged = summary.unrepresentative or ()
            if flagged:
                self.reporter.status(
                    f"{len(flagged)} tensor{'s' if len(flagged) != 1 else ''} see values in "
                    f"evaluation that calibration did not: see the Eval clipped column"
                )
            self.collected.emit()

    @property
    def is_busy(self) -> bool:
        return self.runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads()

    def shutdown(self, timeout_s: float) -> bool:
        return self.runner.shutdown(timeout_s)
