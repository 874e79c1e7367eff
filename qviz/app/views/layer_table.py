"""The layer table: one row per quantizable tensor, sortable and filterable.

`LayerTableModel` reads everything from the `Document` (it keeps no copy of the numbers) and
follows its events: a change of settings or new results repaint just the rows of the tensors
named; a new sensitivity report or evaluation repaints its columns. A
`QSortFilterProxyModel` sorts by the raw numbers (not the text) and filters by substring over
every column. Selecting a row selects the tensor in the document, and the other way round.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from qviz.app.views import plot_style as st
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.config import method_label
from qviz.core.document.document import Document
from qviz.core.document.summary import Summary
from qviz.core.evaluation.display import fmt_metric_change
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.fusion import WEIGHT_ONLY_KERNELS, FusionReport
from qviz.core.search.sensitivity import LayerSensitivity
from qviz.core.text import fmt_count, fmt_shape

# SQNR colour scale. 35 dB is about int8 per-channel quality on a well-behaved tensor; below
# 20 dB the quantization noise is a tenth of the signal's power, which visibly hurts most
# models. The thresholds are a reading aid, not a verdict: end-to-end accuracy decides.
GOOD_DB = 35.0
FAIR_DB = 20.0
GOOD_BG = QColor("#c8e6c9")
FAIR_BG = QColor("#ffe0b2")
BAD_BG = QColor("#ffcdd2")
SQNR_TOOLTIP = (
    f"Signal-to-quantization-noise ratio of the tensor, higher is better. Green ≥ {GOOD_DB:g} dB, "
    f"amber {FAIR_DB:g}–{GOOD_DB:g} dB, red < {FAIR_DB:g} dB."
)

SORT_ROLE = Qt.ItemDataRole.UserRole
KEY_ROLE = Qt.ItemDataRole.UserRole + 1


class Column(IntEnum):
    # The numbers come right after the names: in a narrow pane they must stay in view
    # without scrolling; tensor name, shape and size are reference detail, last.
    LAYER = 0
    KIND = 1
    OP = 2
    SQNR = 3
    CLIPPED = 4
    METHOD = 5
    GRANULARITY = 6
    FORMAT = 7
    TENSOR = 8
    SHAPE = 9
    PARAMS = 10
    # Filled from the last sensitivity report (hidden until there is one); the window moves
    # them beside SQNR, so the end-to-end view sits next to the local one.
    DROP = 11
    RECOVERY = 12
    # From the last native (full) evaluation's fusion report; shown after Clipped.
    NATIVE = 13


HEADERS: dict[Column, tuple[str, str]] = {
    Column.LAYER: ("Layer", "Layer name: the torch module path when the model records it"),
    Column.KIND: ("Kind", "W = weight (constant), A = activation (input to the layer)"),
    Column.TENSOR: ("Tensor", "Name of the tensor in the ONNX graph"),
    Column.OP: ("Op", "ONNX operator of the layer"),
    Column.SHAPE: ("Shape", "Tensor shape (? = dynamic axis, e.g. batch)"),
    Column.PARAMS: ("Params", "Number of weight parameters (activations: values per sample)"),
    Column.METHOD: ("Method", "Calibration method choosing the clip range"),
    Column.GRANULARITY: ("Granularity", "One scale per tensor, per output channel, or per group"),
    Column.FORMAT: ("Format", "Number format the tensor is quantized to"),
    Column.SQNR: ("SQNR dB", SQNR_TOOLTIP),
    Column.CLIPPED: ("Clipped", "Fraction of values outside the clip range (saturated)"),
    Column.DROP: (
        "Δ alone",
        "Δ if quantized alone (Run ▸ Sensitivity): how much the task metric gets worse with "
        "only this layer quantized and the rest float, in the metric's units (accuracy: "
        "points). Larger means the layer hurts more. Grey: measured for earlier settings.",
    ),
    Column.RECOVERY: (
        "Recovery",
        "Recovery if float (Run ▸ Sensitivity): how much the task metric improves with only "
        "this layer kept float and the rest quantized, in the metric's units (accuracy: points). "
        "Larger means keeping this layer float helps more. Grey: measured for earlier settings.",
    ),
    Column.NATIVE: (
        "Sim vs native",
        "Whether ONNX Runtime ran the layer as an integer kernel (✓ and its name; ⚠ when its "
        "u8s8 sums can saturate on this CPU) or left it in float (✗ and why), from the last "
        "full evaluation (Run ▸ Evaluate, Ctrl+R). Grey: measured for earlier settings.",
    ),
}
SENSITIVITY_COLUMNS = (Column.DROP, Column.RECOVERY)
STALE_FG = QColor("#9e9e9e")
# The columns a settings change can alter (contiguous); dataChanged covers only these.
VALUE_COLUMNS = (Column.SQNR, Column.CLIPPED, Column.METHOD, Column.GRANULARITY, Column.FORMAT)


def sqnr_background(sqnr_db: float) -> QColor | None:
    if math.isnan(sqnr_db):
        return None
    if sqnr_db >= GOOD_DB:
        return GOOD_BG
    if sqnr_db >= FAIR_DB:
        return FAIR_BG
    return BAD_BG


class LayerTableModel(QAbstractTableModel):
    """Rows are the document's tensors in graph order; data is read from the document."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self._keys: list[TensorKey] = []
        self._row: dict[TensorKey, int] = {}
        self.fusion_shown = False

    # ----------------------------------------------------------------- updates
    def reset(self) -> None:
        """The model changed: rebuild every row."""
        self.beginResetModel()
        self._keys = [t.key for t in self._doc.tensors]
        self._row = {k: i for i, k in enumerate(self._keys)}
        self.endResetModel()

    def refresh(self, keys: list[TensorKey] | None = None) -> None:
        """Settings or results changed for `keys` (None: all): repaint just those rows."""
        if not self._keys:
            return
        if keys is None:
            rows = [0, len(self._keys) - 1]
        else:
            rows = sorted(self._row[k] for k in keys if k in self._row)
            if not rows:
                return
        first, last = min(VALUE_COLUMNS), max(VALUE_COLUMNS)
        # One signal per contiguous run of rows keeps a 1-row change a 1-row repaint while a
        # change to every Conv is still a handful of signals, not hundreds.
        start = prev = rows[0]
        for r in [*rows[1:], None]:
            if r is not None and r == prev + 1:
                prev = r
                continue
            self.dataChanged.emit(self.index(start, first), self.index(prev, last))
            if r is not None:
                start = prev = r

    def row_of(self, key: TensorKey) -> int | None:
        return self._row.get(key)

    # ----------------------------------------------------------------- Qt model API
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._keys)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(Column)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: E501
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(Column):
            return None
        title, tip = HEADERS[Column(section)]
        if role == Qt.ItemDataRole.DisplayRole:
            return title
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: E501
        if not index.isValid():
            return None
        key = self._keys[index.row()]
        col = Column(index.column())
        if col is Column.NATIVE and role != KEY_ROLE:
            return self._native_data(key, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(key, col)
        if role == SORT_ROLE:
            return self._sort_value(key, col)
        if role == KEY_ROLE:
            return key
        if role == Qt.ItemDataRole.BackgroundRole and col is Column.SQNR:
            result = self._doc.result(key)
            if result is not None and self._doc.config_for(key).quantize:
                bg = sqnr_background(float(result.metrics.sqnr_db))
                return None if bg is None else QBrush(bg)
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(key, col)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (
            Column.PARAMS, Column.SQNR, Column.CLIPPED, *SENSITIVITY_COLUMNS,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if (
            role == Qt.ItemDataRole.ForegroundRole
            and col in SENSITIVITY_COLUMNS
            and self._doc.measures.sensitivity_stale
        ):
            return QBrush(STALE_FG)
        return None

    def _text(self, key: TensorKey, col: Column) -> str:
        doc = self._doc
        tensor = doc.tensor(key)
        if col is Column.LAYER:
            return tensor.layer.name
        if col is Column.KIND:
            return "W" if key[1] is TensorKind.WEIGHT else "A"
        if col is Column.TENSOR:
            return key[0]
        if col is Column.OP:
            return tensor.layer.op_type
        if col is Column.SHAPE:
            return fmt_shape(doc.shape(key))
        if col is Column.PARAMS:
            return fmt_count(doc.element_count(key)) if key[1] is TensorKind.WEIGHT else ""
        if col in SENSITIVITY_COLUMNS:
            return sensitivity_text(doc, key, col)
        cfg = doc.config_for(key)
        if col is Column.METHOD:
            return method_label(cfg.spec)
        if col is Column.GRANULARITY:
            return cfg.granularity.label
        if col is Column.FORMAT:
            return cfg.fmt.label if cfg.quantize else "float"
        if not cfg.quantize:  # kept float (e.g. a mixed-precision choice): no error at all
            return "float" if col is Column.SQNR else "—"
        result = doc.result(key)
        if result is None:
            if doc.error(key) is not None:
                return "error"
            return "…" if doc.can_analyze(key) else "needs data"
        if col is Column.SQNR:
            return st.fmt_num(result.metrics.sqnr_db)
        return st.fmt_pct(result.metrics.clipped_fraction)

    def _sort_value(self, key: TensorKey, col: Column) -> Any:
        doc = self._doc
        if col is Column.PARAMS:
            return doc.element_count(key) if key[1] is TensorKind.WEIGHT else -1.0
        if col in SENSITIVITY_COLUMNS:
            value = sensitivity_value(doc, key, col)
            return -math.inf if value is None or math.isnan(value) else value  # unknowns last
        if col in (Column.SQNR, Column.CLIPPED):
            result = doc.result(key)
            if not doc.config_for(key).quantize:
                return math.inf if col is Column.SQNR else -1.0  # float: lossless
            if result is None:
                return math.inf if col is Column.SQNR else -1.0  # unknowns sort last/first
            value = (
                result.metrics.sqnr_db if col is Column.SQNR else result.metrics.clipped_fraction
            )
            return float(np.nan_to_num(float(value), nan=math.inf))
        if col is Column.LAYER:
            return doc.tensor(key).layer.depth  # graph order, not alphabetical
        return self._text(key, col)

    def _tooltip(self, key: TensorKey, col: Column) -> str | None:
        doc = self._doc
        error = doc.error(key)
        if error is not None and col in (Column.SQNR, Column.CLIPPED):
            return error
        if col is Column.SQNR:
            if doc.result(key) is None and not doc.can_analyze(key):
                return "Open calibration data (Ctrl+D) to measure activations"
            return SQNR_TOOLTIP
        if col is Column.LAYER:
            layer = doc.tensor(key).layer
            return f"{layer.name}\nnode: {layer.node_name}\nop: {layer.op_type}"
        if col is Column.TENSOR:
            return key[0]
        if col in SENSITIVITY_COLUMNS:
            return sensitivity_tooltip(doc, key)
        return None

    def refresh_columns(self, first: Column, last: Column) -> None:
        """Every row of these columns changed (a sensitivity report, a fusion report)."""
        if self._keys:
            self.dataChanged.emit(self.index(0, first), self.index(len(self._keys) - 1, last))

    # ----------------------------------------------------------------- sim vs native
    def _native_data(self, key: TensorKey, role: int) -> Any:
        layer = self._doc.tensor(key).layer.name
        fusion = self._doc.measures.fusion
        current = self._doc.measures.fusion_current
        if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
            return native_text(fusion, layer)
        if role == Qt.ItemDataRole.ToolTipRole:
            return native_tooltip(fusion, layer, current)
        if role == Qt.ItemDataRole.ForegroundRole and fusion is not None and not current:
            return QBrush(STALE_FG)
        if role == Qt.ItemDataRole.BackgroundRole and fusion is not None and current:
            if layer in fusion.saturating:
                return QBrush(FAIR_BG)
            if layer in fusion.unfused:
                return QBrush(BAD_BG)
        return None


def native_text(report: FusionReport | None, layer: str) -> str:
    """The sim-vs-native cell: '✓ QLinearConv', '⚠ QLinearConv' (may saturate), '✗ reason'."""
    if report is None:
        return ""
    kernel = report.kernels.get(layer)
    if kernel is not None:
        if layer in report.saturating:
            return f"⚠ {kernel}"
        return f"✓ {kernel}" + (" (weight-only)" if kernel in WEIGHT_ONLY_KERNELS else "")
    reason = report.unfused.get(layer)
    if reason is not None:
        return f"✗ float: {reason}"
    return "—"


def native_tooltip(report: FusionReport | None, layer: str, current: bool) -> str:
    if report is None:
        return (
            "Run ▸ Evaluate (Ctrl+R) to see which layers ONNX Runtime runs as integer kernels"
        )
    kernel = report.kernels.get(layer)
    if kernel is not None:
        text = f"{layer}: ONNX Runtime runs it as {kernel}"
        if layer in report.saturating:
            text += (
                ". On this CPU (AVX2 without VNNI) its u8s8 int8 sums can saturate with 8-bit "
                "weights: native results may differ from the simulation. 7-bit weights (int7) "
                "or the precise int8 kernels avoid it."
            )
    elif layer in report.unfused:
        text = f"{layer}: left in float by ONNX Runtime — {report.unfused[layer]}"
    else:
        text = f"{layer}: not quantized when it was evaluated"
    if not current:
        text += "\n(Measured for earlier settings: run Evaluate again, Ctrl+R.)"
    return text


def sensitivity_row(doc: Document, key: TensorKey) -> LayerSensitivity | None:
    return doc.measures.sensitivity_row(doc.tensor(key).layer.name)


def sensitivity_value(doc: Document, key: TensorKey, col: Column) -> float | None:
    """The number a sensitivity column holds for a tensor's layer (None: nothing to show)."""
    row = sensitivity_row(doc, key)
    if row is None:
        return None
    return row.drop if col is Column.DROP else row.recovery


def sensitivity_text(doc: Document, key: TensorKey, col: Column) -> str:
    report = doc.measures.sensitivity
    if report is None or sensitivity_row(doc, key) is None:
        return ""
    return fmt_metric_change(sensitivity_value(doc, key, col), report.metric)


def sensitivity_tooltip(doc: Document, key: TensorKey) -> str | None:
    report, row = doc.measures.sensitivity, sensitivity_row(doc, key)
    if report is None:
        return "Run ▸ Sensitivity to measure how much each layer matters end to end"
    if row is None:
        return "This layer quantized nothing when sensitivity was measured"
    m = report.metric
    lines = [
        f"{row.name} — {m.label} on {report.n_samples} samples",
        f"float {st.fmt_num(report.float_value)}, all quantized "
        f"{st.fmt_num(report.quantized_value)}",
        f"only this layer quantized: {st.fmt_num(row.quantized_only.value(m))}",
        f"only this layer float: {st.fmt_num(row.float_only.value(m))}",
    ]
    if doc.measures.sensitivity_stale:
        lines.append("Measured for earlier settings: run Sensitivity again.")
    return "\n".join(lines)


class LayerTable(QWidget):
    """Filter box, the table and the summary line, following the document."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self.model = LayerTableModel(doc, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        # Re-sort when SQNR values change, so "sort by SQNR" stays true while exploring.
        self.proxy.setDynamicSortFilter(True)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by layer, tensor or op  (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip("Show only rows containing this text in any column")
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(Column.LAYER, Qt.SortOrder.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        # Sim vs native beside the error numbers (after the sensitivity columns when shown):
        # in a narrow pane it must stay in view without scrolling, like SQNR.
        header.moveSection(
            header.visualIndex(Column.NATIVE), header.visualIndex(Column.CLIPPED) + 1
        )
        self.view.setToolTip("Every quantizable tensor; click a row to show its layer")
        self.view.selectionModel().currentRowChanged.connect(self._on_current_changed)

        self.summary_label = QLabel("No model open")
        self.summary_label.setWordWrap(True)
        self.summary_label.setToolTip(
            "Weighted SQNR: each tensor's noise-to-signal power averaged with its element "
            "count as weight (parameters for weights, values per sample for activations), "
            "then converted to dB — so one noisy tensor is not hidden by many clean ones."
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.summary_label)

        # The sensitivity columns sit right after Clipped: end to end beside local.
        for offset, col in enumerate(SENSITIVITY_COLUMNS):
            header.moveSection(
                header.visualIndex(col), header.visualIndex(Column.CLIPPED) + 1 + offset
            )
        events = doc.events
        events.model.connect(self.reset)
        events.config.connect(self._on_changed)
        events.results.connect(self._on_changed)
        events.stats.connect(self._on_stats)
        events.selection.connect(self._on_selection)
        events.sensitivity.connect(self.refresh_sensitivity)
        events.evaluation.connect(self.refresh_fusion)
        self.refresh_sensitivity()

    # ----------------------------------------------------------------- following the document
    def reset(self) -> None:
        self.model.reset()
        self._fit_columns()
        self.update_summary()
        self._on_selection()

    def _on_changed(self, keys: tuple[TensorKey, ...]) -> None:
        self.model.refresh(list(keys))
        self.update_summary()

    def _on_stats(self) -> None:
        self.model.refresh()
        self.update_summary()

    def _on_selection(self) -> None:
        self.select(self._doc.selection)

    def refresh_sensitivity(self) -> None:
        """Show the document's sensitivity report in its columns (hidden while there is none)."""
        hidden = self._doc.measures.sensitivity is None
        for col in SENSITIVITY_COLUMNS:
            was_hidden = self.view.isColumnHidden(col)
            self.view.setColumnHidden(col, hidden)
            if was_hidden and not hidden:
                self.view.resizeColumnToContents(col)
        self.model.refresh_columns(min(SENSITIVITY_COLUMNS), max(SENSITIVITY_COLUMNS))

    def refresh_fusion(self) -> None:
        """The sim-vs-native column follows the last native evaluation's fusion report."""
        had = self.model.fusion_shown
        self.model.fusion_shown = self._doc.measures.fusion is not None
        self.model.refresh_columns(Column.NATIVE, Column.NATIVE)
        if self.model.fusion_shown and not had:
            self.view.resizeColumnToContents(Column.NATIVE)
            header = self.view.horizontalHeader()
            header.resizeSection(Column.NATIVE, min(header.sectionSize(Column.NATIVE), 170))

    def select(self, key: TensorKey | None) -> None:
        """Make `key` the current row (no signal if it already is)."""
        if key is None:
            return
        row = self.model.row_of(key)
        if row is None:
            return
        proxy_index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not proxy_index.isValid():  # filtered out: show it rather than select a hidden row
            self.filter_edit.clear()
            proxy_index = self.proxy.mapFromSource(self.model.index(row, 0))
        if self.view.currentIndex().row() == proxy_index.row():
            return
        self.view.selectionModel().setCurrentIndex(
            proxy_index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.view.scrollTo(proxy_index)

    def current_key(self) -> TensorKey | None:
        index = self.view.currentIndex()
        if not index.isValid():
            return None
        return self.proxy.data(index, KEY_ROLE)

    def visible_keys(self) -> list[TensorKey]:
        """Keys in the order the table shows them (sorted and filtered)."""
        return [
            self.proxy.data(self.proxy.index(r, 0), KEY_ROLE) for r in range(self.proxy.rowCount())
        ]

    def cell_text(self, key: TensorKey, column: Column) -> str:
        row = self.model.row_of(key)
        if row is None:
            return ""
        return str(self.model.data(self.model.index(row, column)))

    def update_summary(self) -> None:
        self.summary_label.setText(summary_text(self._doc.summary(), self._doc))

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    # ----------------------------------------------------------------- internals
    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self._doc.select(self.proxy.data(current, KEY_ROLE))

    def _fit_columns(self) -> None:
        self.view.resizeColumnsToContents()
        header = self.view.horizontalHeader()
        # Long module paths must not push the numbers out of sight.
        for col, cap in ((Column.LAYER, 150), (Column.TENSOR, 170), (Column.SHAPE, 110)):
            if header.sectionSize(col) > cap:
                header.resizeSection(col, cap)
        for col in (Column.SQNR, Column.CLIPPED):
            header.resizeSection(col, max(header.sectionSize(col), 70))


def summary_text(summary: Summary, doc: Document) -> str:
    if summary.n_tensors == 0:
        return "No model open"
    parts = [
        f"{summary.n_tensors} tensors ({summary.n_weights} weights, "
        f"{summary.n_activations} activations)"
    ]
    if summary.n_analyzed < summary.n_tensors:
        parts.append(f"{summary.n_analyzed} measured")
    if summary.worst:
        worst = ", ".join(
            f"{doc.tensor(k).layer.name} {'W' if k[1] is TensorKind.WEIGHT else 'A'} "
            f"{st.fmt_num(s, 3)}\u00a0dB"
            for k, s in summary.worst
        )
        parts.append(f"worst: {worst}")
    if not math.isnan(summary.weighted_sqnr_db):
        sqnr = st.fmt_db(summary.weighted_sqnr_db).replace(" dB", "\u00a0dB")
        parts.append(f"model-wide weighted SQNR {sqnr}")
    return " · ".join(parts)
