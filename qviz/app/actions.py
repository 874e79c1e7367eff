"""The window's actions and menus: every command, its shortcut and its tooltip, in one place.

Actions call the controllers and the document directly; the window only hosts them. Edit ▸
Undo / Redo name the step they would take and are enabled only when there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QMainWindow

from qviz.app.controllers.evaluation_controller import EvaluationController
from qviz.app.controllers.files import FileController
from qviz.app.controllers.jobs import JobController
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.views.controls import METHODS, ControlsPanel
from qviz.app.views.layer_table import LayerTable
from qviz.core.calibration.methods import Method
from qviz.core.data.split import Holdout
from qviz.core.document.document import Document

Shortcut = str | QKeySequence | QKeySequence.StandardKey


@dataclass(frozen=True)
class WindowParts:
    """What the actions act on: the document, the controllers, and the window's own dialogs."""

    window: QMainWindow
    doc: Document
    reporter: ErrorReporter
    files: FileController
    jobs: JobController
    evaluation: EvaluationController
    controls: ControlsPanel
    table: LayerTable
    docks: tuple[QDockWidget, ...]          # shown in View, in this order
    history_dock: QDockWidget
    open_model: Callable[[], None]
    open_data: Callable[[], None]
    open_eval_data: Callable[[], None]
    open_stats: Callable[[], None]
    open_session: Callable[[], None]
    save_session: Callable[[], None]
    save_session_as: Callable[[], None]
    save_stats: Callable[[], None]
    export: Callable[[], Any]
    sensitivity: Callable[[], None]
    mixed: Callable[[], Any]
    shortcuts: Callable[[], None]
    fill_recent: Callable[[], None]


class WindowActions:
    """Builds the actions of one window and its menu bar."""

    def __init__(self, parts: WindowParts) -> None:
        self.w = parts
        self._build()
        self._menus()
        parts.doc.events.history.connect(self._sync_history)
        parts.doc.events.pinned.connect(self._sync_pinned)
        parts.doc.events.data.connect(self._sync_evaluation)
        self._sync_evaluation()
        parts.jobs.busyChanged.connect(self.cancel.setEnabled)
        self._sync_history()
        self._sync_pinned()

    def _action(
        self, text: str, tip: str, slot: Callable[[], Any], shortcut: Shortcut | None = None
    ) -> QAction:
        action = QAction(text, self.w.window)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        self.w.window.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _build(self) -> None:
        a, w = self._action, self.w
        files, doc = w.files, w.doc
        self.open_model = a("Open &Model…", "Open an ONNX or PyTorch model",
                            w.open_model, "Ctrl+O")
        self.open_data = a(
            "Open Calibration &Data…", "Open calibration data (.npz, .npy or a folder) and "
            "calibrate the model on it", w.open_data, "Ctrl+D",
        )
        self.open_eval_data = a(
            "Open &Evaluation Data…", "Open the data end-to-end numbers (evaluation, "
            "sensitivity, mixed precision) are measured on", w.open_eval_data,
            "Ctrl+Shift+D",
        )
        self.held_out = a(
            "Evaluate on a &Held-Out Part", "Keep one sample in five of the calibration data "
            "apart and measure end-to-end numbers on it (calibrates again on the rest)",
            lambda: self._set_evaluation(held_out=True),
        )
        self.on_calibration = a(
            "Evaluate on the &Calibration Data", "Measure end-to-end numbers on the samples "
            "the ranges were fitted to: quick, but not evidence; every result says so",
            lambda: self._set_evaluation(held_out=False),
        )
        for action in (self.held_out, self.on_calibration):
            action.setCheckable(True)
        self.open_stats = a("Open &Statistics…", "Open statistics collected earlier "
                            "(qviz collect)", w.open_stats, "Ctrl+Shift+T")
        self.open_session = a("Open S&ession…", "Open a saved session: model, data and every "
                              "setting", w.open_session, "Ctrl+Shift+O")
        self.open_demo = a("Open the &Demo", "Open the built-in Fashion-MNIST demo and "
                           "calibrate it", files.open_demo)
        self.save_session = a("&Save Session", "Save the model, data and every per-layer "
                              "setting", w.save_session, QKeySequence.StandardKey.Save)
        self.save_session_as = a("Save Session &As…", "Save the session under a new name",
                                 w.save_session_as, "Ctrl+Shift+S")
        self.save_stats = a("Save Statistics…", "Save the calibration statistics to reuse "
                            "without recalibrating", w.save_stats)
        self.export = a("&Export…", "Write the Q/DQ model, config file, ORT overrides, "
                        "TensorRT cache or a report", w.export, "Ctrl+E")
        self.quit = a("&Quit", "Close qviz", w.window.close, QKeySequence.StandardKey.Quit)

        self.undo = a("&Undo", "Undo the last change of settings", doc.undo,
                      QKeySequence.StandardKey.Undo)
        self.redo = a("&Redo", "Redo the change of settings undone last", doc.redo,
                      "Ctrl+Shift+Z")
        self.pin = a("&Pin as A (Compare)", "Keep the current configuration as A and compare "
                     "every change with it: histograms, metrics, table and model panel show A "
                     "beside the current one (B)", doc.pin, "Ctrl+Shift+P")
        self.swap = a("S&wap A and B", "Make the pinned configuration current and pin the "
                      "current one (undoable)", self._swap, "Ctrl+Shift+X")
        self.unpin = a("U&npin A", "Stop comparing with the pinned configuration", doc.unpin)

        self.recalibrate = a("&Recalibrate", "Run calibration again on the current data",
                             files.recalibrate, "F5")
        self.cancel = a("&Cancel Run", "Stop the running job at the end of the current batch",
                        w.jobs.cancel, "Esc")
        self.cancel.setEnabled(False)
        self.evaluate = a(
            "&Evaluate (Full)", "Every sample with ONNX Runtime's fused INT8 kernels: "
            "accuracy, fusion per layer and latency (progress and Cancel in the status bar)",
            w.evaluation.evaluate_full, "Ctrl+R",
        )
        self.live_evaluation = a(
            "&Live Evaluation", f"Re-evaluate the first {w.evaluation.live_limit} samples "
            "(simulation) in the background after every change",
            lambda: w.evaluation.set_live_enabled(self.live_evaluation.isChecked()),
        )
        self.live_evaluation.setCheckable(True)
        self.live_evaluation.setChecked(True)
        self.sensitivity = a(
            "&Sensitivity", "Measure every layer end to end: only this layer quantized, only "
            "this layer float (in the background; cached)", w.sensitivity, "F6",
        )
        self.mixed = a(
            "&Mixed Precision…", "Find per-layer precisions (int4, int8, float) that meet an "
            "accuracy or SQNR criterion at the smallest size, measured",
            w.mixed, "Ctrl+Shift+M",
        )

        self.log_counts = a("&Log Counts", "Histogram counts on a logarithmic axis (shows "
                            "the tails)", lambda: doc.set_log_counts(self.log_counts.isChecked()),
                            "Ctrl+L")
        self.log_counts.setCheckable(True)
        doc.events.view.connect(lambda: self.log_counts.setChecked(doc.log_counts))
        self.filter = a("&Filter Layers", "Type to filter the layer table",
                        w.table.focus_filter, "Ctrl+F")
        self.methods: dict[Method, QAction] = {}
        for i, (method, label, tip) in enumerate(METHODS):
            self.methods[method] = a(label, tip, partial(w.controls.choose_method, method),
                                     str(i + 1))
        self.shortcuts = a("&Keyboard Shortcuts", "List the keyboard shortcuts",
                           w.shortcuts, "F1")

    def _menus(self) -> None:
        w = self.w
        bar = w.window.menuBar()
        file_menu = bar.addMenu("&File")
        for action in (self.open_model, self.open_data, self.open_stats, self.open_session):
            file_menu.addAction(action)
        evaluation_menu = file_menu.addMenu("E&valuation Data")
        evaluation_menu.setToolTipsVisible(True)
        for action in (self.held_out, self.on_calibration, self.open_eval_data):
            evaluation_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.setToolTipsVisible(True)
        self.recent_menu.aboutToShow.connect(w.fill_recent)
        file_menu.addAction(self.open_demo)
        file_menu.addSeparator()
        for action in (self.save_session, self.save_session_as, self.save_stats):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.export)
        file_menu.addSeparator()
        file_menu.addAction(self.quit)

        edit_menu = bar.addMenu("&Edit")
        edit_menu.addAction(self.undo)
        edit_menu.addAction(self.redo)
        edit_menu.addSeparator()
        for action in (self.pin, self.swap, self.unpin):
            edit_menu.addAction(action)
        edit_menu.addSeparator()
        edit_menu.addAction(w.history_dock.toggleViewAction())

        run_menu = bar.addMenu("&Run")
        for action in (self.recalibrate, self.cancel):
            run_menu.addAction(action)
        run_menu.addSeparator()
        run_menu.addAction(self.evaluate)
        run_menu.addAction(self.live_evaluation)
        run_menu.addSeparator()
        run_menu.addAction(self.sensitivity)
        run_menu.addAction(self.mixed)

        settings_menu = bar.addMenu("&Settings")
        method_menu = settings_menu.addMenu("&Method")
        for action in self.methods.values():
            method_menu.addAction(action)

        view_menu = bar.addMenu("&View")
        view_menu.addAction(self.log_counts)
        view_menu.addAction(self.filter)
        view_menu.addSeparator()
        for dock in w.docks:
            view_menu.addAction(dock.toggleViewAction())

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.shortcuts)

    def _set_evaluation(self, held_out: bool) -> None:
        """Back to one data set: a held-out part of it, or the calibration data itself."""
        w = self.w
        with w.reporter.guard("Choosing the evaluation data"):
            w.files.set_holdout(Holdout() if held_out else None)
        self._sync_evaluation()

    def _sync_evaluation(self) -> None:
        doc = self.w.doc
        separate = doc.eval_data_path is not None
        self.held_out.setChecked(not separate and doc.holdout is not None)
        self.on_calibration.setChecked(not separate and doc.holdout is None)

    def _swap(self) -> None:
        with self.w.reporter.guard("Swapping A and B"):
            self.w.doc.swap_pinned()

    def _sync_pinned(self) -> None:
        pinned = self.w.doc.pinned is not None
        self.swap.setEnabled(pinned)
        self.unpin.setEnabled(pinned)

    def _sync_history(self) -> None:
        """Edit ▸ Undo / Redo say which step they would take."""
        history = self.w.doc.history
        for action, label, word in (
            (self.undo, history.undo_label, "Undo"),
            (self.redo, history.redo_label, "Redo"),
        ):
            action.setEnabled(label is not None)
            action.setText(f"&{word} {label}" if label else f"&{word}")


SHORTCUTS = (
    "Ctrl+O  open model", "Ctrl+D  open calibration data",
    "Ctrl+Shift+D  open evaluation data", "Ctrl+Shift+T  open statistics",
    "Ctrl+Shift+O  open session", "Ctrl+S  save session",
    "Ctrl+Z / Ctrl+Shift+Z  undo / redo a change of settings",
    "Ctrl+Shift+P  pin the configuration as A · Ctrl+Shift+X  swap A and B",
    "F5  recalibrate", "Esc  cancel the run",
    "1–5  MinMax, Percentile, Entropy, MSE, Manual", "Ctrl+L  log histogram counts",
    "Ctrl+F  filter the layer table", "Ctrl+R  evaluate: every sample, native INT8",
    "Ctrl+E  export", "F6  sensitivity of every layer", "Ctrl+Shift+M  mixed precision",
    "Ctrl+Q  quit",
)
