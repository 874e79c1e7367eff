"""The main window: layer table, settings, the layer view, and the background runs behind them.

The window is glue. The open document (`qviz.core.document.document.Document`) holds the
state and does the arithmetic; the views draw it; two `BackgroundRunner`s run what is slow:

* `jobs` — loading a model, loading data and calibrating, loading statistics. One at a time;
  opening something new supersedes what is running. Shown in the status bar with a progress
  bar and a Cancel button (Esc).
* `analysis` — measuring every tensor after calibration or after a change that touches many
  tensors ("apply to all Conv weights"). The selected layer is always measured right away on
  the GUI thread (milliseconds, from stored statistics), so what the user looks at never waits.

Every failure goes to one `ErrorReporter`; after it the window is in the state it was before
the failed action, and usable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QWidget,
)

from qviz.app.controllers.evaluation_controller import (
    LIVE_LIMIT,
    EvaluationController,
    EvaluationOutcome,
)
from qviz.app.controllers.sensitivity_controller import SensitivityController
from qviz.app.controllers.workers import BackgroundRunner, ShouldStop, call_as_job
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.dialogs.export_dialog import ExportDialog
from qviz.app.recent_files import RecentFiles, default_settings
from qviz.app.views.controls import METHODS, ControlsPanel, TensorInfo
from qviz.app.views.layer_table import LayerTable
from qviz.app.views.model_panel import ModelDock, outcome_texts
from qviz.core.calibration.analysis import TensorKey, TensorResult
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import ApplyScope, Document, analyze_in_batches
from qviz.core.errors import QvizError
from qviz.core.files.session_file import (
    SESSION_SUFFIX,
    PathKind,
    SessionFile,
    classify_path,
    load_session,
    save_session,
)
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.progress import Progress, format_seconds
from qviz.core.stats.collect import CalibrationStats, collect_stats
from qviz.core.stats.stats_file import STATS_SUFFIX, load_stats, save_stats

log = logging.getLogger(__name__)

MODEL_FILTER = "Models (*.onnx *.pt *.pth *.ts *.pt2);;All files (*)"
DATA_FILTER = "Calibration data (*.npz *.npy);;All files (*)"
STATS_FILTER = f"qviz statistics (*{STATS_SUFFIX});;All files (*)"
SESSION_FILTER = f"qviz sessions (*{SESSION_SUFFIX});;All files (*)"
# Closing waits this long for a run to reach its next batch boundary before giving up on it.
SHUTDOWN_TIMEOUT_S = 10.0
# The full evaluation runs as a job under this label (the status bar shows it).
FULL_EVALUATION_LABEL = "Evaluating (every sample, native INT8)"


def calibrate(
    model: LoadedModel, data_path: Path, batch_size: int, should_stop: ShouldStop
) -> Generator[Progress, None, CalibrationStats]:
    """Load the data and collect statistics; all of it runs on the worker thread."""
    yield Progress(0, 0, 0.0, None, f"reading {data_path.name}")
    data = load_data(data_path, model.inputs)
    return (
        yield from collect_stats(model, data, batch_size=batch_size, should_stop=should_stop)
    )


def load_stats_and_model(
    path: Path, current: LoadedModel | None
) -> tuple[LoadedModel | None, CalibrationStats]:
    """A stats file, plus its model when the one open is not the one it was collected on."""
    stats = load_stats(path)
    if current is not None and current.sha256 == stats.model_sha256:
        return None, stats
    source = Path(stats.model_source)
    if not source.is_file():
        raise QvizError(
            f"{path.name} was collected on {source}, which is not there; open that model "
            f"(Ctrl+O) and then the statistics"
        )
    model = load_model(source)
    if model.sha256 != stats.model_sha256:
        raise QvizError(
            f"{source} has changed since {path.name} was collected (sha256 differs); "
            f"recalibrate it"
        )
    return model, stats


class MainWindow(QMainWindow):
    """qviz's window. Public methods are the actions (menus, drops and tests call them)."""

    errorShown = Signal(str)
    modelLoaded = Signal()
    calibrationFinished = Signal()   # statistics in place: calibrated, or read from a file
    calibrationCancelled = Signal()
    analysisFinished = Signal()      # every tensor measured for the current settings
    viewUpdated = Signal()           # selected layer, metrics and table redrawn after a change
    busyChanged = Signal(bool)

    def __init__(
        self,
        settings: QSettings | None = None,
        *,
        batch_size: int = 32,
        layer_view: QWidget | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.batch_size = batch_size
        self.doc = Document()
        self.recent = RecentFiles(settings if settings is not None else default_settings())
        self.reporter = ErrorReporter(self)
        self.reporter.errorShown.connect(self._on_error_shown)
        self.jobs = BackgroundRunner("jobs", self)
        self.analysis = BackgroundRunner("analysis", self)
        self._job_done: Callable[[Any], None] | None = None
        self._job_label = ""
        self._calibrating = False
        self._session_path: Path | None = None
        self.last_update_ms = float("nan")

        if layer_view is None:
            from qviz.app.views.layer_view import LayerView

            layer_view = LayerView()
        self.layer_view = layer_view
        self.table = LayerTable(self.doc)
        self.controls = ControlsPanel()

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
        self.setAcceptDrops(True)

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._connect()
        # Run ▸ Sensitivity and Mixed precision…, their dock, dialog and table columns.
        self.sensitivity = SensitivityController(self)
        self._update_title()
        self._build_evaluation()  # Run ▸ Evaluate, File ▸ Export…, the model dock
        self._set_status(
            "Open a model (Ctrl+O), or drop a model, data, statistics or session file here"
        )

    # ================================================================= construction
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(240)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setToolTip("Samples calibrated so far")
        self.eta_label = QLabel()
        self.eta_label.setToolTip("Time spent and estimated time left")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run at the end of the current batch (Esc)")
        self.cancel_button.clicked.connect(self.cancel_run)
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            bar.addPermanentWidget(w)
            w.hide()

    def _action(
        self,
        text: str,
        tip: str,
        slot: Callable[[], Any],
        shortcut: str | QKeySequence | QKeySequence.StandardKey | None = None,
    ) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _build_actions(self) -> None:
        a = self._action
        self.open_model_action = a(
            "Open &Model…", "Open an ONNX or PyTorch model", self.open_model_dialog, "Ctrl+O"
        )
        self.open_data_action = a(
            "Open Calibration &Data…", "Open calibration data (.npz, .npy or a folder) and "
            "calibrate the model on it", self.open_data_dialog, "Ctrl+D",
        )
        self.open_stats_action = a(
            "Open &Statistics…", "Open statistics collected earlier (qviz collect)",
            self.open_stats_dialog, "Ctrl+Shift+T",
        )
        self.open_session_action = a(
            "Open S&ession…", "Open a saved session: model, data and every setting",
            self.open_session_dialog, "Ctrl+Shift+O",
        )
        self.open_demo_action = a(
            "Open the &Demo", "Open the built-in Fashion-MNIST demo and calibrate it",
            self.open_demo,
        )
        self.save_session_action = a(
            "&Save Session", "Save the model, data and every per-layer setting",
            self.save_session, QKeySequence.StandardKey.Save,
        )
        self.save_session_as_action = a(
            "Save Session &As…", "Save the session under a new name",
            self.save_session_as_dialog, "Ctrl+Shift+S",
        )
        self.save_stats_action = a(
            "Save Statistics…", "Save the calibration statistics to reuse without recalibrating",
            self.save_stats_dialog,
        )
        self.quit_action = a("&Quit", "Close qviz", self.close, QKeySequence.StandardKey.Quit)
        self.recalibrate_action = a(
            "&Recalibrate", "Run calibration again on the current data", self.recalibrate, "F5"
        )
        self.cancel_action = a(
            "&Cancel Run", "Stop calibration at the end of the current batch", self.cancel_run,
            "Esc",
        )
        self.cancel_action.setEnabled(False)
        self.log_counts_action = a(
            "&Log Counts", "Histogram counts on a logarithmic axis (shows the tails)",
            self._on_log_counts_toggled, "Ctrl+L",
        )
        self.log_counts_action.setCheckable(True)
        self.filter_action = a(
            "&Filter Layers", "Type to filter the layer table", self._focus_filter, "Ctrl+F"
        )
        self.method_actions: dict[Method, QAction] = {}
        for i, (method, label, tip) in enumerate(METHODS):
            self.method_actions[method] = a(
                label, tip, lambda m=method: self.controls.choose_method(m), str(i + 1)
            )
        self.shortcuts_action = a(
            "&Keyboard Shortcuts", "List the keyboard shortcuts", self._show_shortcuts, "F1"
        )

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.open_model_action, self.open_data_action, self.open_stats_action,
                       self.open_session_action):
            file_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.setToolTipsVisible(True)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.open_demo_action)
        file_menu.addSeparator()
        for action in (self.save_session_action, self.save_session_as_action,
                       self.save_stats_action):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)

        self.run_menu = run_menu = menu.addMenu("&Run")
        run_menu.addAction(self.recalibrate_action)
        run_menu.addAction(self.cancel_action)

        settings_menu = menu.addMenu("&Settings")
        method_menu = settings_menu.addMenu("&Method")
        for action in self.method_actions.values():
            method_menu.addAction(action)

        self.view_menu = view_menu = menu.addMenu("&View")
        view_menu.addAction(self.log_counts_action)
        view_menu.addAction(self.filter_action)

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)

    def _connect(self) -> None:
        self.jobs.progressed.connect(self._on_job_progress)
        self.jobs.succeeded.connect(self._on_job_succeeded)
        self.jobs.failed.connect(self._on_job_failed)
        self.jobs.cancelled.connect(self._on_job_cancelled)
        self.jobs.busyChanged.connect(self._on_jobs_busy)
        self.analysis.progressed.connect(self._on_analysis_batch)
        self.analysis.succeeded.connect(self._on_analysis_done)
        self.analysis.failed.connect(lambda exc: self.reporter.report(exc, "Measuring tensors"))
        self.analysis.busyChanged.connect(lambda _b: self.busyChanged.emit(self.busy))
        self.table.tensorSelected.connect(self._on_tensor_selected)
        self.controls.configEdited.connect(self._on_config_edited)
        clip_signal = getattr(self.layer_view, "clipRangeEdited", None)
        if clip_signal is not None:
            clip_signal.connect(self._on_clip_range_edited)

    # ================================================================= state
    @property
    def busy(self) -> bool:
        return self.jobs.is_busy or self.analysis.is_busy

    @property
    def is_calibrating(self) -> bool:
        return self._calibrating and self.jobs.is_busy

    def status_text(self) -> str:
        return self.statusBar().currentMessage()

    def _set_status(self, text: str) -> None:
        self.statusBar().showMessage(text)

    @contextlib.contextmanager
    def _guard(self, context: str) -> Iterator[None]:
        """Report any error of a GUI-thread action; the window stays as it was, usable."""
        try:
            yield
        except Exception as exc:  # one reporter for everything, then carry on
            self.reporter.report(exc, context)

    def _on_error_shown(self, message: str) -> None:
        self._set_status(f"Error: {message}")
        self.errorShown.emit(message)

    def _update_title(self) -> None:
        name = self.doc.model_path.name if self.doc.model_path is not None else "no model"
        self.setWindowTitle(f"{name}[*] — qviz")

    # ================================================================= opening things
    def open_path(self, path: str | Path) -> None:
        """Open whatever `path` is: model, data, statistics or session."""
        with self._guard(f"Opening {Path(path).name}"):
            kind = classify_path(path)
            if kind is PathKind.MODEL:
                self.open_model(path)
            elif kind is PathKind.DATA:
                self.open_data(path)
            elif kind is PathKind.STATS:
                self.open_stats(path)
            else:
                self.open_session(path)

    def open_demo(self) -> None:
        with self._guard("Opening the demo"):
            paths = demo_paths()
            self.open_model(paths.model, data_path=paths.data)

    def open_model(
        self,
        path: str | Path,
        *,
        data_path: str | Path | None = None,
        stats_path: str | Path | None = None,
        session: SessionFile | None = None,
    ) -> None:
        """Load a model in the background; then read `stats_path` or calibrate on data."""
        p = Path(path)
        data = Path(data_path) if data_path is not None else None
        stats = Path(stats_path) if stats_path is not None else None
        self.analysis.discard()  # results for the old model must not land on the new one

        def done(model: LoadedModel) -> None:
            self._install_model(model, p, session)
            if data is not None:
                self.doc.data_path = data
            if stats is not None:
                self.open_stats(stats)
            elif self.doc.data_path is not None:
                self.open_data(self.doc.data_path)
            else:
                self._set_status(
                    f"Loaded {p.name}: {len(self.doc.tensors)} tensors. Open calibration data "
                    f"(Ctrl+D) to measure the activations."
                )

        self._start_job(call_as_job(lambda: load_model(p)), f"Loading {p.name}", done)

    def open_data(self, path: str | Path) -> None:
        """Calibrate the open model on this data (remembered for later if no model is open)."""
        p = Path(path)
        self.recent.add(p)
        self.doc.data_path = p
        model = self.doc.model
        if model is None:
            self._set_status(f"{p.name} will be used for calibration once a model is open")
            return
        batch_size = self.batch_size
        self._calibrating = True
        self._start_job(
            lambda should_stop: calibrate(model, p, batch_size, should_stop),
            f"Calibrating on {p.name}",
            lambda stats: self._install_stats(stats, None),
        )

    def recalibrate(self) -> None:
        if self.doc.data_path is None:
            self._set_status("No calibration data: open some with Ctrl+D")
            return
        self.open_data(self.doc.data_path)

    def open_stats(self, path: str | Path) -> None:
        """Read statistics (and their model, if another one is open) in the background."""
        p = Path(path)
        current = self.doc.model

        def done(value: tuple[LoadedModel | None, CalibrationStats]) -> None:
            model, stats = value
            if model is not None:
                self._install_model(model, Path(model.source), None)
            self.recent.add(p)
            self._install_stats(stats, p)

        self._start_job(
            call_as_job(lambda: load_stats_and_model(p, current)), f"Reading {p.name}", done
        )

    def open_session(self, path: str | Path) -> None:
        p = Path(path)
        with self._guard(f"Opening {p.name}"):
            session = load_session(p)
            if session.model_path is None:
                raise QvizError(f"{p.name} names no model")
            self.recent.add(p)
            self._session_path = p
            self.doc.data_path = None
            self.open_model(
                session.model_path,
                data_path=session.data_path,
                stats_path=session.stats_path,
                session=session,
            )

    # ----------------------------------------------------------------- results of jobs
    def _install_model(self, model: LoadedModel, path: Path, session: SessionFile | None) -> None:
        self.analysis.discard()
        self.doc.set_model(model, path)
        if session is not None:
            self.doc.adopt_session(session)
            self.log_counts_action.setChecked(session.log_counts)
            self._on_log_counts_toggled()
            if session.model_sha256 and session.model_sha256 != model.sha256:
                log.warning("%s changed since the session was saved", path)
        self.recent.add(path)
        self.table.reset()
        self._update_title()
        self.setWindowModified(False)
        if self.doc.selection is not None:
            self.table.select(self.doc.selection)
        self._show_selection()
        self.table.refresh()
        self.table.update_summary()
        self._start_analysis()
        self.modelLoaded.emit()

    def _install_stats(self, stats: CalibrationStats, path: Path | None) -> None:
        self._calibrating = False
        with self._guard("Using the statistics"):
            self.analysis.discard()
            stale = self.doc.set_stats(stats, path)
            self._show_selection()
            self.table.refresh(stale)
            self.table.update_summary()
            self._start_analysis()
            where = f"{stats.n_samples} samples of {stats.data_description}"
            notes = f" Note: {'; '.join(stats.notes)}" if stats.notes else ""
            self._set_status(f"Statistics ready: {where}. Select a layer to explore.{notes}")
            self.calibrationFinished.emit()

    # ================================================================= background jobs
    def _start_job(
        self,
        make: Callable[[ShouldStop], Generator[Any, None, Any]],
        label: str,
        done: Callable[[Any], None],
    ) -> None:
        if not label.startswith("Calibrating"):
            self._calibrating = False
        self._job_done = done
        self._job_label = label
        self.jobs.start(make, label)
        self.progress_bar.setRange(0, 0)  # busy indicator until the first progress report
        self.progress_bar.setFormat(label)
        self.eta_label.setText("")
        self._set_status(f"{label}…")

    def _on_job_progress(self, item: object) -> None:
        if not isinstance(item, Progress):
            return
        if item.total <= 0:  # a step with nothing to count yet ("reading data.npz")
            self._set_status(f"{self._job_label}: {item.message}…")
            return
        if item.total > 0:
            self.progress_bar.setRange(0, item.total)
            self.progress_bar.setValue(item.done)
            self.progress_bar.setFormat("%v / %m samples")
        eta = "" if item.remaining_s is None else f", {format_seconds(item.remaining_s)} left"
        self.eta_label.setText(f"{format_seconds(item.elapsed_s)} elapsed{eta}")
        self._set_status(f"{self._job_label}: {item.describe()}")

    def _on_job_succeeded(self, value: object) -> None:
        done, self._job_done = self._job_done, None
        if done is not None:
            with self._guard(self._job_label):
                done(value)

    def _on_job_failed(self, exc: BaseException) -> None:
        was_calibrating = self._calibrating
        self._job_done = None
        self._calibrating = False
        self.reporter.report(exc, self._job_label)
        if was_calibrating:
            self.calibrationCancelled.emit()

    def _on_job_cancelled(self) -> None:
        self._job_done = None
        if self._calibrating:
            self._calibrating = False
            self._set_status(
                "Calibration cancelled: activations are not measured. Recalibrate with F5."
            )
            self.calibrationCancelled.emit()
        else:
            self._set_status(f"{self._job_label}: cancelled")

    def _on_jobs_busy(self, busy: bool) -> None:
        for w in (self.eta_label, self.progress_bar, self.cancel_button):
            w.setVisible(busy)
        self.cancel_action.setEnabled(busy)
        self.busyChanged.emit(self.busy)

    def cancel_run(self) -> None:
        """Esc / Cancel: stop the running job at its next batch boundary."""
        if self.jobs.cancel():
            self._set_status(f"{self._job_label}: cancelling at the end of this batch…")

    # ----------------------------------------------------------------- measuring every tensor
    def _start_analysis(self) -> None:
        """Measure, in the background, every tensor that has no result for its settings."""
        model = self.doc.model
        jobs = self.doc.analyze_jobs()
        if model is None or not jobs:
            return
        stats = self.doc.stats
        self.analysis.start(
            lambda should_stop: analyze_in_batches(model, stats, jobs),
            f"Measuring {len(jobs)} tensors",
        )

    def _on_analysis_batch(self, batch: object) -> None:
        stored = [key for key, outcome in batch if self.doc.store(key, outcome)]  # type: ignore[union-attr]
        self.table.refresh(stored)
        self.table.update_summary()
        if set(stored) & set(self._visible_keys()):
            self._show_selection()

    def _on_analysis_done(self, _count: object) -> None:
        self.table.update_summary()
        self.analysisFinished.emit()

    # ================================================================= the selected layer
    def _visible_keys(self) -> list[TensorKey]:
        """The selected layer's weight and activation: what the layer view shows."""
        key = self.doc.selection
        if key is None or not self.doc.has(key):
            return []
        layer = self.doc.tensor(key).layer
        keys: list[TensorKey] = []
        if layer.weight is not None:
            keys.append((layer.weight, TensorKind.WEIGHT))
        if key[1] is TensorKind.ACTIVATION:
            keys.append(key)
        elif layer.activations:
            keys.append((layer.activations[0], TensorKind.ACTIVATION))
        return keys

    def _ensure_result(self, key: TensorKey) -> TensorResult | None:
        """The tensor's result, measured now if missing; errors are reported once."""
        result = self.doc.result(key)
        if result is not None or not self.doc.can_analyze(key) or self.doc.error(key):
            return result
        result = self.doc.analyze(key)
        if result is None and self.doc.error(key):
            self.reporter.report(QvizError(f"{key[0]}: {self.doc.error(key)}"))
        self.table.refresh([key])
        return result

    def _show_selection(self) -> None:
        """Redraw the layer view and the controls for the selected tensor."""
        doc = self.doc
        key = doc.selection
        if doc.model is None or key is None or not doc.has(key):
            self.layer_view.clear()  # type: ignore[attr-defined]
            self.controls.set_tensor(None, None)
            return
        weight_res = activation_res = None
        weight_values = activation_stats = None
        ranges: dict = {}
        for k in self._visible_keys():
            result = self._ensure_result(k)
            ranges.update(doc.method_ranges(k))
            if k[1] is TensorKind.WEIGHT:
                weight_res = result
                weight_values = doc.weight_values(k[0]) if result is not None else None
            else:
                activation_res = result
                if doc.stats is not None:
                    activation_stats = doc.stats.tensors.get(k[0])
        self.layer_view.show_layer(  # type: ignore[attr-defined]
            weight_res, weight_values, activation_res, activation_stats, ranges
        )
        tensor = doc.tensor(key)
        shown = doc.result(key)
        current = None
        if shown is not None:
            current = shown.metrics.envelope
        info = TensorInfo(key[0], key[1], tensor.layer.name, tensor.layer.op_type, current)
        self.controls.set_tensor(info, doc.config_for(key))

    def select_tensor(self, key: TensorKey) -> None:
        """Select a tensor's row (and show its layer)."""
        self.table.select(key)
        if self.doc.selection != key:  # the row was current already: no signal came
            self._on_tensor_selected(key)

    def _on_tensor_selected(self, key: object) -> None:
        if not isinstance(key, tuple) or not self.doc.has(key):  # type: ignore[arg-type]
            return
        self.doc.selection = key  # type: ignore[assignment]
        with self._guard("Showing the layer"):
            self._show_selection()
            tensor = self.doc.tensor(key)  # type: ignore[arg-type]
            self._set_status(f"{tensor.layer.name} ({tensor.layer.op_type}): {key[0]}")

    # ================================================================= changing settings
    def apply_config(self, cfg: TensorConfig, scope: ApplyScope = ApplyScope.TENSOR) -> None:
        """Apply `cfg` to the selected tensor, its op type or all its kind; redraw."""
        key = self.doc.selection
        if key is None:
            return
        with self._guard("Applying the settings"):
            started = time.perf_counter()
            changed = self.doc.apply(key, cfg, scope)
            self._after_change(changed, started)
            where = {
                ApplyScope.TENSOR: key[0],
                ApplyScope.OP_TYPE: f"every {self.doc.tensor(key).layer.op_type} {key[1].value}",
                ApplyScope.ALL: f"every {key[1].value}",
            }[scope]
            self._set_status(
                f"{cfg.label} → {where} ({len(changed)} changed; redrawn in "
                f"{self.last_update_ms:.0f} ms)"
            )

    def replace_config(self, config: QuantConfig, what: str = "the configuration") -> None:
        """Replace the whole configuration (e.g. a mixed-precision point); redraw what changed."""
        with self._guard("Applying the configuration"):
            started = time.perf_counter()
            changed = self.doc.set_config(config)
            self._after_change(changed, started)
            self._set_status(f"Applied {what}: {len(changed)} tensors changed")

    def _on_config_edited(self, cfg: object, scope: object) -> None:
        assert isinstance(cfg, TensorConfig) and isinstance(scope, ApplyScope)
        self.apply_config(cfg, scope)

    def _on_clip_range_edited(self, name: str, kind: object, lo: float, hi: float) -> None:
        """A clip band dragged on a histogram: that tensor gets this Manual range."""
        assert isinstance(kind, TensorKind)
        key = (name, kind)
        if not self.doc.has(key):
            return
        with self._guard("Setting the clip range"):
            started = time.perf_counter()
            changed = self.doc.set_manual_range(key, lo, hi)
            if self.doc.selection != key:
                self.doc.selection = key
                self.table.select(key)
            self._after_change(changed, started)
            self._set_status(
                f"{name}: manual clip range [{lo:.4g}, {hi:.4g}] (redrawn in "
                f"{self.last_update_ms:.0f} ms)"
            )

    def _after_change(self, changed: Sequence[TensorKey], started: float) -> None:
        self._show_selection()  # the visible tensors are measured here, synchronously
        self.table.refresh(list(changed))
        self.table.update_summary()
        self.last_update_ms = (time.perf_counter() - started) * 1000.0
        self.viewUpdated.emit()
        if changed:
            self.setWindowModified(True)
        self._start_analysis()  # the rest of the changed tensors, in the background

    def _on_log_counts_toggled(self) -> None:
        on = self.log_counts_action.isChecked()
        self.doc.log_counts = on
        set_log = getattr(self.layer_view, "set_log_counts", None)
        if set_log is not None:
            set_log(on)

    def _focus_filter(self) -> None:
        self.table.focus_filter()

    # ================================================================= saving
    def save_session(self) -> None:
        if self._session_path is None:
            self.save_session_as_dialog()
        else:
            self.save_session_to(self._session_path)

    def save_session_to(self, path: str | Path) -> None:
        p = Path(path)
        with self._guard(f"Saving {p.name}"):
            if self.doc.model is None:
                raise QvizError("nothing to save: open a model first")
            save_session(p, self.doc.to_session())
            self._session_path = p
            self.recent.add(p)
            self.setWindowModified(False)
            self._set_status(f"Session saved to {p}")

    def save_stats_to(self, path: str | Path) -> None:
        p = Path(path)
        with self._guard(f"Saving {p.name}"):
            if self.doc.stats is None:
                raise QvizError("no statistics yet: calibrate first")
            save_stats(self.doc.stats, p)
            self.doc.stats_path = p
            self._set_status(f"Statistics saved to {p}")

    # ================================================================= dialogs
    def _ask_open(self, title: str, filters: str) -> Path | None:
        name, _ = QFileDialog.getOpenFileName(self, title, str(self._start_dir()), filters)
        return Path(name) if name else None

    def _start_dir(self) -> Path:
        for p in (self._session_path, self.doc.model_path):
            if p is not None:
                return p.parent
        return Path.cwd()

    def open_model_dialog(self) -> None:
        if (p := self._ask_open("Open model", MODEL_FILTER)) is not None:
            self.open_model(p)

    def open_data_dialog(self) -> None:
        if (p := self._ask_open("Open calibration data", DATA_FILTER)) is not None:
            self.open_data(p)

    def open_stats_dialog(self) -> None:
        if (p := self._ask_open("Open statistics", STATS_FILTER)) is not None:
            self.open_stats(p)

    def open_session_dialog(self) -> None:
        if (p := self._ask_open("Open session", SESSION_FILTER)) is not None:
            self.open_session(p)

    def save_session_as_dialog(self) -> None:
        if self.doc.model is None:
            self._set_status("Nothing to save: open a model first")
            return
        default = self._start_dir() / f"{self.doc.model_path.stem if self.doc.model_path else 'session'}{SESSION_SUFFIX}"  # noqa: E501
        name, _ = QFileDialog.getSaveFileName(self, "Save session", str(default), SESSION_FILTER)
        if name:
            path = name if name.endswith(SESSION_SUFFIX) else name + SESSION_SUFFIX
            self.save_session_to(path)

    def save_stats_dialog(self) -> None:
        if self.doc.stats is None:
            self._set_status("No statistics yet: calibrate first")
            return
        name, _ = QFileDialog.getSaveFileName(
            self, "Save statistics", str(self._start_dir() / f"stats{STATS_SUFFIX}"), STATS_FILTER
        )
        if name:
            self.save_stats_to(name if name.endswith(STATS_SUFFIX) else name + STATS_SUFFIX)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        paths = self.recent.paths()
        if not paths:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
            return
        for p in paths:
            action = self.recent_menu.addAction(p.name)
            action.setToolTip(str(p))
            action.setStatusTip(str(p))
            action.setEnabled(p.exists())
            action.triggered.connect(lambda _c=False, path=p: self.open_path(path))
        self.recent_menu.addSeparator()
        self.recent_menu.addAction("Clear Recent Files").triggered.connect(self.recent.clear)

    def _show_shortcuts(self) -> None:
        lines = [
            "Ctrl+O  open model", "Ctrl+D  open calibration data",
            "Ctrl+Shift+T  open statistics", "Ctrl+Shift+O  open session",
            "Ctrl+S  save session", "F5  recalibrate", "Esc  cancel the run",
            "1–5  MinMax, Percentile, Entropy, MSE, Manual", "Ctrl+L  log histogram counts",
            "Ctrl+F  filter the layer table", "Ctrl+Q  quit",
        ]
        lines[-1:-1] = ["Ctrl+R  evaluate: every sample, native INT8", "Ctrl+E  export"]
        lines[-1:-1] = ["F6  sensitivity of every layer", "Ctrl+Shift+M  mixed precision"]
        box = QMessageBox(QMessageBox.Icon.Information, "Keyboard shortcuts", "\n".join(lines),
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
        QTimer.singleShot(0, lambda: self.open_paths(paths))

    def open_paths(self, paths: Sequence[Path]) -> None:
        """Open several files at once (a drop): a model and its data or statistics together."""
        with self._guard("Opening the dropped files"):
            kinds = {p: classify_path(p) for p in paths}
            by_kind = {k: [p for p, kk in kinds.items() if kk is k] for k in PathKind}
            if by_kind[PathKind.SESSION]:
                self.open_session(by_kind[PathKind.SESSION][0])
            elif by_kind[PathKind.MODEL]:
                data = by_kind[PathKind.DATA][0] if by_kind[PathKind.DATA] else None
                stats = by_kind[PathKind.STATS][0] if by_kind[PathKind.STATS] else None
                self.open_model(by_kind[PathKind.MODEL][0], data_path=data, stats_path=stats)
            elif by_kind[PathKind.STATS]:
                self.open_stats(by_kind[PathKind.STATS][0])
            elif by_kind[PathKind.DATA]:
                self.open_data(by_kind[PathKind.DATA][0])

    # ================================================================= model-level evaluation
    def _build_evaluation(self) -> None:
        """Live end-to-end numbers (`evaluation`), the model dock, Run ▸ Evaluate and
        File ▸ Export…. Any change of settings (and every calibration) re-evaluates a subset
        in the background, debounced; Evaluate runs every sample with the native kernels."""
        self.evaluation = EvaluationController(self.doc, self)
        self.model_dock = ModelDock(self)
        self.model_panel = self.model_dock.panel
        # Bottom: the layer view keeps its width, and the depth plot gets room for names.
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.model_dock)
        self.resizeDocks([self.model_dock], [250], Qt.Orientation.Vertical)
        self.last_export_dialog: ExportDialog | None = None
        a = self._action
        self.evaluate_action = a(
            "&Evaluate (Full)", "Every sample with ONNX Runtime's fused INT8 kernels: accuracy, "
            "fusion per layer and latency (progress and Cancel in the status bar)",
            self.evaluate_full, "Ctrl+R",
        )
        self.live_evaluation_action = a(
            "&Live Evaluation", f"Re-evaluate the first {LIVE_LIMIT} samples (simulation) in "
            "the background after every change", self._on_live_evaluation_toggled,
        )
        self.live_evaluation_action.setCheckable(True)
        self.live_evaluation_action.setChecked(True)
        self.export_action = a(
            "&Export…", "Write the Q/DQ model, config file, ORT overrides, TensorRT cache or "
            "a report", self.open_export_dialog, "Ctrl+E",
        )
        self.run_menu.addSeparator()
        self.run_menu.addAction(self.evaluate_action)
        self.run_menu.addAction(self.live_evaluation_action)
        file_menu = next(m.menu() for m in self.menuBar().actions() if m.text() == "&File")
        file_menu.insertAction(self.quit_action, self.export_action)
        file_menu.insertSeparator(self.quit_action)
        self.view_menu.addAction(self.model_dock.toggleViewAction())

        ev = self.evaluation
        self.calibrationFinished.connect(ev.settings_changed)
        self.viewUpdated.connect(ev.settings_changed)  # every settings change ends there
        self.modelLoaded.connect(self._on_model_for_evaluation)
        ev.invalidated.connect(self._on_evaluation_invalidated)
        ev.evaluated.connect(self._on_evaluated)
        ev.unavailable.connect(self.model_panel.set_unavailable)
        ev.problem.connect(self.model_panel.set_problem)
        ev.failed.connect(lambda exc: self.reporter.report(exc, "Live evaluation"))
        self.model_panel.evaluateRequested.connect(self.evaluate_full)
        self.model_panel.depth_view.layerClicked.connect(self._on_depth_point_clicked)
        self.table.tensorSelected.connect(lambda _key: self._ring_selected_layer())

    def evaluate_full(self) -> None:
        """Run ▸ Evaluate: every sample, native INT8 kernels, fusion and latency."""
        with self._guard("Evaluating"):
            if self.jobs.is_busy:
                self._set_status(f"{self._job_label} is running: evaluate when it is done")
                return
            make = self.evaluation.full_job()
            self._start_job(make, FULL_EVALUATION_LABEL, self._on_full_evaluation_done)

    def _on_full_evaluation_done(self, value: object) -> None:
        outcome = self.evaluation.accept_full(value)
        if outcome is None:
            self._set_status("Evaluation finished for earlier settings: dropped. Ctrl+R again.")
            return
        acc = outcome_texts(outcome)["accuracy"]
        what = (
            f"accuracy {acc[0]} float → {acc[1]} native INT8 ({acc[2]})"
            if acc[2] else f"output SQNR {outcome_texts(outcome)['sqnr'][1]}"
        )
        verdict = {True: " · PASS", False: " · FAIL", None: ""}[self.model_panel.passed]
        self._set_status(f"Evaluated on {outcome.label}: {what}{verdict}")

    def _on_evaluated(self, outcome: EvaluationOutcome) -> None:
        local = {
            r.name: float(r.metrics.sqnr_db)
            for r in outcome.results
            if r.kind is TensorKind.ACTIVATION
        }
        self.model_panel.show_outcome(outcome, local)
        self._ring_selected_layer()
        if outcome.full:
            self.table.set_fusion(outcome.evaluation.fusion, current=True)

    def _on_evaluation_invalidated(self) -> None:
        self.table.mark_fusion_stale()
        if self.jobs.is_busy and self.jobs.label == FULL_EVALUATION_LABEL:
            self.jobs.cancel()  # its numbers would be for settings no longer shown
        if self.evaluation.live_enabled:
            pending = f"Updating: simulation, first {LIVE_LIMIT} samples…"
        else:
            pending = "Settings changed: Evaluate (Ctrl+R) to measure them"
        self.model_panel.set_pending(pending)

    def _on_model_for_evaluation(self) -> None:
        self.table.set_fusion(None)
        self.evaluation.reset()

    def _on_live_evaluation_toggled(self) -> None:
        self.evaluation.set_live_enabled(self.live_evaluation_action.isChecked())

    def _ring_selected_layer(self) -> None:
        """Ring, on the depth plot, the input of the layer shown in the layer view."""
        acts = [k[0] for k in self._visible_keys() if k[1] is TensorKind.ACTIVATION]
        self.model_panel.set_selected_tensor(acts[0] if acts else None)

    def _on_depth_point_clicked(self, tensor: str) -> None:
        key = (tensor, TensorKind.ACTIVATION)
        if self.doc.has(key):
            self.select_tensor(key)

    def open_export_dialog(self) -> ExportDialog | None:
        """File ▸ Export…: the dialog, on what is on screen now (window-modal, not blocking)."""
        if self.doc.model is None:
            self._set_status("Nothing to export: open a model first")
            return None
        if self.last_export_dialog is not None:
            self.last_export_dialog.deleteLater()
        dialog = ExportDialog(
            self.doc.model,
            self.doc.model_path,
            self.doc.stats,
            self.doc.config,
            self.reporter,
            outcome=self.evaluation.current,
            criteria=self.model_panel.criteria(),
            directory=self._start_dir(),
            parent=self,
        )
        dialog.exported.connect(lambda r: self._set_status(f"Exported {r.written[0]}"))
        self.last_export_dialog = dialog
        dialog.open()
        return dialog

    # ================================================================= closing
    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop every run and wait for its thread, so none outlives the window."""
        self._job_done = None
        try:
            clean = self.jobs.shutdown(SHUTDOWN_TIMEOUT_S)
            clean = self.analysis.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            clean = self.evaluation.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            for dialog in self.findChildren(ExportDialog):
                clean = dialog.runner.shutdown(SHUTDOWN_TIMEOUT_S) and clean
            if not clean:
                log.warning("a background run did not stop within %.0f s", SHUTDOWN_TIMEOUT_S)
        except Exception:
            # An exception escaping a Qt event override is fatal in PySide 6.11 (shiboken
            # crashes while printing it); closing must always succeed.
            log.exception("error while stopping background runs on close")
        super().closeEvent(event)
