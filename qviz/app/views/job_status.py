"""The status bar's progress: the running foreground job (bar, time spent and left, Cancel),
and the tensors being measured in the background (count and time left).

A foreground step that has nothing to count yet (reading a file, loading a model) shows its
time spent, ticking, so a long one is never a frozen bar.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar

from qviz.app.controllers.jobs import JobController, eta_text
from qviz.core.progress import Progress, format_seconds

# Background measuring shows once it has run this long (a small model's second of work
# would only flicker), and the ticking elapsed time of an uncounted step refreshes this often.
BACKGROUND_SHOW_S = 1.0
TICK_MS = 250


class JobStatus:
    """Adds its widgets to `bar` and follows `jobs` (hidden while nothing runs)."""

    def __init__(self, bar: QStatusBar, jobs: JobController) -> None:
        self.background_label = QLabel()
        self.background_label.setToolTip(
            "Tensors being measured for the current settings in the background: the table "
            "and its groups fill in as they come"
        )
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(240)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setToolTip("Samples done so far")
        self.eta_label = QLabel()
        self.eta_label.setToolTip("Time spent and estimated time left")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run at the end of the current batch (Esc)")
        self.cancel_button.clicked.connect(jobs.cancel)
        bar.addPermanentWidget(self.background_label)
        self.background_label.hide()
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            bar.addPermanentWidget(w)
            w.hide()
        self._started = 0.0
        self._counted = False
        self._ticker = QTimer(bar)
        self._ticker.setInterval(TICK_MS)
        self._ticker.timeout.connect(self._tick)
        jobs.started.connect(self._on_started)
        jobs.progressed.connect(self._on_progress)
        jobs.busyChanged.connect(self._on_busy)

    # ----------------------------------------------------------------- foreground job
    def _on_started(self, label: str) -> None:
        self.progress_bar.setRange(0, 0)  # busy indicator until the first progress report
        self.progress_bar.setFormat(label)
        self.eta_label.setText("")
        self._started = time.perf_counter()
        self._counted = False
        self._ticker.start()

    def _on_progress(self, p: Progress) -> None:
        if p.total <= 0:
            self._counted = False  # a step with nothing to count: the time ticks
            self._started = time.perf_counter() - p.elapsed_s
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat(p.message or self.progress_bar.format())
            return
        self._counted = True
        self.progress_bar.setRange(0, p.total)
        self.progress_bar.setValue(p.done)
        self.progress_bar.setFormat(f"%v / %m {p.unit}".rstrip())
        self.eta_label.setText(eta_text(p))

    def _tick(self) -> None:
        if not self._counted:
            elapsed = time.perf_counter() - self._started
            self.eta_label.setText(f"{format_seconds(elapsed)} elapsed")

    def _on_busy(self, busy: bool) -> None:
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            w.setVisible(busy)
        if not busy:
            self._ticker.stop()

    # ----------------------------------------------------------------- background measuring
    def show_background(self, p: Progress) -> None:
        """Tensors measured in the background so far (hidden again when all are)."""
        if p.done >= p.total or (p.elapsed_s < BACKGROUND_SHOW_S and not self.background_label
                                 .isVisible()):
            if p.done >= p.total:
                self.hide_background()
            return
        left = "" if p.remaining_s is None else f", {format_seconds(p.remaining_s)} left"
        self.background_label.setText(f"Measuring tensors {p.done}/{p.total}{left}")
        self.background_label.show()

    def hide_background(self) -> None:
        self.background_label.hide()
