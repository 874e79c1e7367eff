"""The layer table: every quantizable tensor, grouped by module path, sortable and filterable.

A tree (`LayerTreeModel`) of groups (``model.layers.3 ▸ self_attn``) over one row per tensor,
read from the `Document` (no copy of the numbers kept) and following its events: a change of
settings or new results repaint the rows of the tensors named and the groups above them; a
new sensitivity report or evaluation repaints its columns. Group rows give their worst and
weighted SQNR (the core's numbers). Sorting orders groups by their number and tensors within
their group; the filter keeps matching tensors and the groups above them. Selecting a tensor
row selects it in the document, and the other way round (its groups open to show it).
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from qviz.app.views.layer_tree_model import GROUP_ROLE, LayerTreeModel, TreeFilter
from qviz.app.views.table_cells import (
    BAD_BG,
    FAIR_BG,
    HEADERS,
    KEY_ROLE,
    SENSITIVITY_COLUMNS,
    SORT_ROLE,
    SPEED_COLUMNS,
    STALE_FG,
    Column,
    summary_text,
)
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.document.summary import summarize

__all__ = [
    "BAD_BG", "FAIR_BG", "KEY_ROLE", "SORT_ROLE", "STALE_FG", "Column", "LayerTable",
    "LayerTreeModel",
]

# Up to this many tensors every group starts open; above it only the top level shows, each
# group with its worst and weighted SQNR, and a group opens when one of its tensors is chosen.
EXPAND_ALL_MAX = 80
# Column widths are measured over this many tensor rows and group rows spread over the model,
# not over all of them: a thousand rows would take seconds of text measuring.
FIT_SAMPLE = 80
_CAPS = {Column.LAYER: 260, Column.TENSOR: 170, Column.SHAPE: 110, Column.NATIVE: 170}


class LayerTable(QWidget):
    """Filter box, the tree and the summary line, following the document."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self.model = LayerTreeModel(doc, self)
        self.proxy = TreeFilter(self)
        self.proxy.setSourceModel(self.model)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by layer, tensor or op  (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip(
            "Show only tensors containing this text in their full name or any column, with "
            "the groups they are in"
        )
        self.filter_edit.textChanged.connect(self._on_filter)

        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setUniformRowHeights(True)  # a thousand rows lay out without measuring each
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(Column.LAYER, Qt.SortOrder.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.setAllColumnsShowFocus(True)
        self.view.setIndentation(14)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.view.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        header.setSortIndicatorShown(True)
        header.setSectionsClickable(True)
        # One fixed order, set once: a group's weighted SQNR right after its worst, then the
        # columns that appear later (Δ vs A, eval clipped, sensitivity, sim vs native) beside
        # the error numbers, so in a narrow pane they stay in view without scrolling, and a
        # column that appears never moves another.
        beside = (Column.WEIGHTED, Column.VS_A, Column.CLIPPED, Column.EVAL_CLIPPED,
                  *SENSITIVITY_COLUMNS, Column.NATIVE, *SPEED_COLUMNS)
        for offset, col in enumerate(beside):
            to = header.visualIndex(Column.SQNR) + 1 + offset
            header.moveSection(header.visualIndex(col), to)
        self.view.setToolTip(
            "Every quantizable tensor, grouped by module; click a row to show its layer"
        )
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

        self.view.setColumnHidden(Column.WEIGHTED, True)  # until the model has groups
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
        grouped = self.model.tree.has_groups
        self.view.setRootIsDecorated(grouped)
        self.view.setColumnHidden(Column.WEIGHTED, not grouped)
        self._default_expansion()
        self._fit_columns()
        self.update_summary()
        self._on_selection()

    def _on_changed(self, keys: tuple[TensorKey, ...]) -> None:
        self.model.refresh(keys)
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
                self._fit_column(col)
        self.model.refresh_columns(min(SENSITIVITY_COLUMNS), max(SENSITIVITY_COLUMNS))

    def refresh_eval_stats(self) -> None:
        """The Eval clipped column follows the evaluation data's statistics (hidden without)."""
        hidden = self._doc.eval_stats.stats is None
        was_hidden = self.view.isColumnHidden(Column.EVAL_CLIPPED)
        self.view.setColumnHidden(Column.EVAL_CLIPPED, hidden)
        if was_hidden and not hidden:
            self._fit_column(Column.EVAL_CLIPPED)
        self.model.refresh_columns(Column.EVAL_CLIPPED, Column.EVAL_CLIPPED)
        self.update_summary()

    def refresh_pinned(self) -> None:
        """The Δ-vs-A column follows the pinned configuration (hidden while none is)."""
        hidden = self._doc.pinned is None
        was_hidden = self.view.isColumnHidden(Column.VS_A)
        self.view.setColumnHidden(Column.VS_A, hidden)
        if was_hidden and not hidden:
            self._fit_column(Column.VS_A)
        self.model.refresh_columns(Column.VS_A, Column.VS_A)

    def refresh_speed(self) -> None:
        """The speed columns follow the last full evaluation (hidden while there is none),
        right after sim vs native."""
        hidden = self._doc.measures.speed is None
        for col in SPEED_COLUMNS:
            was_hidden = self.view.isColumnHidden(col)
            self.view.setColumnHidden(col, hidden)
            if was_hidden and not hidden:
                self._fit_column(col)
        self.model.refresh_columns(min(SPEED_COLUMNS), max(SPEED_COLUMNS))

    def refresh_fusion(self) -> None:
        """The sim-vs-native column follows the last native evaluation's fusion report."""
        had = self.model.fusion_shown
        self.model.fusion_shown = self._doc.measures.fusion is not None
        self.model.refresh_columns(Column.NATIVE, Column.NATIVE)
        if self.model.fusion_shown and not had:
            self._fit_column(Column.NATIVE)

    # ----------------------------------------------------------------- selection
    def select(self, key: TensorKey | None) -> None:
        """Make `key` the current row, opening the groups it is in (no signal if it already
        is the current row)."""
        if key is None:
            return
        source = self.model.index_of(key)
        if not source.isValid():
            return
        proxy_index = self.proxy.mapFromSource(source)
        if not proxy_index.isValid():  # filtered out: show it rather than select a hidden row
            self.filter_edit.clear()
            proxy_index = self.proxy.mapFromSource(source)
        self._reveal(proxy_index)
        if self.view.currentIndex().siblingAtColumn(0) == proxy_index:
            return
        self.view.selectionModel().setCurrentIndex(
            proxy_index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.view.scrollTo(proxy_index)

    def _reveal(self, proxy_index: QModelIndex) -> None:
        chain = []
        parent = proxy_index.parent()
        while parent.isValid():
            chain.append(parent)
            parent = parent.parent()
        for index in reversed(chain):
            self.view.expand(index)

    def current_key(self) -> TensorKey | None:
        index = self.view.currentIndex()
        if not index.isValid():
            return None
        return self.proxy.data(index.siblingAtColumn(0), KEY_ROLE)

    # ----------------------------------------------------------------- reading (tests)
    def visible_keys(self) -> list[TensorKey]:
        """Tensors in the order the table lists them (sorted and filtered), groups open or
        not: depth first, a group's tensors where the group is."""
        keys: list[TensorKey] = []

        def walk(parent: QModelIndex) -> None:
            for r in range(self.proxy.rowCount(parent)):
                index = self.proxy.index(r, 0, parent)
                key = self.proxy.data(index, KEY_ROLE)
                if key is not None:
                    keys.append(key)
                else:
                    walk(index)

        walk(QModelIndex())
        return keys

    def shown_rows(self) -> list[str | TensorKey]:
        """What the view shows now, top to bottom (closed groups hide their rows): a group
        by its path, a tensor by its key."""
        rows: list[str | TensorKey] = []
        index = self.view.indexAt(self.view.viewport().rect().topLeft())
        index = self.proxy.index(0, 0) if not index.isValid() else index
        while index.isValid():
            key = self.proxy.data(index, KEY_ROLE)
            rows.append(key if key is not None else self.proxy.data(index, GROUP_ROLE))
            index = self.view.indexBelow(index)
        return rows

    def cell_text(self, key: TensorKey, column: Column) -> str:
        index = self.model.index_of(key, column)
        return "" if not index.isValid() else str(self.model.data(index))

    def group_text(self, path: str, column: Column) -> str:
        index = self.model.group_index(path, column)
        return "" if not index.isValid() else str(self.model.data(index))

    def is_expanded(self, path: str) -> bool:
        index = self.proxy.mapFromSource(self.model.group_index(path))
        return index.isValid() and self.view.isExpanded(index)

    def set_expanded(self, path: str, expanded: bool) -> None:
        index = self.proxy.mapFromSource(self.model.group_index(path))
        if index.isValid():
            self.view.setExpanded(index, expanded)

    def update_summary(self) -> None:
        # The document's summary, from the scores the tree keeps (same inputs, same function).
        summary = replace(
            summarize(self._doc.index, self.model.scored()),
            unrepresentative=self._doc.unrepresentative(),
        )
        text = summary_text(summary, self._doc)
        prefix = self.model.tree.prefix
        if prefix and self._doc.tensors:  # what every name shares is left out of the rows
            text += f" · names under {prefix}"
        self.summary_label.setText(text)

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    # ----------------------------------------------------------------- internals
    def _on_filter(self, text: str) -> None:
        self.proxy.set_needle(text)
        if self.proxy.needle:
            self.view.expandAll()  # every match in sight
        else:
            self._default_expansion()
            self._on_selection()

    def _default_expansion(self) -> None:
        if self.model.leaf_count() <= EXPAND_ALL_MAX:
            self.view.expandAll()
        else:
            self.view.collapseAll()

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        key = self.proxy.data(current.siblingAtColumn(0), KEY_ROLE) if current.isValid() \
            else None
        if key is not None:
            self._doc.select(key)

    def _fit_columns(self) -> None:
        for col in Column:
            if not self.view.isColumnHidden(col):
                self._fit_column(col)

    def _fit_column(self, col: Column) -> None:
        """Fit a column to its header and a sample of its cells (up to FIT_SAMPLE tensors'
        and as many groups' spread over the model), within its cap."""
        view, model, tree = self.view, self.model, self.model.tree
        metrics = QFontMetrics(view.font())
        bold = QFont(view.font())
        bold.setBold(True)
        bold_metrics = QFontMetrics(bold)
        width = QFontMetrics(view.header().font()).horizontalAdvance(HEADERS[col][0]) + 24
        # The name column also holds the tree's indentation (and the branch marks' margin).
        indent = view.indentation() if col is Column.LAYER else 0
        margin = 16 + (indent if tree.has_groups else 0)
        keys = tree.root.keys
        for key in keys[:: max(1, len(keys) // FIT_SAMPLE)]:
            text = str(model.data(model.index_of(key, col)) or "")
            extra = len(tree.ancestors(key)) * indent
            width = max(width, metrics.horizontalAdvance(text) + margin + extra)
        paths = list(tree.groups)
        for path in paths[:: max(1, len(paths) // FIT_SAMPLE)]:
            text = str(model.data(model.group_index(path, col)) or "")
            extra = tree.level(path) * indent
            width = max(width, bold_metrics.horizontalAdvance(text) + margin + extra)
        if col in (Column.SQNR, Column.CLIPPED):
            width = max(width, 70)
        view.header().resizeSection(col, min(width, _CAPS.get(col, 10_000)))
