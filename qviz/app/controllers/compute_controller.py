"""Where the app's long measurements run: Run ▸ Compute Backend… chooses it, QSettings keeps
it, and sensitivity, mixed precision and the full evaluation use it.

The backend is connected by the first job that needs it, on that job's thread (starting or
joining Ray takes seconds); when it cannot be reached the job runs locally and the reporter
says why, once per failure. The live evaluation always runs locally: it is small, and it
must answer within a second of an edit.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, Signal

from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.compute.choice import BackendChoice
from qviz.core.compute.fallback import BackendHolder
from qviz.core.errors import QvizError

KEY = "compute_backend"


class ComputeController(QObject):
    """The chosen backend (`holder`), persisted in the app's settings."""

    fellBack = Signal(str)  # emitted from a job's thread; shown on the GUI thread

    def __init__(
        self, settings: QSettings, reporter: ErrorReporter, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self.reporter = reporter
        self.holder = BackendHolder(self._load(), on_fallback=self.fellBack.emit)
        self.fellBack.connect(lambda note: reporter.report(note, "Compute backend"))

    def _load(self) -> BackendChoice:
        raw = self._settings.value(KEY, "")
        try:
            return BackendChoice.parse(str(raw or "local"))
        except QvizError:  # an edited settings file: run locally rather than fail
            return BackendChoice()

    @property
    def choice(self) -> BackendChoice:
        return self.holder.choice

    def set_choice(self, choice: BackendChoice) -> None:
        self.holder.set_choice(choice)
        self._settings.setValue(KEY, choice.to_text())
        self._settings.sync()
        self.reporter.status(f"Measurements now run on: {choice.label}")

    def shutdown(self) -> None:
        self.holder.shutdown()
