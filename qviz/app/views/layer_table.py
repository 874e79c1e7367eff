"""The layer table: one row per quantizable tensor, sortable and filterable.

`LayerTableModel` reads everything from the `Document` (it keeps no copy of the numbers) and
follows its events: a change of settings or new results repaint just the rows of the tensors
named; a new sensitivity report or evaluation repaints its columns. A
`QSortFilterProxyModel` sorts by the raw numbers (not the text) and filters by substring over
every column. Selecting a row selects the tensor in the document, and the other way round.
"""

from __future__ import annotations

import math
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
from PySide6.QtGui import QBrush
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
from qviz.app.views.table_cells import (
    BAD_BG,
    FAIR_BG,
    HEADERS,
    KEY_ROLE,
    SENSITIVITY_COLUMNS,
    SORT_ROLE,
    SPEED_COLUMNS,
    SQNR_TOOLTIP,
    STALE_FG,
    VALUE_COLUMNS,
    Column,
    eval_clipped_text,
    eval_clipped_tooltip,
    native_text,
    native_tooltip,
    sensitivity_text,
    sensitivity_tooltip,
    sensitivity_value,
    speed_background,
    speed_text,
    speed_tooltip,
    speed_value,
    sqnr_background,
    summary_text,
    vs_pinned,
)
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.config import method_label
from qviz.core.document.document import Document
from qviz.core.model.loading import TensorKind
from qviz.core.text import fmt_count, fmt_shape, fmt_signed


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
        if col is Column.EVAL_CLIPPED:
            return self._eval_clipped_data(key, role)
        if col in SPEED_COLUMNS and role != KEY_ROLE:
            return self._speed_data(key, col, role)
        if col is Column.VS_A and role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
            delta = vs_pinned(self._doc, key)
            if role == SORT_ROLE:
                return -math.inf if delta is None else delta
            return "" if delta is None else ("same" if delta == 0 else fmt_signed(delta, 2))
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

    def _eval_clipped_data(self, key: TensorKey, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return eval_clipped_text(self._doc, key)
        if role == SORT_ROLE:
            r = self._doc.representativeness(key)
            return -1.0 if r is None else r.eval_clipped
        if role == Qt.ItemDataRole.ToolTipRole:
            return eval_clipped_tooltip(self._doc, key)
        if role == Qt.ItemDataRole.BackgroundRole:
            r = self._doc.representativeness(key)
            return QBrush(FAIR_BG) if r is not None and r.flagged else None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def refresh_columns(self, first: Column, last: Column) -> None:
        """Every row of these columns changed (a sensitivity report, a fusion report)."""
        if self._keys:
            self.dataChanged.emit(self.index(0, first), self.index(len(self._keys) - 1, last))

    # ----------------------------------------------------------------- speed
    def _speed_data(self, key: TensorKey, col: Column, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return speed_text(self._doc, key, col)
        if role == SORT_ROLE:
            value = speed_value(self._doc, key, col)
            return -math.inf if value is None or math.isnan(value) else value
        if role == Qt.ItemDataRole.ToolTipRole:
            return speed_tooltip(self._doc, key)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and not self._doc.measures.fusion_current:
            return QBrush(STALE_FG)
        if role == Qt.ItemDataRole.BackgroundRole and col is Column.SPEEDUP:
            bg = speed_background(self._doc, key)
            return None if bg is None else QBrush(bg)
        return None

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
        # One fixed order, set once: the columns that appear later (Δ vs A, eval clipped,
        # sensitivity, sim vs native) sit beside the error numbers, so in a narrow pane they
        # stay in view without scrolling, and a column that appears never moves another.
        beside = (Column.VS_A, Column.CLIPPED, Column.EVAL_CLIPPED, *SENSITIVITY_COLUMNS)
        for offset, col in enumerate((*beside, Column.NATIVE)):
            to = header.visualIndex(Column.SQNR) + 1 + offset
            header.moveSection(header.visualIndex(col), to)
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

        events = doc.events
        events.model.connect(self.reset)
        events.config.connect(self._on_changed)
        events.results.connect(self._on_changed)
        events.stats.connect(self._on_stats)
        events.selection.connect(self._on_selection)
        events.sensitivity.connect(self.refresh_sensitivity)
        events.evaluation.connect(self.refresh_fusion)
        events.evaluation.connect(self.refresh_speed)
        events.pinned.connect(self.refresh_pinned)
        events.eval_stats.connect(self.refresh_eval_stats)
        events.pinned_results.connect(lambda _keys: self.refresh_pinned())
        self.refresh_sensitivity()
        self.refresh_pinned()
        self.refresh_eval_stats()
        self.refresh_speed()

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

    def refresh_eval_stats(self) -> None:
        """The Eval clipped column follows the evaluation data's statistics (hidden without)."""
        hidden = self._doc.eval_stats.stats is None
        was_hidden = self.view.isColumnHidden(Column.EVAL_CLIPPED)
        self.view.setColumnHidden(Column.EVAL_CLIPPED, hidden)
        if was_hidden and not hidden:
            self.view.resizeColumnToContents(Column.EVAL_CLIPPED)
        self.model.refresh_columns(Column.EVAL_CLIPPED, Column.EVAL_CLIPPED)
        self.update_summary()

    def refresh_pinned(self) -> None:
        """The Δ-vs-A column follows the pinned configuration (hidden while none is)."""
        hidden = self._doc.pinned is None
        was_hidden = self.view.isColumnHidden(Column.VS_A)
        self.view.setColumnHidden(Column.VS_A, hidden)
        if was_hidden and not hidden:
            self.view.resizeColumnToContents(Column.VS_A)
        self.model.refresh_columns(Column.VS_A, Column.VS_A)

    def refresh_speed(self) -> None:
        """The speed columns follow the last full evaluation (hidden while there is none),
        right after sim vs native."""
        hidden = self._doc.measures.speed is None
        header = self.view.horizontalHeader()
        for offset, col in enumerate(SPEED_COLUMNS):
            was_hidden = self.view.isColumnHidden(col)
            self.view.setColumnHidden(col, hidden)
            if was_hidden and not hidden:
                header.moveSection(
                    header.visualIndex(col), header.visualIndex(Column.NATIVE) + 1 + offset
                )
                self.view.resizeColumnToContents(col)
        self.model.refresh_columns(min(SPEED_COLUMNS), max(SPEED_COLUMNS))

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
