"""Run ▸ Sensitivity and Run ▸ Mixed precision…: the wiring between the window and the core.

`SensitivityController` adds to a `MainWindow`:

* the **Sensitivity** action (F6) and a dock with the bar chart along depth. The core's
  `sensitivity` generator runs on its own `BackgroundRunner` (progress and Cancel in the dock);
  reports are cached on disk (`SensitivityCache`: the same model, scales and samples never run
  twice) and kept in the `Document`, so they are saved with the session and re-opening it
  shows them without a run. The layer table's "Δ if quantized alone" and "recovery if float"
  columns read the same report; when the settings change afterwards, the report is marked as
  measured for earlier settings (greyed) rather than silently describing something else.
  Clicking a bar selects the layer.
* the **Mixed precision…** action (Ctrl+Shift+M): a non-modal dialog that runs the core's
  `mixed_precision` search on a second runner and shows the confirmed answer and the Pareto
  plot; applying a point replaces the document's configuration (`MainWindow.replace_config`),
  so the table and the layer view show it and it can be exported.

Nothing here touches a widget from a worker thread: the runners re-emit on the GUI thread,
and results of superseded runs are dropped by their generation counters. Closing the window
stops both runs and waits for their threads.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget

from qviz.app.controllers.workers import BackgroundRunner, ShouldStop
from qviz.app.dialogs.mixed_dialog import MixedPrecisionDialog, MixedRequest
from qviz.app.views.layer_table import SENSITIVITY_COLUMNS, Column
from qviz.app.views.sensitivity_view import SensitivityPanel, fmt_signed
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import load_data
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Evaluation, EvaluationCancelled, Metric, RunMode, evaluate
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.progress import Progress
from qviz.core.search.mixed import MixedResult, ParetoPoint, mixed_precision
from qviz.core.search.sensitivity import SensitivityReport, sensitivity
from qviz.core.search.sensitivity_cache import SensitivityCache
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.app.main_window import MainWindow
    from qviz.core.calibration.analysis import TensorKey

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
MIXED_BATCH = 128  # the core's default: the answer's confirmation and the baseline alike
DOCK_HEIGHT = 300


def sensitivity_job(
    model: LoadedModel,
    stats: CalibrationStats,
    config: QuantConfig,
    data_path: Path,
    *,
    limit: int,
    metric: Metric | None,
    cache: SensitivityCache | None,
    should_stop: ShouldStop,
) -> Generator[Progress, None, SensitivityReport]:
    """Read the data and measure every layer; all of it on the worker thread."""
    yield Progress(0, 0, 0.0, None, f"reading {data_path.name}")
    data = load_data(data_path, model.inputs)
    return (
        yield from sensitivity(
            model, stats, config, data, metric=metric, limit=limit, cache=cache,
            should_stop=should_stop,
        )
    )  # fmt: skip


@dataclass(frozen=True)
class MixedOutcome:
    """A search's answer, and the lowest precision everywhere measured the same way as the
    answer (every sample, native kernels where the formats allow): the comparison the answer
    is worth making against. ``baseline`` is None when the answer is that configuration."""

    result: MixedResult
    baseline: Evaluation | None


def mixed_job(
    model: LoadedModel,
    stats: CalibrationStats,
    base: QuantConfig,
    data_path: Path,
    request: MixedRequest,
    *,
    cache: SensitivityCache | None,
    should_stop: ShouldStop,
) -> Generator[Progress, None, MixedOutcome]:
    """Read the data, search, then measure the all-lowest baseline on every sample too; all
    of it on the worker thread."""
    yield Progress(0, 0, 0.0, None, f"reading {data_path.name}")
    data = load_data(data_path, model.inputs)
    result: MixedResult = yield from mixed_precision(
        model, stats, base, data, request.criterion, request.allowed,
        objective=request.objective, limit=request.limit, cache=cache,
        batch_size=MIXED_BATCH, should_stop=should_stop,
    )  # fmt: skip
    baseline = result.baseline
    if baseline.index == result.chosen.index or result.evaluation is None:
        return MixedOutcome(result, None)
    label = f"measuring {baseline.label} on every sample"
    gen = evaluate(
        model, analyze(model, stats, baseline.config), data,
        native=result.evaluation.mode is RunMode.NATIVE, precision=result.evaluation.precision,
        batch_size=MIXED_BATCH, latency=False, should_stop=should_stop,
    )  # fmt: skip
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return MixedOutcome(result, stop.value)
        yield Progress(p.done, p.total, p.elapsed_s, p.remaining_s, label)


class SensitivityController(QObject):
    """Sensitivity and mixed precision for one window (see the module docstring)."""

    sensitivityFinished = Signal(object)  # SensitivityReport, now the document's
    sensitivityCancelled = Signal()
    mixedFinished = Signal(object)  # MixedResult
    mixedCancelled = Signal()
    configApplied = Signal(object)  # the QuantConfig a Pareto point put in the document

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.doc = window.doc
        #: Where reports are cached (None: no cache). Tests point it at a temporary folder.
        self.cache: SensitivityCache | None = SensitivityCache()
        self.runner = BackgroundRunner("sensitivity", self)
        self.mixed_runner = BackgroundRunner("mixed precision", self)
        self.metric: Metric | None = None  # None: accuracy with labels, else output SQNR
        self.dialog: MixedPrecisionDialog | None = None
        self.mixed_result: MixedResult | None = None
        self.baseline_evaluation: Evaluation | None = None

        self.panel = SensitivityPanel()
        self.dock = QDockWidget("Sensitivity along depth", window)
        self.dock.setObjectName("sensitivity_dock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(
            Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.TopDockWidgetArea
        )
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        self.dock.hide()
        self._dock_sized = False

        self._build_actions()
        self._place_columns()
        self._connect()
        window.installEventFilter(self)

    # ================================================================= construction
    def _build_actions(self) -> None:
        w = self.window
        self.sensitivity_action = QAction("&Sensitivity", w)
        tip = (
            "Measure every layer end to end: only this layer quantized, only this layer "
            "float (in the background; cached)"
        )
        self.sensitivity_action.setToolTip(tip)
        self.sensitivity_action.setStatusTip(tip)
        self.sensitivity_action.setShortcut(QKeySequence("F6"))
        self.sensitivity_action.triggered.connect(lambda _c=False: self.run_sensitivity())
        self.mixed_action = QAction("&Mixed Precision…", w)
        tip = (
            "Find per-layer precisions (int4, int8, float) that meet an accuracy or SQNR "
            "criterion at the smallest size, measured"
        )
        self.mixed_action.setToolTip(tip)
        self.mixed_action.setStatusTip(tip)
        self.mixed_action.setShortcut(QKeySequence("Ctrl+Shift+M"))
        self.mixed_action.triggered.connect(lambda _c=False: self.open_mixed_dialog())
        for action in (self.sensitivity_action, self.mixed_action):
            w.addAction(action)  # shortcuts work while the menu bar is hidden
        run_menu = getattr(w, "run_menu", None)
        if run_menu is not None:
            run_menu.addSeparator()
            run_menu.addAction(self.sensitivity_action)
            run_menu.addAction(self.mixed_action)
        toggle = self.dock.toggleViewAction()
        toggle.setText("Sensitivity &Panel")
        toggle.setToolTip("Show or hide the sensitivity chart along depth")
        toggle.setStatusTip(toggle.toolTip())
        view_menu = getattr(w, "view_menu", None)
        if view_menu is not None:
            view_menu.addAction(toggle)

    def _place_columns(self) -> None:
        """The sensitivity columns sit right after Clipped: end to end beside local."""
        header = self.window.table.view.horizontalHeader()
        for offset, col in enumerate(SENSITIVITY_COLUMNS):
            header.moveSection(
                header.visualIndex(col), header.visualIndex(Column.CLIPPED) + 1 + offset
            )
        self.window.table.refresh_sensitivity()

    def _connect(self) -> None:
        w = self.window
        r = self.runner
        r.progressed.connect(self._on_progress)
        r.succeeded.connect(self._on_sensitivity_done)
        r.failed.connect(lambda exc: self._on_failed(exc, "Sensitivity", self._on_cancelled))
        r.cancelled.connect(self._on_cancelled)
        r.busyChanged.connect(self.panel.set_running)
        m = self.mixed_runner
        m.progressed.connect(self._on_mixed_progress)
        m.succeeded.connect(self._on_mixed_done)
        m.failed.connect(
            lambda exc: self._on_failed(exc, "Mixed precision", self._on_mixed_cancelled)
        )
        m.cancelled.connect(self._on_mixed_cancelled)
        m.busyChanged.connect(self._on_mixed_busy)
        self.panel.runRequested.connect(self.run_sensitivity)
        self.panel.cancelRequested.connect(self.runner.cancel)
        self.panel.metricChosen.connect(self.set_metric)
        self.panel.chart.layerClicked.connect(self.select_layer)
        w.table.tensorSelected.connect(self._on_tensor_selected)
        w.modelLoaded.connect(self._on_model_loaded)
        for signal in (w.calibrationFinished, w.analysisFinished, w.viewUpdated):
            signal.connect(self.refresh_staleness)

    # ================================================================= state
    @property
    def busy(self) -> bool:
        return self.runner.is_busy or self.mixed_runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads() + self.mixed_runner.live_threads()

    def _inputs(self, what: str) -> tuple[LoadedModel, CalibrationStats, Path]:
        """Model, statistics and data a run needs, or a QvizError saying what is missing."""
        doc = self.doc
        if doc.model is None:
            raise QvizError(f"{what} needs a model: open one first (Ctrl+O)")
        if doc.stats is None:
            raise QvizError(
                f"{what} needs calibration statistics: open calibration data (Ctrl+D) first"
            )
        if doc.data_path is None:
            raise QvizError(
                f"{what} runs the model on data, and none is open: open the data (Ctrl+D)"
            )
        return doc.model, doc.stats, doc.data_path

    # ================================================================= sensitivity
    def run_sensitivity(self) -> None:
        """Measure the current settings' sensitivity in the background (cached)."""
        try:
            model, stats, data_path = self._inputs("Sensitivity")
        except QvizError as exc:
            self.window.reporter.report(exc, "Sensitivity")
            return
        config, limit, metric, cache = self.doc.config, self.panel.limit, self.metric, self.cache
        self.show_dock()
        self.runner.start(
            lambda should_stop: sensitivity_job(
                model, stats, config, data_path, limit=limit, metric=metric, cache=cache,
                should_stop=should_stop,
            ),
            "Sensitivity",
        )  # fmt: skip
        self.window.statusBar().showMessage(
            f"Sensitivity: measuring every layer on {limit} samples of {data_path.name}…"
        )

    def cancel_sensitivity(self) -> bool:
        return self.runner.cancel()

    def show_dock(self) -> None:
        """Show the chart. The first time, it shares a tab with any panel already open in its
        dock area (side by side, two wide panels would force the window wider than the
        screen), and gets a readable height."""
        w = self.window
        if not self._dock_sized:
            self._dock_sized = True
            area = w.dockWidgetArea(self.dock)
            others = [
                d for d in w.findChildren(QDockWidget)
                if d is not self.dock and d.isVisible() and not d.isFloating()
                and w.dockWidgetArea(d) == area
            ]  # fmt: skip
            if others:
                w.tabifyDockWidget(others[0], self.dock)
            self.dock.show()
            w.resizeDocks([self.dock], [DOCK_HEIGHT], Qt.Orientation.Vertical)
        self.dock.show()
        self.dock.raise_()

    def _on_progress(self, item: object) -> None:
        if isinstance(item, Progress):
            self.panel.show_progress(item)

    def _on_sensitivity_done(self, value: object) -> None:
        assert isinstance(value, SensitivityReport)
        doc = self.doc
        if doc.model is None or value.model_sha256 != doc.model.sha256:
            return  # measured on a model that is no longer open
        doc.set_sensitivity(value)
        doc.check_sensitivity()  # settings may have changed while it ran
        self.show_report()
        self.window.setWindowModified(True)
        top = value.ranking()[0] if value.layers else None
        how = "from the cache" if value.cached else f"{value.n_runs} runs"
        most = (
            f"; most sensitive: {top.name} (Δ {fmt_signed(top.drop, value.metric)}, recovery "
            f"{fmt_signed(top.recovery, value.metric)})"
            if top is not None
            else ""
        )
        self.window.statusBar().showMessage(
            f"Sensitivity of {len(value.layers)} layers ({how}){most}"
        )
        self.sensitivityFinished.emit(value)

    def _on_cancelled(self) -> None:
        self.window.statusBar().showMessage("Sensitivity: cancelled")
        self.sensitivityCancelled.emit()

    def _on_failed(self, exc: object, context: str, cancelled: Any) -> None:
        if isinstance(exc, EvaluationCancelled):  # stopped inside a batch: a cancellation
            cancelled()
            return
        assert isinstance(exc, BaseException)
        self.window.reporter.report(exc, context)
        if self.dialog is not None and context == "Mixed precision":
            self.dialog.show_message(f"Failed: {self.window.reporter.last_message}")

    def show_report(self) -> None:
        """Redraw the table columns and the chart from the document's report."""
        doc = self.doc
        self.window.table.refresh_sensitivity()
        self.panel.show_report(doc.sensitivity, doc.sensitivity_stale)
        key = doc.selection
        self.panel.chart.set_current(
            doc.tensor(key).layer.name if key is not None and doc.has(key) else None
        )

    def refresh_staleness(self) -> None:
        """Settings or statistics changed: is the report still theirs?"""
        doc = self.doc
        if doc.sensitivity is None:
            return
        before = doc.sensitivity_stale
        if doc.check_sensitivity() != before:
            self.show_report()

    def set_metric(self, metric: object) -> None:
        """Re-rank the report by another metric (nothing is re-run)."""
        assert isinstance(metric, Metric)
        self.metric = metric
        doc = self.doc
        if doc.sensitivity is None:
            return
        try:
            ranked = doc.sensitivity.with_metric(metric)
        except QvizError as exc:
            self.window.reporter.report(exc, "Sensitivity")
            self.show_report()
            return
        stale = doc.sensitivity_stale
        doc.set_sensitivity(ranked)
        doc.sensitivity_stale = stale
        self.show_report()

    def select_layer(self, name: str) -> None:
        """A bar was clicked: select the layer's weight (or its first tensor) in the table."""
        doc = self.doc
        keys: list[TensorKey] = [t.key for t in doc.tensors if t.layer.name == name]
        if not keys:
            return
        weights = [k for k in keys if k[1] is TensorKind.WEIGHT]
        self.window.select_tensor(weights[0] if weights else keys[0])

    def _on_tensor_selected(self, key: object) -> None:
        if isinstance(key, tuple) and self.doc.has(key):  # type: ignore[arg-type]
            self.panel.chart.set_current(self.doc.tensor(key).layer.name)  # type: ignore[arg-type]

    def _on_model_loaded(self) -> None:
        # Runs started on the previous model must not land on this one.
        self.runner.discard()
        self.mixed_runner.discard()
        self.panel.set_running(False)
        if self.dialog is not None:
            self.dialog.set_running(False)
        result, model = self.mixed_result, self.doc.model
        if result is not None and (
            model is None or result.sensitivity.model_sha256 != model.sha256
        ):  # its configurations name another model's tensors: never apply them here
            self.mixed_result = None
            self.baseline_evaluation = None
            if self.dialog is not None:
                self.dialog.clear_result()
        self.show_report()
        if self.doc.sensitivity is not None:
            self.show_dock()

    # ================================================================= mixed precision
    def open_mixed_dialog(self) -> MixedPrecisionDialog:
        """Show the mixed-precision dialog (one per window; it keeps its last result)."""
        if self.dialog is None:
            d = MixedPrecisionDialog(self.window)
            d.runRequested.connect(self.run_mixed)
            d.cancelRequested.connect(self.mixed_runner.cancel)
            d.pointClicked.connect(self.apply_point)
            d.applyChosenRequested.connect(self.apply_chosen)
            d.set_running(self.mixed_runner.is_busy)
            self.dialog = d
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def run_mixed(self, request: object) -> None:
        """Search for a mixed configuration meeting `request`'s criterion, in the background."""
        assert isinstance(request, MixedRequest)
        dialog = self.open_mixed_dialog()
        try:
            model, stats, data_path = self._inputs("Mixed precision")
        except QvizError as exc:
            self.window.reporter.report(exc, "Mixed precision")
            dialog.show_message(str(exc))
            return
        base, cache = self.doc.config, self.cache
        self.mixed_runner.start(
            lambda should_stop: mixed_job(
                model, stats, base, data_path, request, cache=cache, should_stop=should_stop
            ),
            "Mixed precision",
        )
        self.window.statusBar().showMessage(
            f"Mixed precision: searching for {request.criterion.spec} with "
            f"{request.allowed}…"
        )

    def cancel_mixed(self) -> bool:
        return self.mixed_runner.cancel()

    def _on_mixed_busy(self, busy: bool) -> None:
        if self.dialog is not None:
            self.dialog.set_running(busy)

    def _on_mixed_progress(self, item: object) -> None:
        if isinstance(item, Progress) and self.dialog is not None:
            self.dialog.show_progress(item)

    def _on_mixed_done(self, outcome: object) -> None:
        assert isinstance(outcome, MixedOutcome)
        value = outcome.result
        self.mixed_result = value
        self.baseline_evaluation = outcome.baseline
        if self.dialog is not None:
            self.dialog.show_result(value, outcome.baseline)
        verdict = value.verdict.text if value.verdict is not None else "float model"
        self.window.statusBar().showMessage(
            f"Mixed precision: {verdict}; {len(value.changed)} layers changed"
        )
        self.mixedFinished.emit(value)

    def _on_mixed_cancelled(self) -> None:
        if self.dialog is not None:
            self.dialog.show_message("Search cancelled.")
        self.window.statusBar().showMessage("Mixed precision: cancelled")
        self.mixedCancelled.emit()

    def apply_point(self, point: object) -> None:
        """Make a point's configuration the document's (the table and layer view follow)."""
        assert isinstance(point, ParetoPoint)
        self.window.replace_config(
            point.config, f"mixed-precision point #{point.index} ({point.label})"
        )
        if self.doc.config != point.config:
            return  # not applied (the reporter said why)
        if self.dialog is not None:
            self.dialog.set_applied(point, self.mixed_result)
        self.configApplied.emit(point.config)

    def apply_chosen(self) -> None:
        if self.mixed_result is not None:
            self.apply_point(self.mixed_result.chosen)

    # ================================================================= closing
    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Stop both runs and wait for their threads (bounded)."""
        try:
            clean = self.runner.shutdown(timeout_s)
            clean = self.mixed_runner.shutdown(timeout_s) and clean
        except Exception:  # closing must always succeed
            log.exception("error while stopping sensitivity runs")
            return False
        if not clean:
            log.warning("a sensitivity run did not stop within %.0f s", timeout_s)
        return clean

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False
