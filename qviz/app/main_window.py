"""The main window: where the document's views, docks and controllers are put together.

The window owns nothing of the session: the `Document` (`qviz.core.document`) holds it. Views
take the document and follow its events; controls write to it; controllers take the document
and a job runner and run the long work:

* `files` — opening models, data, statistics and sessions; saving (foreground jobs);
* `jobs` — the one foreground job at a time, with progress and Cancel in the status bar;
* `analysis` — measuring every tensor in the background after a change;
* `layer_parts` — the parts of a large model's layer view that are computed after it is drawn;
* `evaluation` — the live end-to-end numbers and the full native evaluation;
* `sensitivity` — per-layer sensitivity and the mixed-precision search.

What is left here is layout, file dialogs, drag and drop, and closing cleanly. Every failure
goes to one `ErrorReporter`; after it the window is as it was before the failed action.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QWidget,
)

from qviz.app.actions import SHORTCUTS, WindowActions, WindowParts
from qviz.app.controllers.analysis import AnalysisController
from qviz.app.controllers.compute_controller import ComputeController
from qviz.app.controllers.evaluation_controller import EvaluationController
from qviz.app.controllers.files import FileController
from qviz.app.controllers.jobs import JobController
from qviz.app.controllers.layer_parts import LayerPartsController
from qviz.app.controllers.represent import EvalStatsController
from qviz.app.controllers.sensitivity_controller import SensitivityController
from qviz.app.dialogs.compute_dialog import ComputeDialog
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.dialogs.export_dialog import ExportDialog
from qviz.app.dialogs.float_original import ask_float_original
from qviz.app.dialogs.mixed_dialog import MixedPrecisionDialog
from qviz.app.recent_files import RecentFiles, default_settings
from qviz.app.views import plot_style as st
from qviz.app.views.controls import ControlsPanel
from qviz.app.views.graph_view import GraphDock
from qviz.app.views.history_view import HistoryView
from qviz.app.views.job_status import JobStatus
from qviz.app.views.layer_table import LayerTable
from qviz.app.views.layer_view import LayerView
from qviz.app.views.model_panel import ModelDock
from qviz.app.views.sensitivity_view import SensitivityPanel
from qviz.core.document.document import Document
from qviz.core.files.session_file import SESSION_SUFFIX
from qviz.core.imported.describe import float_original
from qviz.core.stats.stats_file import STATS_SUFFIX

log = logging.getLogger(__name__)

MODEL_FILTER = "Models (*.onnx *.pt *.pth *.ts *.pt2);;All files (*)"
DATA_FILTER = "Data (*.npz *.npy);;All files (*)"
QUANTIZED_FILTER = "Quantized ONNX models (*.onnx);;All files (*)"
STATS_FILTER = f"qviz statistics (*{STATS_SUFFIX});;All files (*)"
SESSION_FILTER = f"qviz sessions (*{SESSION_SUFFIX});;All files (*)"
# Closing waits this long for a run to reach its next batch boundary before giving up on it.
SHUTDOWN_TIMEOUT_S = 10.0
DOCK_HEIGHT = 300


class MainWindow(QMainWindow):
    """qviz's window (see the module docstring)."""

    def __init__(
        self,
        settings: QSettings | None = None,
        *,
        batch_size: int = 32,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.doc = doc = Document()
        settings = settings if settings is not None else default_settings()
        self.recent = RecentFiles(settings)
        self.reporter = ErrorReporter(self)
        self.reporter.statusMessage.connect(self.statusBar().showMessage)
        self.reporter.errorShown.connect(lambda m: self.statusBar().showMessage(f"Error: {m}"))

        # Controllers: the document and a runner each, never the window.
        self.jobs = JobController(self.reporter, self)
        self.files = FileController(doc, self.jobs, self.reporter, self.recent, batch_size, self)
        self.analysis = AnalysisController(doc, self.reporter, self)
        self.evaluation = EvaluationController(doc, self.jobs, self.reporter, self)
        self.sensitivity = SensitivityController(doc, self.reporter, self)
        self.compute = ComputeController(settings, self.reporter, self)
        self.sensitivity.compute = self.evaluation.compute = self.compute.holder
        self.eval_stats = EvalStatsController(doc, self.reporter, self)

        # Views: each takes the document and follows its events.
        self.table = LayerTable(doc)
        self.controls = ControlsPanel(doc, self.reporter)
        self.layer_view = LayerView(doc, self.reporter)
        self.layer_parts = LayerPartsController(doc, self.reporter, self)
        self.layer_view.defer_parts = True
        self.layer_view.partsPending.connect(self.layer_parts.request)
        self.job_status = JobStatus(self.statusBar(), self.jobs)
        self.analysis.progressed.connect(self.job_status.show_background)
        self.analysis.idle.connect(self.job_status.hide_background)
        self._build_central()
        self._build_docks()
        self.mixed_dialog: MixedPrecisionDialog | None = None
        self.last_export_dialog: ExportDialog | None = None

        self.commands = WindowActions(WindowParts(
            self, doc, self.reporter, self.files, self.jobs, self.evaluation, self.controls,
            self.table,
            (self.model_dock, self.sensitivity_dock, self.history_dock, self.graph_dock),
            self.history_dock,
            open_model=self.open_model_dialog, open_data=self.open_data_dialog,
            open_eval_data=self.open_eval_data_dialog, open_stats=self.open_stats_dialog,
            open_session=self.open_session_dialog, save_session=self.save_session,
            save_session_as=self.save_session_as_dialog, save_stats=self.save_stats_dialog,
            export=self.open_export_dialog, sensitivity=self.run_sensitivity,
            mixed=self.open_mixed_dialog, shortcuts=self.show_shortcuts,
            fill_recent=self.fill_recent_menu, open_quantized=self.open_quantized_dialog,
            compute_backend=self.open_compute_dialog,
        ))
        self.files.ask_float_original = lambda path: ask_float_original(self, path)
        self.setAcceptDrops(True)
        doc.events.model.connect(self._update_title)
        doc.events.modified.connect(lambda modified: self.setWindowModified(modified))
        doc.events.sensitivity.connect(self._on_sensitivity)
        self.compare_label = QLabel()
        self.compare_label.setStyleSheet(f"color: {st.PINNED_COLOR}; font-weight: 600;")
        self.compare_label.setToolTip("The configuration every change is compared with "
                                      "(Edit ▸ Pin as A, Swap, Unpin)")
        self.statusBar().addPermanentWidget(self.compare_label)
        doc.events.pinned.connect(self._on_pinned)
        self._on_pinned()
        self._update_title()
        self.statusBar().showMessage(
            "Open a model (Ctrl+O), or drop a model, data, statistics or session file here"
        )

    # ================================================================= construction
    def _build_central(self) -> None:
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.table)
        left.addWidget(self.controls)
        left.setStretchFactor(0, 1)
        left.setStretchFactor(1, 0)
        left.setChildrenCollapsible(False)
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(self.layer_view)
        main.setStretchFactor(0, 0)
        main.setStretchFactor(1, 1)
        main.setSizes([640, 960])
        main.setChildrenCollapsible(False)
        self.setCentralWidget(main)
        self.resize(1600, 1000)

    def _build_docks(self) -> None:
        bottom = Qt.DockWidgetArea.BottomDockWidgetArea
        self.model_dock = ModelDock(self.doc, self.evaluation, self)
        self.model_panel = self.model_dock.panel
        # Bottom: the layer view keeps its width, and the depth plot gets room for names.
        self.addDockWidget(bottom, self.model_dock)
        self.resizeDocks([self.model_dock], [250], Qt.Orientation.Vertical)

        self.sensitivity_panel = SensitivityPanel(self.doc, self.sensitivity)
        self.sensitivity_dock = QDockWidget("Sensitivity along depth", self)
        self.sensitivity_dock.setObjectName("sensitivity_dock")
        self.sensitivity_dock.setWidget(self.sensitivity_panel)
        self.sensitivity_dock.setAllowedAreas(bottom | Qt.DockWidgetArea.TopDockWidgetArea)
        toggle = self.sensitivity_dock.toggleViewAction()
        toggle.setText("Sensitivity &Panel")
        toggle.setToolTip("Show or hide the sensitivity chart along depth")
        self.addDockWidget(bottom, self.sensitivity_dock)
        self.sensitivity_dock.hide()
        self._sensitivity_dock_placed = False

        self.history_view = HistoryView(self.doc)
        self.history_dock = QDockWidget("History", self)
        self.history_dock.setObjectName("history_dock")
        self.history_dock.setWidget(self.history_view)
        toggle = self.history_dock.toggleViewAction()
        toggle.setText("&History")
        toggle.setToolTip("Every change of settings; click one to return to it")
        toggle.setStatusTip(toggle.toolTip())
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.history_dock)
        self.history_dock.hide()

        self.graph_dock = GraphDock(self.doc, self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.graph_dock)
        self.graph_dock.hide()

    # ================================================================= state
    @property
    def busy(self) -> bool:
        return (self.jobs.is_busy or self.analysis.is_busy or self.eval_stats.is_busy
                or self.layer_parts.is_busy)

    @property
    def is_calibrating(self) -> bool:
        return self.files.is_calibrating

    def status_text(self) -> str:
        return self.statusBar().currentMessage()

    def _on_pinned(self) -> None:
        pinned = self.doc.pinned
        self.compare_label.setVisible(pinned is not None)
        if pinned is not None:
            text = pinned.label if len(pinned.label) <= 48 else pinned.label[:47] + "…"
            self.compare_label.setText(f"A: {text}")

    def _update_title(self) -> None:
        path = self.doc.model_path
        model = self.doc.model
        quantized = " (quantized)" if model is not None and model.imported is not None else ""
        name = path.name if path is not None else "no model"
        self.setWindowTitle(f"{name}{quantized}[*] — qviz")

    # ================================================================= sensitivity and mixed
    def run_sensitivity(self) -> None:
        if self.sensitivity.run_sensitivity(self.sensitivity_panel.limit):
            self.show_sensitivity_dock()

    def _on_sensitivity(self) -> None:
        if self.doc.measures.sensitivity is not None:
            self.show_sensitivity_dock()

    def show_sensitivity_dock(self) -> None:
        """Show the chart. The first time, it shares a tab with any panel already open in its
        dock area (side by side, two wide panels would force the window wider than the
        screen), and gets a readable height."""
        dock = self.sensitivity_dock
        if not self._sensitivity_dock_placed:
            self._sensitivity_dock_placed = True
            area = self.dockWidgetArea(dock)
            others = [
                d for d in self.findChildren(QDockWidget)
                if d is not dock and d.isVisible() and not d.isFloating()
                and self.dockWidgetArea(d) == area
            ]  # fmt: skip
            if others:
                self.tabifyDockWidget(others[0], dock)
            dock.show()
            self.resizeDocks([dock], [DOCK_HEIGHT], Qt.Orientation.Vertical)
        dock.show()
        dock.raise_()

    def open_mixed_dialog(self) -> MixedPrecisionDialog:
        """The mixed-precision dialog (one per window; it shows the document's last answer)."""
        if self.mixed_dialog is None:
            self.mixed_dialog = MixedPrecisionDialog(self.doc, self.sensitivity, self)
        self.mixed_dialog.show()
        self.mixed_dialog.raise_()
        self.mixed_dialog.activateWindow()
        return self.mixed_dialog

    # ================================================================= export
    def open_export_dialog(self) -> ExportDialog | None:
        """File ▸ Export…: the dialog, on what is on screen now (window-modal, not blocking)."""
        doc = self.doc
        if doc.model is None:
            self.statusBar().showMessage("Nothing to export: open a model first")
            return None
        if self.last_export_dialog is not None:
            self.last_export_dialog.deleteLater()
        dialog = ExportDialog(
            doc.model, doc.model_path, doc.stats, doc.config, self.reporter,
            outcome=doc.measures.evaluation, criteria=doc.measures.criteria,
            directory=self._start_dir(), pinned=doc.pinned, parent=self,
            data_path=doc.eval_data_path or doc.data_path,
            inputs=[doc.data_path, doc.eval_data_path, doc.stats_path, self.files.session_path,
                    float_original(doc.model)],
        )  # fmt: skip
        dialog.exported.connect(
            lambda r: self.statusBar().showMessage(f"Exported {r.written[0]}")
        )
        self.last_export_dialog = dialog
        dialog.open()
        return dialog

    # ================================================================= file dialogs
    def _ask_open(self, title: str, filters: str) -> Path | None:
        name, _ = QFileDialog.getOpenFileName(self, title, str(self._start_dir()), filters)
        return Path(name) if name else None

    def _start_dir(self) -> Path:
        for p in (self.files.session_path, self.doc.model_path):
            if p is not None:
                return p.parent
        return Path.cwd()

    def open_model_dialog(self) -> None:
        if (p := self._ask_open("Open model", MODEL_FILTER)) is not None:
            self.files.open_model(p)

    def open_quantized_dialog(self) -> None:
        """A quantized model, then its float original (asked by the file controller)."""
        if (p := self._ask_open("Open quantized model", QUANTIZED_FILTER)) is not None:
            self.files.open_model(p)

    def open_data_dialog(self) -> None:
        if (p := self._ask_open("Open calibration data", DATA_FILTER)) is not None:
            self.files.open_data(p)

    def open_eval_data_dialog(self) -> None:
        if (p := self._ask_open("Open evaluation data", DATA_FILTER)) is not None:
            self.files.open_eval_data(p)

    def open_stats_dialog(self) -> None:
        if (p := self._ask_open("Open statistics", STATS_FILTER)) is not None:
            self.files.open_stats(p)

    def open_session_dialog(self) -> None:
        if (p := self._ask_open("Open session", SESSION_FILTER)) is not None:
            self.files.open_session(p)

    def save_session(self) -> None:
        if self.files.session_path is None:
            self.save_session_as_dialog()
        else:
            self.files.save_session_to(self.files.session_path)

    def save_session_as_dialog(self) -> None:
        if self.doc.model is None:
            self.statusBar().showMessage("Nothing to save: open a model first")
            return
        stem = self.doc.model_path.stem if self.doc.model_path else "session"
        default = self._start_dir() / f"{stem}{SESSION_SUFFIX}"
        name, _ = QFileDialog.getSaveFileName(self, "Save session", str(default), SESSION_FILTER)
        if name:
            self.files.save_session_to(
                name if name.endswith(SESSION_SUFFIX) else name + SESSION_SUFFIX
            )

    def save_stats_dialog(self) -> None:
        if self.doc.stats is None:
            self.statusBar().showMessage("No statistics yet: calibrate first")
            return
        name, _ = QFileDialog.getSaveFileName(
            self, "Save statistics", str(self._start_dir() / f"stats{STATS_SUFFIX}"), STATS_FILTER
        )
        if name:
            self.files.save_stats_to(name if name.endswith(STATS_SUFFIX) else name + STATS_SUFFIX)

    def fill_recent_menu(self) -> None:
        menu = self.commands.recent_menu
        menu.clear()
        paths = self.recent.paths()
        if not paths:
            menu.addAction("(none yet)").setEnabled(False)
            return
        for p in paths:
            action = menu.addAction(p.name)
            action.setToolTip(str(p))
            action.setStatusTip(str(p))
            action.setEnabled(p.exists())
            action.triggered.connect(lambda _c=False, path=p: self.files.open_path(path))
        menu.addSeparator()
        menu.addAction("Clear Recent Files").triggered.connect(self.recent.clear)

    def open_compute_dialog(self) -> ComputeDialog:
        """Run ▸ Compute Backend…: where sensitivity, mixed precision and full evaluations
        run (non-modal; applied on OK)."""
        dialog = ComputeDialog(self.compute.choice, self)

        def apply() -> None:
            with self.reporter.guard("Compute backend"):
                self.compute.set_choice(dialog.choice())

        dialog.accepted.connect(apply)
        dialog.open()
        return dialog

    def show_shortcuts(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "Keyboard shortcuts", "\n".join(SHORTCUTS),
                          QMessageBox.StandardButton.Close, self)
        box.open()

    # ================================================================= drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and all(u.isLocalFile() for u in urls):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        event.acceptProposedAction()
        # Deferred: a drop handler that opens dialogs or starts work must return first.
        QTimer.singleShot(0, lambda: self.files.open_paths(paths))

    # ================================================================= closing
    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop every run and wait for its thread, so none outlives the window."""
        try:
            clean = self.jobs.shutdown(SHUTDOWN_TIMEOUT_S)
            clean = self.analysis.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            clean = self.layer_parts.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            clean = self.evaluation.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            clean = self.sensitivity.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            clean = self.eval_stats.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            self.compute.shutdown()
            for dialog in self.findChildren(ExportDialog):
                clean = dialog.runner.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            if not clean:
                log.warning("a background run did not stop within %.0f s", SHUTDOWN_TIMEOUT_S)
        except Exception:
            # An exception escaping a Qt event override is fatal in PySide 6.11 (shiboken
            # crashes while printing it); closing must always succeed.
            log.exception("error while stopping background runs on close")
        super().closeEvent(event)
