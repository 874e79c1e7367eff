"""Run ▸ Mixed precision…: ask for a criterion, search, show the measured answer and the trade-off.

The dialog is a view of the document's mixed-precision answer. It turns the form into a
`MixedRequest` for the controller, shows the search's progress, and then the answer: PASS or
FAIL with the numbers of the confirming evaluation, the size, the layers whose precision
changed — named by graph node and torch module path, so the recommendation can be acted on in
any runtime — and the Pareto plot of every configuration tried. Clicking a point (or "Apply
the answer") applies that configuration to the document as one undoable step, where it can be
inspected layer by layer and exported.
"""

from __future__ import annotations

import html
import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qviz.app.controllers.sensitivity_controller import SensitivityController
from qviz.app.views import plot_style as st
from qviz.app.views.pareto_view import (
    FAIL_COLOR,
    PASS_COLOR,
    ParetoView,
    point_text,
    short_data_name,
)
from qviz.core.document.document import Document
from qviz.core.document.jobs import MixedRequest
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.evaluate import Evaluation, Metric, RunMode
from qviz.core.progress import Progress, format_seconds
from qviz.core.runtime.speed_text import fmt_ms, fmt_speedup
from qviz.core.search.mixed import (
    MixedResult,
    Objective,
    ParetoPoint,
    criterion_metric,
    parse_precisions,
)
from qviz.core.search.sensitivity import DEFAULT_LIMIT
from qviz.core.text import fmt_bytes, fmt_decimals

PRECISIONS: tuple[tuple[str, str], ...] = (
    ("int4", "4-bit integer weights, int8 activations"),
    ("int8", "8-bit integer weights and activations"),
    ("a16w8", "8-bit integer weights, 16-bit integer activations (A16W8: where loud "
              "activation channels defeat 8 bits; simulated on CPU)"),
    ("float", "the layer stays float (its weight and input are not quantized)"),
    ("imported", "the quantized model's own Q/DQ pairs for the layer (a model quantized "
     "elsewhere: imported + float finds the pairs to drop)"),
)
DEFAULT_CRITERION = "accuracy_drop<=0.5"
CHANGED_BG = QColor("#fff3cd")
MAX_NOTES = 2  # shown under the answer; every note is in the tooltip
CHOICE_COLUMNS = ("Layer", "Precision", "Graph node", "Torch module", "Op", "Tensors")


def verdict_text(criterion: Criterion, evaluation: Evaluation) -> tuple[bool, str]:
    """PASS/FAIL and the number behind it, e.g. "PASS: accuracy drop 0.15 points ≤ 0.50"."""
    v = criterion.check(evaluation)
    assert criterion.comparison is not None
    digits = criterion.metric.digits()
    bar = f"{criterion.comparison.symbol} {criterion.threshold:.{digits}f}"
    if v.value is None:
        return False, v.text
    shown = f"{criterion.metric.label} {fmt_decimals(v.value, digits)}{criterion.metric.unit}"
    return v.passed, (f"PASS: {shown} {bar}" if v.passed else f"FAIL: {shown}, not {bar}")


def measured_text(criterion: Criterion, e: Evaluation) -> str:
    """An evaluation's number for `criterion`, in words (plain text)."""
    mode = "native INT8 kernels" if e.mode is RunMode.NATIVE else "the simulation"
    metric = criterion_metric(criterion)
    q = e.quantized_metrics.get(metric, math.nan)
    where = f"all {e.n_samples} samples of {short_data_name(e.data_description)}"
    if metric is Metric.ACCURACY:
        f = e.float_metrics.get(Metric.ACCURACY, math.nan)
        return f"accuracy {q:.2f} % (float {f:.2f} %) on {where}, run with {mode}"
    digits = criterion.metric.digits()
    return (
        f"{criterion.metric.label} {fmt_decimals(q, digits)}{criterion.metric.unit} on {where}, "
        f"run with {mode}"
    )


def size_text(result: MixedResult) -> str:
    size = result.size_bytes
    ratio = result.float_size_bytes / size if size else math.inf
    return (
        f"Size {fmt_bytes(size)} — {ratio:.1f}× smaller than float "
        f"({fmt_bytes(result.float_size_bytes)}); {result.baseline.label} would be "
        f"{fmt_bytes(result.baseline.size_bytes)}"
    )


def changes_text(result: MixedResult) -> str:
    low = result.allowed[0].name
    if not result.changed:
        return f"Every layer at {low}."
    parts = [f"{c.name} → {c.precision}" for c in result.changed]
    return f"Changed from {low}: " + ", ".join(parts)


class MixedPrecisionDialog(QDialog):
    """Non-modal: the document stays usable while the search runs and after it."""

    def __init__(
        self, doc: Document, controller: SensitivityController, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._doc = doc
        self._controller = controller
        self.setWindowTitle("Mixed precision — qviz")
        self.setModal(False)
        self.resize(1280, 720)
        self._result: MixedResult | None = None
        self._running = False

        # ---- the question
        self.criterion_edit = QLineEdit(DEFAULT_CRITERION)
        self.criterion_edit.setToolTip(
            "The bar the model must meet, measured end to end: accuracy_drop<=0.5 (points, "
            "needs labels), sqnr>=30 (output SQNR, dB), cosine>=0.99, agreement>=99 (% top-1 "
            "agreement with the float model)"
        )
        self.criterion_edit.setPlaceholderText("accuracy_drop<=0.5 · sqnr>=30 · cosine>=0.99")
        self.criterion_hint = QLabel()
        self.criterion_edit.textChanged.connect(self._validate)
        self.precision_checks: dict[str, QCheckBox] = {}
        checks = QHBoxLayout()
        for name, tip in PRECISIONS:
            box = QCheckBox(name)
            box.setChecked(True)
            box.setToolTip(f"A layer may be {name}: {tip}")
            box.toggled.connect(self._validate)
            self.precision_checks[name] = box
            checks.addWidget(box)
        checks.addStretch(1)
        self.objective_combo = QComboBox()
        self.objective_combo.addItem("smallest model", Objective.SIZE)
        self.objective_combo.addItem("fewest float layers", Objective.FLOAT_LAYERS)
        self.objective_combo.addItem("fastest (measured here)", Objective.FASTEST)
        self.objective_combo.setToolTip(
            "What the cheapest passing configuration means: the smallest size, the fewest "
            "layers kept float (then the smallest), or the fastest: every layer timed at each "
            "precision on this machine, the answer timed against float"
        )
        # The speed objective's timing: batch and threads.
        self.speed_batch_spin = QSpinBox()
        self.speed_batch_spin.setRange(1, 65536)
        self.speed_batch_spin.setValue(1)
        self.speed_batch_spin.setPrefix("batch ")
        self.speed_batch_spin.setToolTip("The batch size the models are timed at")
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 1024)
        self.threads_spin.setSpecialValueText("ORT's threads")
        self.threads_spin.setSuffix(" threads")
        self.threads_spin.setToolTip("Intra-op threads ONNX Runtime times the models with")
        self.objective_combo.currentIndexChanged.connect(self._on_objective)
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(16, 1_000_000)
        self.limit_spin.setSingleStep(100)
        self.limit_spin.setValue(DEFAULT_LIMIT)
        self.limit_spin.setToolTip(
            "Samples each candidate is measured on during the search (the first N). The "
            "answer is always confirmed on every sample."
        )
        self.run_button = QPushButton("Search")
        self.run_button.setDefault(True)
        self.run_button.setToolTip(
            "Start from every layer at the lowest allowed precision, promote the layers that "
            "matter most, demote what was not needed, and confirm the answer on all samples"
        )
        self.run_button.clicked.connect(self._on_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the search at the end of the current batch")
        self.cancel_button.clicked.connect(controller.mixed_runner.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setToolTip("The search's current phase and how far it has come")
        self.progress.hide()
        base_note = QLabel(
            "Methods, granularity and symmetry come from the current settings; each layer "
            "(its weight and the input it owns) gets one of the allowed precisions."
        )
        base_note.setWordWrap(True)
        base_note.setStyleSheet(f"color: {st.AXIS_PEN};")

        form = QFormLayout()
        crit_row = QHBoxLayout()
        crit_row.addWidget(self.criterion_edit, 1)
        crit_row.addWidget(self.criterion_hint, 1)
        form.addRow("Criterion", crit_row)
        form.addRow("Allowed per layer", checks)
        opts = QHBoxLayout()
        opts.addWidget(self.objective_combo)
        opts.addWidget(self.speed_batch_spin)
        opts.addWidget(self.threads_spin)
        opts.addWidget(QLabel("search on"))
        opts.addWidget(self.limit_spin)
        opts.addWidget(QLabel("samples"))
        opts.addStretch(1)
        opts.addWidget(self.run_button)
        opts.addWidget(self.cancel_button)
        form.addRow("Objective", opts)

        # ---- the answer
        self.verdict_label = QLabel()
        verdict_font = QFont()
        verdict_font.setPointSizeF(12.0)
        verdict_font.setBold(True)
        self.verdict_label.setFont(verdict_font)
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary_label = QLabel("Set a criterion and press Search.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.choices_table = QTableWidget(0, len(CHOICE_COLUMNS))
        self.choices_table.setHorizontalHeaderLabels(list(CHOICE_COLUMNS))
        self.choices_table.setToolTip(
            "The precision chosen for every layer; highlighted rows differ from the lowest "
            "allowed precision. Node and module names are what ONNX tools and torch see."
        )
        self.choices_table.verticalHeader().setVisible(False)
        self.choices_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.choices_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.choices_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.choices_table.horizontalHeader().setStretchLastSection(True)
        self.notes_label = QLabel()
        self.notes_label.setWordWrap(True)
        self.notes_label.setStyleSheet(f"color: {st.AXIS_PEN};")
        self.notes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply_button = QPushButton("Apply the answer to the document")
        self.apply_button.setToolTip(
            "Make the answer's configuration the current settings: inspect it layer by layer "
            "in the table and export it"
        )
        self.apply_button.clicked.connect(self._apply_chosen)
        self.apply_button.setEnabled(False)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.verdict_label)
        left_layout.addWidget(self.summary_label)
        left_layout.addWidget(self.choices_table, 1)
        left_layout.addWidget(self.notes_label)
        left_layout.addWidget(self.apply_button)

        self.pareto = ParetoView()
        self.pareto.pointClicked.connect(controller.apply_point)
        self.applied_label = QLabel()
        self.applied_label.setWordWrap(True)
        self.applied_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.pareto, 1)
        right_layout.addWidget(self.applied_label)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setSizes([620, 660])
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(base_note)
        layout.addWidget(self.progress)
        layout.addWidget(self.splitter, 1)
        self._show_imported_choice()
        doc.events.model.connect(self._show_imported_choice)
        self._validate()

        self._on_objective()
        controller.mixedBusy.connect(self.set_running)
        controller.mixedProgress.connect(self.show_progress)
        controller.mixedCancelled.connect(lambda: self.show_message("Search cancelled."))
        controller.mixedFailed.connect(lambda m: self.show_message(f"Failed: {m}"))
        controller.configApplied.connect(self._on_applied)
        doc.events.mixed.connect(self._on_mixed)
        self.set_running(controller.mixed_runner.is_busy)
        self._on_mixed()

    # ----------------------------------------------------------------- the form
    def _show_imported_choice(self) -> None:
        """"imported" is offered for a model quantized elsewhere only, and is then the
        question: which of its pairs to keep, which to drop."""
        model = self._doc.model
        imported = model is not None and model.imported is not None
        box = self.precision_checks["imported"]
        box.setVisible(imported)
        for name, check in self.precision_checks.items():
            check.setChecked(name in ("imported", "float") if imported else name != "imported")

    def request(self) -> MixedRequest:
        """The form as a request; QvizError with one clear line when it is not valid."""
        criterion = Criterion.parse(self.criterion_edit.text())
        allowed = [n for n, box in self.precision_checks.items() if box.isChecked()]
        if not any(n != "float" for n in allowed):
            raise QvizError("allow at least one quantized precision (int4, int8 or imported)")
        limit = int(self.limit_spin.value())
        objective = self.objective_combo.currentData()
        return MixedRequest(criterion, parse_precisions(allowed), objective, limit,
                            self.speed_batch_spin.value(), self.threads_spin.value())

    def _on_objective(self, _index: int = 0) -> None:
        fastest = self.objective_combo.currentData() is Objective.FASTEST
        self.speed_batch_spin.setVisible(fastest)
        self.threads_spin.setVisible(fastest)

    def set_request(
        self,
        criterion: str,
        allowed: tuple[str, ...] = ("int4", "int8", "float"),
        objective: Objective = Objective.SIZE,
        limit: int = DEFAULT_LIMIT,
        speed_batch: int = 1,
        threads: int = 0,
    ) -> None:
        """Fill the form (scripts, tests and screenshots use it as a user would type)."""
        self.criterion_edit.setText(criterion)
        for name, box in self.precision_checks.items():
            box.setChecked(name in allowed)
        self.objective_combo.setCurrentIndex(self.objective_combo.findData(objective))
        self.limit_spin.setValue(limit)
        self.speed_batch_spin.setValue(speed_batch)
        self.threads_spin.setValue(threads)

    def _validate(self) -> None:
        try:
            req = self.request()
        except QvizError as exc:
            self.criterion_hint.setText(
                f"<span style='color:{FAIL_COLOR}'>{html.escape(str(exc))}</span>"
            )
            self.criterion_hint.setToolTip(str(exc))
            self.run_button.setEnabled(False)
            return
        c = req.criterion
        assert c.comparison is not None
        self.criterion_hint.setText(
            f"<span style='color:{st.AXIS_PEN}'>{html.escape(c.metric.label)} "
            f"{c.comparison.symbol} {c.threshold:g}{html.escape(c.metric.unit)}</span>"
        )
        self.criterion_hint.setToolTip("")
        self.run_button.setEnabled(not self._running)

    def _on_run(self) -> None:
        try:
            req = self.request()
        except QvizError:
            return  # the hint already says why, and the button is disabled
        self._controller.run_mixed(req)

    def _apply_chosen(self) -> None:
        if self._result is not None:
            self._controller.apply_point(self._result.chosen)

    def _on_mixed(self) -> None:
        outcome = self._doc.measures.mixed
        if outcome is None:
            self.clear_result()
        else:
            self.show_result(outcome.result, outcome.baseline)

    def _on_applied(self, point: ParetoPoint) -> None:
        self.set_applied(point, self._result)

    # ----------------------------------------------------------------- feedback
    def set_running(self, running: bool) -> None:
        self._running = running
        self.cancel_button.setEnabled(running)
        self.progress.setVisible(running)
        if running:
            self.progress.setRange(0, 0)
            self.progress.setFormat("starting…")
            self.verdict_label.setText("Searching…")
            self.verdict_label.setStyleSheet("")
        self._validate()

    def show_progress(self, p: Progress) -> None:
        if p.total > 0:
            self.progress.setRange(0, p.total)
            self.progress.setValue(min(p.done, p.total))
        eta = "" if p.remaining_s is None else f", about {format_seconds(p.remaining_s)} left"
        self.progress.setFormat(f"{p.message or 'working'} ({format_seconds(p.elapsed_s)}{eta})")

    def show_message(self, text: str) -> None:
        """A run that ended without a result (cancelled, failed)."""
        self.verdict_label.setText(text)
        self.verdict_label.setStyleSheet("")

    @property
    def shown_result(self) -> MixedResult | None:
        return self._result

    def show_result(self, result: MixedResult, baseline: Evaluation | None = None) -> None:
        """The answer; `baseline` is the all-lowest configuration measured like the answer."""
        self._result = result
        c = result.criterion
        e = result.evaluation
        if e is not None:
            _, verdict = verdict_text(c, e)
            measured = "Measured " + measured_text(c, e) + "."
        else:
            verdict = "PASS: the float model itself" if result.passed else "FAIL"
            measured = "The answer keeps every layer float: it is the float model itself."
        self.verdict_label.setText(verdict)
        self.verdict_label.setStyleSheet(f"color: {PASS_COLOR if result.passed else FAIL_COLOR};")
        base = result.baseline
        if baseline is not None:
            _, base_verdict = verdict_text(c, baseline)
            base_line = (
                f"For comparison, {base.label}: {measured_text(c, baseline)} — {base_verdict}."
            )
        else:
            base_line = (
                f"{base.label}: {c.metric.label} {fmt_decimals(base.value, c.metric.digits())}"
                f"{c.metric.unit} on the {base.measurement.n_samples} search samples — "
                f"{'meets' if base.passed else 'fails'} {c.spec}."
            )
        lines = [
            html.escape(measured),
            html.escape(size_text(result)) + ".",
            *(html.escape(f"Timed at batch {b}: float {fmt_ms(t.a_ms)} ms, quantized "
                          f"{fmt_ms(t.b_ms)} ms — {fmt_speedup(t.speedup)}.")
              for b, t in result.timings),
            "<b>" + html.escape(changes_text(result)) + "</b>",
            html.escape(base_line),
            html.escape(
                f"{len(result.points)} configurations measured on {result.search_samples} "
                f"samples in {format_seconds(result.elapsed_s)}."
            ),
        ]
        self.summary_label.setText("<br>".join(lines))
        self._fill_choices(result)
        if result.notes:
            shown = result.notes[:MAX_NOTES]
            more = len(result.notes) - len(shown)
            self.notes_label.setText(
                "Notes: " + " · ".join(shown) + (f" (+{more} more: hover)" if more else "")
            )
            self.notes_label.setToolTip("\n".join(f"• {n}" for n in result.notes))
            self.notes_label.show()
        else:
            self.notes_label.hide()
        self.pareto.set_result(result)
        self.apply_button.setEnabled(True)
        self.applied_label.setText("Click a point to apply its configuration to the document.")

    def clear_result(self) -> None:
        """Forget the last answer (another model was opened)."""
        self._result = None
        self.verdict_label.setText("")
        self.summary_label.setText("Set a criterion and press Search.")
        self.choices_table.setRowCount(0)
        self.notes_label.hide()
        self.pareto.set_result(None)
        self.apply_button.setEnabled(False)
        self.applied_label.setText("")

    def _fill_choices(self, result: MixedResult) -> None:
        t = self.choices_table
        t.setRowCount(len(result.choices))
        bold = QFont()
        bold.setBold(True)
        for row, ch in enumerate(sorted(result.choices, key=lambda c: c.depth)):
            cells = (
                ch.name, ch.precision, ch.node_name, ch.module_path or "—", ch.op_type,
                ", ".join(ch.tensors),
            )  # fmt: skip
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if ch.changed:
                    item.setBackground(QBrush(CHANGED_BG))
                    if col == 1:
                        item.setFont(bold)
                t.setItem(row, col, item)
        t.resizeColumnsToContents()

    def choice_rows(self) -> list[tuple[str, ...]]:
        """The choices table as text, row by row (tests read it as a user would)."""
        t = self.choices_table
        return [
            tuple(t.item(r, c).text() for c in range(t.columnCount()))  # type: ignore[union-attr]
            for r in range(t.rowCount())
        ]

    def set_applied(self, point: ParetoPoint | None, result: MixedResult | None = None) -> None:
        """Say which configuration the document has now."""
        if point is None or result is None:
            self.pareto.set_applied(None)
            return
        self.pareto.set_applied(point.index)
        self.applied_label.setText(
            "Applied to the document: " + point_text(point, result)
            + ". The layer table shows it; export it as usual."
        )
