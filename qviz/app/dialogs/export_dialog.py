"""The Export dialog: the files production consumes, written from what is on screen.

One format at a time (`ExportFormat`): the Q/DQ ONNX model, qviz's config file, ONNX Runtime
TensorQuantOverrides, a TensorRT calibration cache, or a report (HTML/Markdown with SVG plots,
and JSON; optionally with the latest evaluation and the acceptance criteria's verdicts).
The tensors are analysed afresh from the document's statistics and configuration, so the
file is exactly the configuration the panel measured. The export runs on a background
runner; the core writes every file atomically, so a failed export leaves nothing behind.
Success is said in the dialog with the path; a failure goes to the window's error reporter
and the dialog stays usable.

A Q/DQ model is then timed against float at the chosen batch and thread count (the
session's data, else random input): the dialog says how fast it ran and, when it is slower,
warns in one line with the layer losing most, why, and the configuration that would not be
(`qviz.core.runtime.speed_check`). The file is written either way.
"""

from __future__ import annotations

import html
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QRegularExpression, Qt, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.dialogs.export_speed import check_exported_speed, float_slow_layers
from qviz.core.calibration.config import QuantConfig
from qviz.core.document.compare import Pinned
from qviz.core.document.jobs import EvaluationOutcome, analyze_with_progress
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.evaluate import Evaluation
from qviz.core.files.config_file import save_config
from qviz.core.files.export import (
    TRT_DEFAULT_VERSION,
    ExportFormat,
    export_qdq,
)
from qviz.core.files.export_transformed import export_transformed
from qviz.core.files.inputs import model_files
from qviz.core.files.outputs import check_output
from qviz.core.files.report import build_report, write_report
from qviz.core.graph.qdq import QdqModel
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, run_to_completion
from qviz.core.runtime.slow_layers import SlowLayers
from qviz.core.runtime.speed_check import SpeedCheck
from qviz.core.stats.collect import CalibrationStats
from qviz.core.transforms.plan import transform_model

SUCCESS_COLOR = "#2e7d32"
ERROR_COLOR = "#c62828"
WARNING_COLOR = "#b71c1c"

# What the file is called by default, after the model's name.
_DEFAULT_NAMES = {
    ExportFormat.QDQ: "{stem}.qdq.onnx",
    ExportFormat.CONFIG: "{stem}.qviz-config.json",
    ExportFormat.ORT_OVERRIDES: "{stem}.ort-overrides.json",
    ExportFormat.TRT_CACHE: "{stem}.trt-calibration.cache",
    ExportFormat.REPORT: "{stem}-report.html",
}
_FILTERS = {
    ExportFormat.QDQ: "ONNX models (*.onnx)",
    ExportFormat.CONFIG: "qviz config files (*.json)",
    ExportFormat.ORT_OVERRIDES: "JSON (*.json)",
    ExportFormat.TRT_CACHE: "TensorRT calibration caches (*.cache *.calib *.bin)",
    ExportFormat.REPORT: "HTML report (*.html);;Markdown report (*.md);;JSON report (*.json)",
}


def default_name(fmt: ExportFormat, model_path: Path | None) -> str:
    stem = "model" if model_path is None else model_path.stem
    return _DEFAULT_NAMES[fmt].format(stem=stem)


@dataclass(frozen=True)
class ExportRequest:
    """Everything one export needs; frozen, so it can cross to the worker thread."""

    fmt: ExportFormat
    path: Path
    model: LoadedModel
    stats: CalibrationStats
    config: QuantConfig
    evaluation: Evaluation | None = None
    evaluation_label: str = ""
    criteria: tuple[Criterion, ...] = ()
    trt_version: str = TRT_DEFAULT_VERSION
    speed_batch: int | None = None  # a Q/DQ model is timed against float at this batch
    threads: int = 0
    data_path: Path | None = None  # the timing's inputs (None: random)
    # Layers whose integer kernel is slower than float here (needs the timing, speed_batch).
    slow_layers: SlowLayers = SlowLayers.FLOAT


@dataclass(frozen=True)
class ExportResult:
    fmt: ExportFormat
    written: tuple[Path, ...]
    n_tensors: int
    notes: tuple[str, ...]
    speed: SpeedCheck | None = None
    speed_problem: str = ""  # why the timing could not run (the file is written anyway)


def run_export(req: ExportRequest) -> ExportResult:
    """Analyse the tensors for the request's configuration and write the file(s)."""
    return run_to_completion(export_steps(req))


def export_steps(req: ExportRequest) -> Generator[Progress, None, ExportResult]:
    """`run_export` as a job: Progress while the tensors are measured (with the time left),
    then while the file is written."""
    started = time.perf_counter()
    plan = transform_model(req.model, req.stats, req.config)  # SmoothQuant, equalization
    model = plan.model
    results = yield from analyze_with_progress(model, plan.stats, req.config)
    yield Progress(0, 0, time.perf_counter() - started, None, f"writing {req.path.name}")
    if not results and req.fmt is not ExportFormat.CONFIG:
        raise QvizError("the configuration quantizes nothing: nothing to export")
    written: tuple[Path, ...] = (req.path,)
    notes: tuple[str, ...] = plan.notes
    qdq: QdqModel | None = None
    try:
        if req.fmt is ExportFormat.QDQ:
            results, floated = float_slow_layers(req, model, results)
            qdq = export_qdq(model, results, req.path)
            notes += (*qdq.notes, *floated)
        elif req.fmt is ExportFormat.CONFIG:
            save_config(req.path, model, req.config, results, plan)
        elif req.fmt in (ExportFormat.ORT_OVERRIDES, ExportFormat.TRT_CACHE):
            written = export_transformed(req.fmt, plan, results, req.path, req.trt_version)
        else:
            extra = [f"evaluation: {req.evaluation_label}"] if req.evaluation is not None else []
            report = build_report(
                model,
                results,
                req.evaluation,
                config=req.config,
                criteria=req.criteria if req.evaluation is not None else (),
                notes=["exported from the qviz app", *extra],
            )
            written = write_report(report, req.path)
    except OSError as exc:  # a folder that is a file, no permission, disk full...
        reason = exc.strerror or str(exc)
        where = exc.filename or req.path
        raise QvizError(f"cannot write {where}: {reason}") from exc
    if qdq is None or req.speed_batch is None:
        return ExportResult(req.fmt, written, len(results), notes)
    speed, problem = check_exported_speed(req, model, results, qdq)
    return ExportResult(req.fmt, written, len(results), notes, speed, problem)


class ExportDialog(QDialog):
    """Choose a format and a path; Export writes it in the background.

    `exported(ExportResult)` on success, `exportFailed(message)` on failure (the message was
    also given to the reporter).
    """

    exported = Signal(object)
    exportFailed = Signal(str)

    def __init__(
        self,
        model: LoadedModel | None,
        model_path: Path | None,
        stats: CalibrationStats | None,
        config: QuantConfig,
        reporter: ErrorReporter,
        *,
        outcome: EvaluationOutcome | None = None,
        criteria: Sequence[Criterion] = (),
        directory: Path | None = None,
        pinned: Pinned | None = None,
        inputs: Sequence[Path | None] = (),
        data_path: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export — qviz")
        self.setMinimumWidth(640)
        self._model = model
        self._model_path = model_path
        self._stats = stats
        self._config = config
        self._reporter = reporter
        self._outcome = outcome
        self._criteria = tuple(criteria)
        self._inputs = tuple(inputs)  # files the session reads: an export never replaces one
        self._directory = directory if directory is not None else Path.cwd()
        self._data_path = data_path
        self.last_result: ExportResult | None = None
        self.runner = BackgroundRunner("export", self)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(self._on_failed)
        self.runner.busyChanged.connect(self._on_busy)
        self.runner.progressed.connect(self._on_progress)

        # With a configuration pinned for comparison, either one can be exported.
        self._pinned = pinned
        self.which_combo = QComboBox()
        self.which_combo.addItem("B: the current configuration", "B")
        if pinned is not None:
            self.which_combo.addItem(f"A: the pinned configuration ({pinned.label})", "A")
        self.which_combo.setToolTip("Which configuration to export (Edit ▸ Pin as A compares)")

        self.format_combo = QComboBox()
        for fmt in ExportFormat:
            self.format_combo.addItem(fmt.description, fmt)
        self.format_combo.setToolTip("What to write")

        self.path_edit = QLineEdit()
        self.path_edit.setToolTip("The file to write (a report: .html, .md, .json, or a folder)")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self.browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)

        # Report options.
        self.include_evaluation_check = QCheckBox()
        self.evaluation_label = QLabel()
        self.evaluation_label.setWordWrap(True)
        if outcome is not None:
            self.include_evaluation_check.setText(
                f"Include the evaluation: {outcome.label} of {outcome.data_name}"
            )
            self.include_evaluation_check.setChecked(True)
            if self._criteria:
                judged = [c.check(outcome.evaluation) for c in self._criteria]
                verdict = "PASS" if all(v.passed for v in judged) else "FAIL"
                self.evaluation_label.setText(
                    f"with the verdict {verdict} on {'; '.join(c.spec for c in self._criteria)} "
                    "(the model panel's criteria)"
                )
        else:
            self.include_evaluation_check.setText("Include the evaluation")
            self.include_evaluation_check.setEnabled(False)
            self.evaluation_label.setText(
                "None yet for these settings: wait for the live numbers, or Evaluate (Ctrl+R)"
            )
        self.evaluation_label.setVisible(bool(self.evaluation_label.text()))
        self.report_hint = QLabel(
            "Suffix .html or .md: the page, its SVG plots and JSON; .json; none: a folder."
        )
        self.report_hint.setWordWrap(True)
        self.report_hint.setStyleSheet("color: #5f6368;")

        # TensorRT options.
        self.trt_version_edit = QLineEdit(TRT_DEFAULT_VERSION)
        self.trt_version_edit.setValidator(
            QRegularExpressionValidator(QRegularExpression(r"\d{1,6}"), self)
        )
        self.trt_version_edit.setToolTip(
            "TensorRT version in the cache header (8601 = 8.6.1); TensorRT ignores a cache "
            "written for another version and calibrates again"
        )
        self.trt_version_edit.setMaximumWidth(100)

        # Speed check of a Q/DQ model.
        self.speed_check = QCheckBox("Time it against float at batch")
        self.speed_check.setChecked(True)
        self.speed_check.setToolTip(
            "After writing, run the exported model and the float one side by side in ONNX "
            "Runtime and say whether the quantized model is slower (and why)"
        )
        self.speed_batch_spin = QSpinBox()
        self.speed_batch_spin.setRange(1, 65536)
        self.speed_batch_spin.setValue(1)
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 1024)
        self.threads_spin.setSpecialValueText("ORT's choice")
        self.threads_spin.setToolTip("Intra-op threads ONNX Runtime runs both models with")
        self.slow_layers_check = QCheckBox(
            "Leave layers whose integer kernel is slower than float here in float"
        )
        self.slow_layers_check.setChecked(True)
        self.slow_layers_check.setToolTip(
            "Measured per layer at the batch above; a layer whose precision you set yourself "
            "stays as you set it"
        )
        self.speed_check.toggled.connect(self.speed_batch_spin.setEnabled)
        self.speed_check.toggled.connect(self.threads_spin.setEnabled)
        self.speed_check.toggled.connect(self.slow_layers_check.setEnabled)
        speed_row = QHBoxLayout()
        speed_row.setContentsMargins(0, 0, 0, 0)
        speed_row.addWidget(self.speed_check)
        speed_row.addWidget(self.speed_batch_spin)
        speed_row.addWidget(QLabel("threads"))
        speed_row.addWidget(self.threads_spin)
        speed_row.addStretch(1)
        self.speed_options = QWidget()
        speed_box = QVBoxLayout(self.speed_options)
        speed_box.setContentsMargins(0, 0, 0, 0)
        speed_box.addLayout(speed_row)
        speed_box.addWidget(self.slow_layers_check)
        timed_on = "the session's data" if data_path is not None else "random input (no data)"
        self.speed_options.setToolTip(f"The timing runs on {timed_on}")

        form = QFormLayout()
        if pinned is not None:
            form.addRow("Configuration", self.which_combo)
        else:
            self.which_combo.hide()
        form.addRow("Format", self.format_combo)
        form.addRow("File", path_row)
        self.report_label = QLabel("Report")
        report_box = QVBoxLayout()
        report_box.addWidget(self.include_evaluation_check)
        report_box.addWidget(self.evaluation_label)
        report_box.addWidget(self.report_hint)
        self.report_options = QWidget()
        self.report_options.setLayout(report_box)
        report_box.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.report_label, self.report_options)
        self.trt_label = QLabel("TensorRT version")
        form.addRow(self.trt_label, self.trt_version_edit)
        self.speed_label = QLabel("Speed")
        form.addRow(self.speed_label, self.speed_options)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setMaximumHeight(12)
        self.progress.setTextVisible(False)
        self.progress.hide()

        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.export_button.setDefault(True)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        # Accept would close the dialog: Export writes and stays open for the next format.
        self.export_button.clicked.connect(self.export_now)
        self.close_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        what = "no model open" if model_path is None else str(model_path)
        source = QLabel(
            f"Model: {what}\nConfiguration: {config.weights.label} (weights), "
            f"{config.activations.label} (activations), "
            f"{len(config.overrides)} per-tensor overrides"
        )
        source.setWordWrap(True)
        source.setStyleSheet("color: #5f6368;")
        layout.addWidget(source)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        layout.addWidget(self.buttons)

        self._last_default = ""
        self.format_combo.currentIndexChanged.connect(self._on_format_changed)
        self._on_format_changed()

    # ----------------------------------------------------------------- public API
    @property
    def export_format(self) -> ExportFormat:
        return self.format_combo.currentData()

    def set_format(self, fmt: ExportFormat) -> None:
        self.format_combo.setCurrentIndex(self.format_combo.findData(fmt))

    def set_path(self, path: str | Path) -> None:
        self.path_edit.setText(str(path))

    def browse(self) -> None:
        fmt = self.export_format
        name, _ = QFileDialog.getSaveFileName(
            self,
            f"Export {fmt.description}",
            self.path_edit.text(),
            f"{_FILTERS[fmt]};;All files (*)",
        )
        if name:
            self.path_edit.setText(name)

    def export_now(self) -> bool:
        """Start writing the chosen format to the chosen path; False if refused up front."""
        try:
            request = self._request()
        except QvizError as exc:
            self._show_failure(self._reporter.report(exc, "Exporting"))
            return False
        self.status_label.setText(f"Writing {request.path}…")
        self.status_label.setStyleSheet("")
        label = f"Exporting {request.fmt.value}"
        self.runner.start(lambda _should_stop: export_steps(request), label)
        return True

    @property
    def busy(self) -> bool:
        return self.runner.is_busy

    # ----------------------------------------------------------------- internals
    def _on_progress(self, item: object) -> None:
        if isinstance(item, Progress):
            self.status_label.setText(
                f"{item.message}…" if item.total <= 0 else f"Exporting: {item.describe()}"
            )

    def _request(self) -> ExportRequest:
        if self._model is None:
            raise QvizError("nothing to export: open a model first")
        if self._stats is None:
            raise QvizError("calibrate first (Ctrl+D): activations need statistics to export")
        text = self.path_edit.text().strip()
        if not text:
            raise QvizError("choose where to write the file")
        fmt = self.export_format
        path = Path(text).expanduser()
        near = [path]
        check_output(path, inputs=[*self._inputs, *model_files(self._model_path, near=near)])
        version = self.trt_version_edit.text().strip()
        if fmt is ExportFormat.TRT_CACHE and not version.isdigit():
            raise QvizError(f"the TensorRT version must be digits such as 8601, not {version!r}")
        config, outcome = self._config, self._outcome
        if self.which_combo.currentData() == "A" and self._pinned is not None:
            config, outcome = self._pinned.config, self._pinned.evaluation
        include = (
            fmt is ExportFormat.REPORT
            and outcome is not None
            and self.include_evaluation_check.isChecked()
        )
        outcome = outcome if include else None
        return ExportRequest(
            fmt=fmt,
            path=path,
            model=self._model,
            stats=self._stats,
            config=config,
            evaluation=None if outcome is None else outcome.evaluation,
            evaluation_label="" if outcome is None else f"{outcome.label} of {outcome.data_name}",
            criteria=self._criteria if outcome is not None else (),
            trt_version=version or TRT_DEFAULT_VERSION,
            speed_batch=(
                self.speed_batch_spin.value()
                if fmt is ExportFormat.QDQ and self.speed_check.isChecked() else None
            ),
            threads=self.threads_spin.value(),
            data_path=self._data_path,
            slow_layers=(
                SlowLayers.FLOAT if self.slow_layers_check.isChecked() else SlowLayers.QUANTIZE
            ),
        )

    def _on_format_changed(self, _index: int = 0) -> None:
        fmt = self.export_format
        is_report = fmt is ExportFormat.REPORT
        for w in (self.report_label, self.report_options):
            w.setVisible(is_report)
        for w in (self.trt_label, self.trt_version_edit):
            w.setVisible(fmt is ExportFormat.TRT_CACHE)
        for w in (self.speed_label, self.speed_options):
            w.setVisible(fmt is ExportFormat.QDQ)
        # Follow the format with the default name, unless the user typed their own.
        current = Path(self.path_edit.text()) if self.path_edit.text() else None
        name = default_name(fmt, self._model_path)
        if current is None:
            self.path_edit.setText(str(self._directory / name))
        elif current.name == self._last_default:
            self.path_edit.setText(str(current.parent / name))
        self._last_default = name
        self.status_label.clear()
        self.adjustSize()

    def _on_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.export_button.setEnabled(not busy)

    def _on_succeeded(self, value: object) -> None:
        assert isinstance(value, ExportResult)
        self.last_result = value
        chosen = Path(self.path_edit.text().strip()).expanduser()
        first = next((p for p in value.written if p == chosen), value.written[0])
        n_more = len(value.written) - 1
        more = f" and {n_more} more files beside it" if n_more else ""
        notes = "".join(f"<br>note: {html.escape(n)}" for n in value.notes)
        wrote = f"<span style='color:{SUCCESS_COLOR}'><b>Wrote</b></span>"
        self.status_label.setText(
            f"{wrote} {html.escape(str(first))}{more} "
            f"({value.n_tensors} quantized tensors){notes}{_speed_html(value)}"
        )
        self.status_label.setStyleSheet("")
        self.adjustSize()  # the notes can be several lines: grow rather than squash the form
        self.exported.emit(value)

    @property
    def speed_text(self) -> str:
        """What the last export said about speed, as plain text (tests read it)."""
        r = self.last_result
        if r is None or (r.speed is None and not r.speed_problem):
            return ""
        if r.speed is None:
            return f"speed not checked: {r.speed_problem}"
        return r.speed.warning or r.speed.summary

    def _on_failed(self, exc: BaseException) -> None:
        self._show_failure(self._reporter.report(exc, "Exporting"))

    def _show_failure(self, message: str) -> None:
        self.status_label.setText(f"Export failed: {html.escape(message)}")
        self.status_label.setStyleSheet(f"color: {ERROR_COLOR};")
        self.adjustSize()
        self.exportFailed.emit(message)

    def done(self, result: int) -> None:
        """Closing waits for a running export: its file is then whole, or not there."""
        self.runner.shutdown(30.0)
        super().done(result)


def _speed_html(result: ExportResult) -> str:
    """The speed check's line: a summary, or the one-line warning when the model is slower."""
    if result.speed_problem:
        return f"<br>speed not checked: {html.escape(result.speed_problem)}"
    check = result.speed
    if check is None:
        return ""
    where = " (on random input)" if check.random_input else ""
    if check.warning is None:
        return f"<br>Speed: {html.escape(check.summary)}{where}"
    return (
        f"<br><span style='color:{WARNING_COLOR}'><b>Warning:</b> "
        f"{html.escape(check.warning)}{where}</span>"
    )
