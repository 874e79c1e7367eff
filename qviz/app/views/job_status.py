"""The status bar's progress bar, ETA and Cancel button for the running foreground job."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar

from qviz.app.controllers.jobs import JobController, eta_text
from qviz.core.progress import Progress


class JobStatus:
    """Adds its widgets to `bar` and follows `jobs` (hidden while nothing runs)."""

    def __init__(self, bar: QStatusBar, jobs: JobController) -> None:
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(240)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setToolTip("Samples done so far")
        self.eta_label = QLabel()
        self.eta_label.setToolTip("Time spent and estimated time left")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run at the end of the current batch (Esc)")
        self.cancel_button.clicked.connect(jobs.cancel)
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            bar.addPermanentWidget(w)
            w.hide()
        jobs.started.connect(self._on_started)
        jobs.progressed.connect(self._on_progress)
        jobs.busyChanged.connect(self._on_busy)

    def _on_started(self, label: str) -> None:
        self.progress_bar.setRange(0, 0)  # busy indicator until the first progress report
        self.progress_bar.setFormat(label)
        self.eta_label.setText("")

    def _on_progress(self, p: Progress) -> None:
        if p.total <= 0:
            return
        self.progress_bar.setRange(0, p.total)
        self.progress_bar.setValue(p.done)
        self.progress_bar.setFormat("%v / %m samples")
        self.eta_label.setText(eta_text(p))

    def _on_busy(self, busy: bool) -> None:
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            w.setVisible(busy)
