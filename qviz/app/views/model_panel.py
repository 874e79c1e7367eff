"""The model-level panel: what the quantized model does end to end, and whether that is enough.

At the top a PASS/FAIL badge against the user's acceptance criteria, with the numbers behind
it, and where they come from (the live simulation on a subset, or the full native
evaluation). Below: float vs quantized accuracy (or top-1 agreement when the data has no
labels), output SQNR, cosine and KL, model size, latency and the layers ONNX Runtime fused
(full evaluation only), the error along depth, and the evaluation's notes.

The panel is a view of the document's evaluation and criteria, plus the live-evaluation
controller's status ("updating…", "cannot evaluate: …"). The texts come from
`outcome_texts`, a Qt-free function tests compare with the core's numbers. Criteria typed here
go into the document as they are typed; a bad one is named inline and the criteria in force
stay until the list reads.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QBoxLayout,
    QDockWidget,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from qviz.app.controllers.evaluation_controller import (
    EvaluationController,
    LiveState,
    LiveStatus,
)
from qviz.app.views import plot_style as st
from qviz.app.views.depth_view import DepthView
from qviz.app.views.speed_view import SpeedView
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.document.jobs import EvaluationOutcome
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Verdict, check_all, overall
from qviz.core.evaluation.display import fmt_ratio, latency_ratio_text
from qviz.core.evaluation.evaluate import Metric
from qviz.core.imported.describe import import_summary
from qviz.core.model.loading import TensorKind
from qviz.core.text import fmt_bytes

PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
NONE_COLOR = "#9e9e9e"
STALE_COLOR = "#9e9e9e"
ERROR_COLOR = "#c62828"

# Row keys in display order, with labels and tooltips. Tests address cells by key.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "Accuracy", "Top-1 accuracy against the labels; Δ in points"),
    ("agreement", "Top-1 agreement", "Samples whose top-1 class matches the float model's"),
    ("sqnr", "Output SQNR", "Signal-to-noise ratio of the quantized output against the float "
                            "output (first model output), higher is better"),
    ("cosine", "Output cosine", "Mean over samples of cos(float output, quantized output)"),
    ("kl", "Output KL", "Mean KL(softmax float ‖ softmax quantized), nats"),
    ("size", "Size", "Initializer bytes as stored: float model against Q/DQ model"),
    ("latency", "Latency", "Median time per batch: float model (all optimizations) against "
                           "ONNX Runtime's fused INT8 kernels, same batch, interleaved runs"),
    ("fused", "Fused layers", "Quantized layers ONNX Runtime turned into integer kernels"),
    ("slower", "Slower layers", "Quantized layers that run slower than in float (ONNX "
                                "Runtime's profiler, same batch), the most time lost first; "
                                "the Speed per layer tab and the table say why"),
    ("mismatch", "Sim vs native", "Largest difference between the simulation and the native "
                                  "INT8 output, and how many output values differ"),
)
COLUMNS = ("float", "quantized", "delta")
FULL_ONLY = "— (Evaluate, Ctrl+R)"
MAX_SIZE = 16_777_215  # QWIDGETSIZE_MAX
# Rows whose quantized cell is one sentence over the quantized and Δ columns.
SPANNING_ROWS = frozenset({"fused", "slower", "mismatch"})


def fmt_pct_value(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f} %"


def fmt_points(delta: float | None) -> str:
    if delta is None or math.isnan(delta):
        return ""
    return f"{delta:+.2f} points".replace("-", "−")


def outcome_texts(outcome: EvaluationOutcome) -> dict[str, tuple[str, str, str]]:
    """Every cell as text: row key -> (float, quantized, delta)."""
    ev = outcome.evaluation
    f, q, d = ev.float_metrics, ev.quantized_metrics, ev.delta
    rows: dict[str, tuple[str, str, str]] = {}
    if Metric.ACCURACY in q:
        rows["accuracy"] = (
            fmt_pct_value(f.get(Metric.ACCURACY)),
            fmt_pct_value(q[Metric.ACCURACY]),
            fmt_points(d.get(Metric.ACCURACY)),
        )
    else:
        rows["accuracy"] = ("—", "— (no labels)" if not ev.has_labels else "—", "")
    rows["agreement"] = ("", fmt_pct_value(q.get(Metric.AGREEMENT)), "")
    rows["sqnr"] = ("", st.fmt_db(q[Metric.SQNR]) if Metric.SQNR in q else "—", "")
    cosine = q.get(Metric.COSINE)
    rows["cosine"] = ("", "—" if cosine is None else f"{cosine:.5f}", "")
    kl = q.get(Metric.KL)
    rows["kl"] = ("", "—" if kl is None else st.fmt_num(kl), "")
    size = ev.size
    rows["size"] = (
        fmt_bytes(size.float_bytes),
        fmt_bytes(size.quantized_bytes) + (" (nominal)" if size.nominal else ""),
        fmt_ratio(size.ratio, "smaller", "larger"),
    )
    if ev.latency is not None:
        lat = ev.latency
        rows["latency"] = (
            f"{lat.float_ms:.2f} ms",
            f"{lat.native_ms:.2f} ms",
            latency_ratio_text(lat) + f" · batch of {lat.batch_size}",
        )
    else:
        rows["latency"] = ("", FULL_ONLY, "")
    if ev.fusion is not None:
        fusion = ev.fusion
        kernels = Counter(fusion.kernels.values())
        which = ", ".join(f"{k} ×{n}" for k, n in kernels.most_common())
        saturating = (
            f"; {len(fusion.saturating)} may saturate (u8s8 on this CPU)"
            if fusion.saturating else ""
        )
        rows["fused"] = ("", f"{len(fusion.fused)} of {fusion.n_layers}: {which}{saturating}", "")
    else:
        rows["fused"] = ("", FULL_ONLY, "")
    rows["slower"] = ("", FULL_ONLY, "")  # until a full evaluation times the layers
    if ev.speed is not None:
        slow = ev.slow_layers
        named = ", ".join(f"{x.layer} ({x.cause.value})" for x in slow[:3])
        more = f" and {len(slow) - 3} more" if len(slow) > 3 else ""
        rows["slower"] = ("", f"{len(slow)}: {named}{more}" if slow else "none", "")
    if ev.mismatch:
        m = ev.mismatch[0]
        steps = "" if m.max_steps is None else f" ({m.max_steps:.3g} steps)"
        rows["mismatch"] = (
            "",
            f"max |Δ| {st.fmt_num(m.max_abs_diff)}{steps}; "
            f"{st.fmt_pct(m.fraction_differing)} of output values differ",
            "",
        )
    else:
        rows["mismatch"] = ("", FULL_ONLY, "")
    return rows


def pinned_texts(
    b: EvaluationOutcome, a: EvaluationOutcome
) -> dict[str, tuple[str, str]]:
    """Per row: the pinned configuration A's number and the change from A to B."""
    qa, qb = a.evaluation.quantized_metrics, b.evaluation.quantized_metrics
    a_texts = outcome_texts(a)
    out = {key: (a_texts[key][1], "") for key, _, _ in ROWS if key not in SPANNING_ROWS}
    for key, metric, unit, digits in (
        ("accuracy", Metric.ACCURACY, " points", 2), ("agreement", Metric.AGREEMENT, " points", 2),
        ("sqnr", Metric.SQNR, " dB", 2), ("cosine", Metric.COSINE, "", 5),
        ("kl", Metric.KL, "", 5),
    ):
        if metric in qa and metric in qb and math.isfinite(qb[metric] - qa[metric]):
            delta = f"{qb[metric] - qa[metric]:+.{digits}f}{unit}".replace("-", "−")
            out[key] = (out[key][0], delta)
    ratio = a.evaluation.size.quantized_bytes / max(b.evaluation.size.quantized_bytes, 1)
    out["size"] = (out["size"][0], fmt_ratio(ratio, "smaller", "larger"))
    for key in ("latency",):
        out[key] = ("", "")  # measured only by a full evaluation of each
    return {k: v for k, v in out.items() if k in {r[0] for r in ROWS}}


def source_text(outcome: EvaluationOutcome) -> str:
    """Where the numbers come from: "simulation, 256 samples of data.npz · 1.6 s"."""
    return f"{outcome.label} of {outcome.data_name} · {outcome.elapsed_s:.1f} s"



class ModelPanel(QWidget):
    """Badge, criteria, the numbers table, the depth plot and notes."""

    def __init__(
        self, doc: Document, evaluation: EvaluationController, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._doc = doc
        self._evaluation = evaluation
        self.outcome: EvaluationOutcome | None = None  # shown (maybe for earlier settings)
        self._verdicts: tuple[Verdict, ...] = ()
        self._stale = False
        self._showing_criteria = False

        # --- verdict
        self.badge = QLabel("—")
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.badge.setMinimumSize(96, 52)
        self.badge.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.badge.setToolTip("PASS when every acceptance criterion holds on the numbers below")
        self.verdict_label = QLabel()
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.source_label.setToolTip(
            "Live numbers come from the simulation (Q/DQ evaluated op by op) on the first "
            "samples, refreshed after every change; Evaluate (Ctrl+R) runs every sample with "
            "ONNX Runtime's fused INT8 kernels and measures latency"
        )
        verdict_text = QVBoxLayout()
        verdict_text.setSpacing(2)
        verdict_text.addWidget(self.verdict_label)
        verdict_text.addWidget(self.source_label)
        self.imported_label = QLabel()  # what a quantized model was opened with
        self.imported_label.setWordWrap(True)
        self.imported_label.setVisible(False)
        verdict_text.addWidget(self.imported_label)
        verdict_text.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.badge, 0, Qt.AlignmentFlag.AlignTop)
        top.addLayout(verdict_text, 1)

        # --- criteria
        self.criteria_edit = QLineEdit(doc.measures.effective_criteria_text)
        self.criteria_edit.setPlaceholderText("accuracy_drop<=0.5; cosine>=0.99")
        self.criteria_edit.setClearButtonEnabled(True)
        self.criteria_edit.setToolTip(
            "Acceptance criteria, separated by ';': accuracy_drop<=POINTS, cosine>=X, "
            "sqnr>=DB, agreement>=PERCENT"
        )
        self.criteria_error = QLabel()
        self.criteria_error.setWordWrap(True)
        self.criteria_error.setStyleSheet(f"color: {ERROR_COLOR};")
        self.criteria_error.hide()
        self.criteria_edit.textEdited.connect(self._on_criteria_edited)
        criteria_row = QHBoxLayout()
        criteria_label = QLabel("Criteria")
        criteria_label.setToolTip(self.criteria_edit.toolTip())
        criteria_row.addWidget(criteria_label)
        criteria_row.addWidget(self.criteria_edit, 1)

        # --- actions
        self.evaluate_button = QPushButton("Evaluate (full)")
        self.evaluate_button.setToolTip(
            "Every sample, ONNX Runtime's fused INT8 kernels, fusion report and latency "
            "(Ctrl+R); progress and Cancel in the status bar"
        )
        self.evaluate_button.clicked.connect(evaluation.evaluate_full)
        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button)
        buttons.addStretch(1)

        verdict_box = QVBoxLayout()
        verdict_box.setContentsMargins(0, 0, 0, 0)
        verdict_box.addLayout(top)
        verdict_box.addLayout(criteria_row)
        verdict_box.addWidget(self.criteria_error)
        # Why this machine's defaults differ from the usual ones (one line, while they stand).
        self.defaults_label = QLabel()
        self.defaults_label.setWordWrap(True)
        self.defaults_label.setStyleSheet(f"color: {st.AXIS_PEN}; font-size: 8.5pt;")
        self.defaults_label.setToolTip(
            "qviz asks ONNX Runtime's int8 kernel itself whether it saturates on this CPU; "
            "QVIZ_U8S8_SATURATES=0|1 overrides the answer. Any setting you choose replaces "
            "the defaults."
        )
        verdict_box.addWidget(self.defaults_label)
        verdict_box.addLayout(buttons)
        verdict_box.addStretch(1)
        self.verdict_section = QWidget()
        self.verdict_section.setLayout(verdict_box)

        # --- numbers
        self._cells: dict[tuple[str, str], QLabel] = {}
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(3)
        for c, title in enumerate(("", "Float", "Quantized", "Δ")):
            head = QLabel(f"<b>{title}</b>")
            grid.addWidget(head, 0, c)
        # A configuration pinned for comparison: its numbers and B − A, only while pinned.
        self._pinned_widgets: list[QLabel] = []
        for c, title in ((4, "A (pinned)"), (5, "B − A")):
            head = QLabel(f"<b style='color:{st.PINNED_COLOR}'>{title}</b>")
            grid.addWidget(head, 0, c)
            self._pinned_widgets.append(head)
        for r, (key, label, tip) in enumerate(ROWS, start=1):
            name = QLabel(label)
            name.setToolTip(tip)
            name.setStyleSheet(f"color: {st.AXIS_PEN};")
            grid.addWidget(name, r, 0)
            for c, col in enumerate(COLUMNS, start=1):
                cell = QLabel("")
                cell.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                cell.setToolTip(tip)
                self._cells[(key, col)] = cell
                if key in SPANNING_ROWS and col != "float":
                    # One sentence over the quantized and Δ columns.
                    if col == "quantized":
                        cell.setWordWrap(True)
                        grid.addWidget(cell, r, c, 1, 2)
                    continue
                grid.addWidget(cell, r, c)
            for c, col in ((4, "a"), (5, "ab")):
                cell = QLabel("")
                cell.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                cell.setStyleSheet(f"color: {st.PINNED_COLOR};")
                cell.setToolTip(f"{tip} — for the configuration pinned as A (Edit ▸ Pin as A)")
                self._cells[(key, col)] = cell
                self._pinned_widgets.append(cell)
                grid.addWidget(cell, r, c)
        grid.setColumnStretch(3, 1)
        grid.setRowStretch(len(ROWS) + 1, 1)
        self.numbers_section = QFrame()
        self.numbers_section.setFrameShape(QFrame.Shape.StyledPanel)
        self.numbers_section.setLayout(grid)

        # --- depth
        depth_title = QLabel("<b>Error along depth</b> (click a point to select its layer)")
        depth_title.setToolTip(
            "SQNR of each quantized layer's input: accumulated (the quantized model against "
            "the float one) and local (that tensor quantized alone). Where the accumulated "
            "curve falls faster, earlier error is amplified. Click a point to select the layer."
        )
        self.depth_view = DepthView()
        depth_box = QVBoxLayout()
        depth_box.setContentsMargins(0, 0, 0, 0)
        depth_box.setSpacing(2)
        depth_box.addWidget(depth_title)
        depth_box.addWidget(self.depth_view, 1)
        depth_page = QWidget()
        depth_page.setLayout(depth_box)
        # Speed along depth beside error along depth: the two things quantizing changes.
        self.speed_view = SpeedView(doc)
        self.depth_section = QTabWidget()
        self.depth_section.setDocumentMode(True)
        self.depth_section.addTab(depth_page, "Error along depth")
        self.depth_section.addTab(self.speed_view, "Speed per layer")

        # --- notes
        self.notes_label = QLabel()
        self.notes_label.setWordWrap(True)
        self.notes_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.notes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes_label.setStyleSheet("color: #8a5300;")
        self.notes_section = QScrollArea()
        self.notes_section.setWidget(self.notes_label)
        self.notes_section.setWidgetResizable(True)
        self.notes_section.setFrameShape(QFrame.Shape.NoFrame)
        self.notes_section.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self._layout = QBoxLayout(QBoxLayout.Direction.LeftToRight, self)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self._layout.addWidget(self.verdict_section)
        self._layout.addWidget(self.numbers_section)
        self._layout.addWidget(self.depth_section, 1)
        self._layout.addWidget(self.notes_section)
        self.set_orientation(Qt.Orientation.Horizontal)

        self.set_unavailable("Open a model (Ctrl+O) to evaluate it")
        self.depth_view.layerClicked.connect(self._select_input)
        evaluation.statusChanged.connect(self._on_status)
        doc.events.evaluation.connect(self._on_evaluation)
        doc.events.pinned.connect(self._show_pinned)
        doc.events.model.connect(self._show_defaults_note)
        doc.events.config.connect(lambda _keys: self._show_defaults_note())
        self._show_defaults_note()
        doc.events.criteria.connect(self._on_criteria)
        doc.events.selection.connect(self._ring_selected_layer)
        doc.events.model.connect(self._ring_selected_layer)
        doc.events.model.connect(self._show_imported)

    # ----------------------------------------------------------------- following the document
    def _on_evaluation(self) -> None:
        outcome = self._doc.measures.evaluation
        if outcome is not None:
            local = {
                r.name: float(r.metrics.sqnr_db)
                for r in outcome.results
                if r.kind is TensorKind.ACTIVATION
            }
            self.show_outcome(outcome, local)

    def _on_status(self, status: LiveStatus) -> None:
        if status.state is LiveState.PENDING:
            self.set_pending(status.text)
        elif status.state is LiveState.UNAVAILABLE:
            self.set_unavailable(status.text)
        elif status.state is LiveState.PROBLEM:
            self.set_problem(status.text)

    def _on_criteria(self) -> None:
        text = self._doc.measures.effective_criteria_text
        if text != self.criteria_edit.text() and not self.criteria_edit.hasFocus():
            self.criteria_edit.setText(text)
        self._update_verdict()

    def _ring_selected_layer(self) -> None:
        """Ring, on the depth plot, the input of the layer shown in the layer view."""
        acts = [k.name for k in self._doc.visible_keys() if k.kind is TensorKind.ACTIVATION]
        self.set_selected_tensor(acts[0] if acts else None)

    def _show_imported(self) -> None:
        text = import_summary(self._doc.model)
        self.imported_label.setText(text or "")
        self.imported_label.setVisible(text is not None)

    def _select_input(self, tensor: str) -> None:
        key = TensorKey(tensor, TensorKind.ACTIVATION)
        if self._doc.has(key):
            self._doc.select(key)

    def set_orientation(self, orientation: Qt.Orientation) -> None:
        """Side by side (docked at the bottom or top) or stacked (docked left or right)."""
        horizontal = orientation is Qt.Orientation.Horizontal
        self._layout.setDirection(
            QBoxLayout.Direction.LeftToRight if horizontal else QBoxLayout.Direction.TopToBottom
        )
        for section, width in ((self.verdict_section, 320), (self.notes_section, 330)):
            section.setMinimumWidth(width if horizontal else 0)
            section.setMaximumWidth(width if horizontal else MAX_SIZE)
        self.notes_section.setMinimumHeight(0 if horizontal else 90)

    # ----------------------------------------------------------------- reading (tests)
    def text(self, row: str, column: str = "quantized") -> str:
        return self._cells[(row, column)].text()

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return self._verdicts

    @property
    def passed(self) -> bool | None:
        return overall(self._verdicts)

    def set_criteria_text(self, text: str) -> None:
        """Type `text` into the criteria box, as a user would."""
        self.criteria_edit.setText(text)
        self._on_criteria_edited(text)

    # ----------------------------------------------------------------- rendering
    def show_outcome(self, outcome: EvaluationOutcome, local: Mapping[str, float]) -> None:
        """Render an evaluation for the current settings; `local` maps activation -> its own
        SQNR (dB) for the depth plot."""
        self.outcome = outcome
        self._stale = False
        text = self._doc.measures.effective_criteria_text  # the defaults follow the labels
        if text != self.criteria_edit.text() and not self.criteria_edit.hasFocus():
            self.criteria_edit.setText(text)
        for key, cells in outcome_texts(outcome).items():
            for col, text in zip(COLUMNS, cells, strict=True):
                self._cells[(key, col)].setText(text)
        self._set_numbers_color(None)
        self.source_label.setText(f"On {source_text(outcome)}")
        self.source_label.setStyleSheet("")
        self.depth_view.show_depth(outcome.evaluation.depth, local)
        self._show_pinned()
        notes = outcome.evaluation.notes
        self.notes_label.setText("\n".join(f"• {n}" for n in notes))
        self.notes_label.setVisible(bool(notes))
        self._update_verdict()

    def _show_defaults_note(self) -> None:
        note = self._doc.defaults_note
        self.defaults_label.setText(note or "")
        self.defaults_label.setVisible(bool(note))

    def _show_pinned(self) -> None:
        """A's numbers beside B's, while a configuration is pinned and measured."""
        pinned = self._doc.pinned
        b = self.outcome
        # Like with like: B's live numbers beside A's live ones, full beside full.
        a = None if pinned is None or b is None else pinned.like(b)
        show = a is not None and b is not None
        for w in self._pinned_widgets:
            w.setVisible(show)
        if a is None or b is None:
            self.depth_view.set_pinned(None)
            return
        for key, (a_text, delta) in pinned_texts(b, a).items():
            self._cells[(key, "a")].setText(a_text)
            self._cells[(key, "ab")].setText(delta)
        self.depth_view.set_pinned(a.evaluation.depth)

    def set_pending(self, text: str) -> None:
        """The settings changed: the numbers shown are for earlier settings until `text`'s
        run delivers."""
        self._stale = self.outcome is not None
        self.source_label.setText(text)
        self.source_label.setStyleSheet(f"color: {STALE_COLOR};")
        if self._stale:
            self._set_numbers_color(STALE_COLOR)
        self._update_verdict()

    def set_problem(self, message: str) -> None:
        """A live evaluation failed for a reason the user can fix: say it here, inline."""
        self.source_label.setText(f"Cannot evaluate: {message}")
        self.source_label.setStyleSheet(f"color: {ERROR_COLOR};")

    def set_unavailable(self, reason: str) -> None:
        """Nothing to evaluate (no model, statistics or data): empty numbers, the reason."""
        self.outcome = None
        self._stale = False
        for cell in self._cells.values():
            cell.setText("")
        self.source_label.setText(reason)
        self.source_label.setStyleSheet(f"color: {STALE_COLOR};")
        self.depth_view.show_depth((), {}, "No evaluation yet")
        self._show_pinned()
        self.notes_label.clear()
        self.notes_label.hide()
        self._update_verdict()

    def set_selected_tensor(self, tensor: str | None) -> None:
        self.depth_view.set_selected(tensor)

    # ----------------------------------------------------------------- internals
    def _set_numbers_color(self, color: str | None) -> None:
        style = "" if color is None else f"color: {color};"
        for cell in self._cells.values():
            cell.setStyleSheet(style)

    def _on_criteria_edited(self, text: str) -> None:
        try:
            self._doc.set_criteria_text(text)
        except QvizError as exc:
            self.criteria_error.setText(str(exc))
            self.criteria_error.show()
            self.criteria_edit.setStyleSheet(f"border: 1px solid {ERROR_COLOR};")
            return  # the document keeps judging by the last valid criteria
        self.criteria_error.hide()
        self.criteria_edit.setStyleSheet("")

    def _update_verdict(self) -> None:
        criteria = self._doc.measures.criteria
        evaluation = None if self.outcome is None else self.outcome.evaluation
        self._verdicts = () if evaluation is None else check_all(criteria, evaluation)
        result = overall(self._verdicts)
        if evaluation is None:
            text, color = "—", NONE_COLOR
            lines = "No evaluation yet" if criteria else "No criteria set"
        elif result is None:
            text, color = "—", NONE_COLOR
            lines = "No acceptance criteria: type some below to get a PASS or FAIL"
        else:
            text, color = ("PASS", PASS_COLOR) if result else ("FAIL", FAIL_COLOR)
            lines = "<br>".join(_verdict_html(v) for v in self._verdicts)
        if self._stale:
            color = STALE_COLOR
            lines += "<br><i>(for the earlier settings: updating…)</i>"
        self.badge.setText(text)
        self.badge.setStyleSheet(
            f"background: {color}; color: white; font-size: 20pt; font-weight: bold; "
            f"border-radius: 6px; padding: 4px 10px;"
        )
        self.verdict_label.setText(lines)


class ModelDock(QDockWidget):
    """The model panel as a dock of the main window (View ▸ Model to show it again)."""

    def __init__(
        self, doc: Document, evaluation: EvaluationController, parent: QWidget | None = None
    ) -> None:
        super().__init__("Model: end-to-end effect", parent)
        self.setObjectName("model_dock")
        self.panel = ModelPanel(doc, evaluation)
        self.setWidget(self.panel)
        self.dockLocationChanged.connect(self._on_area_changed)
        self.toggleViewAction().setText("&Model Panel")
        self.toggleViewAction().setStatusTip("Show or hide the model-level panel")

    def _on_area_changed(self, area: Qt.DockWidgetArea) -> None:
        sides = (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea)
        self.panel.set_orientation(
            Qt.Orientation.Vertical if area in sides else Qt.Orientation.Horizontal
        )


def _verdict_html(v: Verdict) -> str:
    color = PASS_COLOR if v.passed else FAIL_COLOR
    head, _, rest = v.text.partition(":")
    return f"<span style='color:{color}; font-weight:bold'>{head}</span>:{html.escape(rest)}"
