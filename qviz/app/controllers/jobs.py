"""The window's foreground jobs: one at a time, with progress, ETA and Cancel in the status bar.

Opening a model, calibrating, reading statistics and the full evaluation run here; starting
one supersedes the one running (its results are dropped). What a job is (`JobKind`) is kept
as a value, never read back from the label shown to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from PySide6.QtCore import QObject, Signal

from qviz.app.controllers.workers import BackgroundRunner, JobFactory
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.progress import Progress, format_seconds

T = TypeVar("T")


class JobKind(Enum):
    LOAD = "load"
    CALIBRATE = "calibrate"
    READ_STATS = "read statistics"
    EVALUATE = "evaluate"


class JobController(QObject):
    """Runs one foreground job; reports its failure; says in the status line how it goes."""

    started = Signal(str)            # the label
    progressed = Signal(Progress)
    busyChanged = Signal(bool)
    cancelled = Signal(JobKind)      # what was cancelled

    def __init__(self, reporter: ErrorReporter, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.reporter = reporter
        self.runner = BackgroundRunner("jobs", self)
        self.kind: JobKind | None = None
        self.label = ""
        self._failed: Callable[[BaseException], None] | None = None
        self.runner.progressed.connect(self._on_progress)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.busyChanged.connect(self._on_busy)

    @property
    def is_busy(self) -> bool:
        return self.runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads()

    def start(
        self,
        kind: JobKind,
        make: JobFactory[T],
        label: str,
        done: Callable[[T], None],
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run `make`; `done(value)` on success (its errors are reported), `failed(exc)`
        after the error was reported."""
        self.kind, self.label, self._failed = kind, label, failed

        def finish(value: T) -> None:
            with self.reporter.guard(label):
                done(value)

        self.runner.start(make, label, finish)
        self.started.emit(label)
        self.reporter.status(f"{label}…")

    def cancel(self) -> bool:
        """Esc / Cancel: stop the running job at its next batch boundary."""
        if self.runner.cancel():
            self.reporter.status(f"{self.label}: cancelling at the end of this batch…")
            return True
        return False

    def shutdown(self, timeout_s: float) -> bool:
        return self.runner.shutdown(timeout_s)

    def _on_progress(self, item: object) -> None:
        if not isinstance(item, Progress):
            return
        self.progressed.emit(item)
        if item.total <= 0:  # a step with nothing to count yet ("reading data.npz")
            self.reporter.status(f"{self.label}: {item.message}…")
        else:
            self.reporter.status(f"{self.label}: {item.describe()}")

    def _on_failed(self, exc: BaseException) -> None:
        failed, self._failed = self._failed, None
        self.reporter.report(exc, self.label)
        if failed is not None:
            failed(exc)

    def _on_cancelled(self) -> None:
        kind = self.kind
        self.reporter.status(f"{self.label}: cancelled")
        if kind is not None:
            self.cancelled.emit(kind)

    def _on_busy(self, busy: bool) -> None:
        if not busy:
            self.kind = None
        self.busyChanged.emit(busy)


def eta_text(p: Progress) -> str:
    eta = "" if p.remaining_s is None else f", {format_seconds(p.remaining_s)} left"
    return f"{format_seconds(p.elapsed_s)} elapsed{eta}"
