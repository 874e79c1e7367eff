"""The one error reporter: every failure the user should see goes through `ErrorReporter.report`,
and every one-line status message through `ErrorReporter.status` (the window shows both).

A `QvizError` is the user's problem described in one line (a bad file, a format a tensor cannot
take) and is shown as is. Anything else is a bug in qviz: the one-line message names what
failed and says so, and the traceback sits behind the dialog's "Show Details…" button.

The dialog is opened with `QMessageBox.open()` (window-modal, no nested event loop), so a
report coming from a worker's signal never re-enters the event loop half-way through a slot,
and tests are never blocked by it; they observe `errorShown(message)` instead.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from qviz.core.errors import QvizError

log = logging.getLogger(__name__)


def describe_error(error: BaseException | str, context: str = "") -> tuple[str, str]:
    """(one-line message, details) for an exception or a plain message."""
    if isinstance(error, str):
        return error, ""
    details = "".join(traceback.format_exception(error)).rstrip()
    if isinstance(error, QvizError):
        text = str(error).strip() or type(error).__name__
        message = text.splitlines()[0]
        return message, details
    first = (str(error).strip().splitlines() or [""])[0]
    what = f"{type(error).__name__}: {first}" if first else type(error).__name__
    head = f"{context} failed" if context else "Something went wrong"
    return f"{head} ({what}). This is a bug in qviz; the details help to report it.", details


class ErrorReporter(QObject):
    """Shows errors to the user, one dialog at a time, and announces each on `errorShown`;
    passes status lines on `statusMessage` (the window's status bar shows them)."""

    errorShown = Signal(str)
    statusMessage = Signal(str)

    def __init__(self, parent_widget: QWidget | None = None) -> None:
        super().__init__(parent_widget)
        self._parent_widget = parent_widget
        self._box: QMessageBox | None = None
        self.last_message = ""
        self.last_details = ""

    def report(self, error: BaseException | str, context: str = "") -> str:
        """Show `error`; returns the one-line message shown."""
        message, details = describe_error(error, context)
        if isinstance(error, BaseException) and not isinstance(error, QvizError):
            log.error("%s", message, exc_info=error)
        self.last_message, self.last_details = message, details
        self._show(message, details)
        self.errorShown.emit(message)
        return message

    def status(self, text: str) -> None:
        """A one-line status message ("Statistics ready: …")."""
        self.statusMessage.emit(text)

    @contextlib.contextmanager
    def guard(self, context: str) -> Iterator[None]:
        """Report any error of a GUI-thread action; the app stays as it was, usable."""
        try:
            yield
        except Exception as exc:  # one reporter for everything, then carry on
            self.report(exc, context)

    def _show(self, message: str, details: str) -> None:
        box = self._box
        if box is not None and box.isVisible():
            # Errors arriving while one is on screen join it instead of stacking dialogs.
            box.setText(f"{box.text()}\n\n{message}")
            if details:
                old = box.detailedText()
                box.setDetailedText(f"{old}\n\n{details}" if old else details)
            return
        box = QMessageBox(self._parent_widget)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("qviz")
        box.setText(message)
        if details:
            box.setDetailedText(details)
        box.setStandardButtons(QMessageBox.StandardButton.Ok)
        self._box = box
        box.open()

    @property
    def dialog(self) -> QMessageBox | None:
        """The dialog currently (or last) shown; tests read its text."""
        return self._box
