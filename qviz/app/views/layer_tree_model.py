"""The layer table's Qt model: the document's tensors as a tree of module paths.

Leaves are tensors (one row each, as the flat table had), groups are module paths
(`qviz.core.document.grouping`). Every number is read from the document when Qt asks; the
group numbers are the core's `GroupSummary`, computed for every group at once when a group
row is first painted after a change. `TreeFilter` sorts by raw numbers and filters by
substring over a tensor's full names and every shown text; a match keeps its groups.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QBrush, QFont

from qviz.app.views import plot_style as st
from qviz.app.views.group_cells import (
    SHARED_COLUMNS,
    group_sort_value,
    group_text,
    group_tooltip,
    kind_letter,
)
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
    vs_pinned,
)
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.config import method_label
from qviz.core.document.document import Document
from qviz.core.document.grouping import (
    Group,
    GroupSummary,
    TensorScore,
    TensorTree,
    build_tree,
    common_label,
    kinds_label,
    summarize_group,
)
from qviz.core.model.loading import TensorKind
from qviz.core.text import fmt_count, fmt_shape, fmt_signed

Index = QModelIndex | QPersistentModelIndex
#: A group row's path (`data(index, GROUP_ROLE)`), None for a tensor row.
GROUP_ROLE = Qt.ItemDataRole.UserRole + 2
#: What the filter matches a row against (lower case).
FILTER_ROLE = Qt.ItemDataRole.UserRole + 3
_NUMBER_COLUMNS = (
    Column.PARAMS, Column.SQNR, Column.CLIPPED, Column.WEIGHTED, *SENSITIVITY_COLUMNS,
)
_ROOT = 0
# Qt asks index() and data() thousands of times per paint: the enum's own lookups
# (len(Column), Column(i)) were a third of the table's paint.
_COLUMNS = tuple(Column)
_N_COLUMNS = len(_COLUMNS)


class LayerTreeModel(QAbstractItemModel):
    """Groups and tensors of the document (see the module docstring). A row's internal id
    is its node number; node 0 is the invisible root."""

    def __init__(self, doc: Document, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self.fusion_shown = False
        self.tree: TensorTree = build_tree(())
        self._clear()

    def _clear(self) -> None:
        self._parent: list[int] = [_ROOT]
        self._row: list[int] = [0]
        self._children: list[list[int]] = [[]]
        self._node: list[Group | TensorKey | None] = [None]
        self._depth: list[int] = [0]        # graph order of the node's first tensor
        self._leaf: dict[TensorKey, int] = {}
        self._group: dict[str, int] = {}
        # Group numbers and shared labels, kept until a tensor under the group changes (a
        # one-tensor change recomputes its few groups, not all of a thousand tensors' groups).
        self._scores: dict[TensorKey, TensorScore] | None = None
        self._params: dict[TensorKey, float] = {}
        self._summaries: dict[str, GroupSummary] = {}
        self._shared: dict[tuple[str, Column], str] = {}

    # ----------------------------------------------------------------- updates
    def reset(self) -> None:
        """The model changed: rebuild the tree."""
        self.beginResetModel()
        doc = self._doc
        self.tree = build_tree((t.key, t.layer.name) for t in doc.tensors)
        self._clear()
        self._add_children(_ROOT, self.tree.root)
        self.endResetModel()

    def _add_children(self, parent: int, group: Group) -> None:
        for row, child in enumerate(group.children):
            node = len(self._node)
            self._parent.append(parent)
            self._row.append(row)
            self._children.append([])
            self._node.append(child)
            first = child if isinstance(child, TensorKey) else child.keys[0]
            self._depth.append(self._doc.tensor(first).layer.depth)
            self._children[parent].append(node)
            if isinstance(child, Group):
                self._group[child.path] = node
                self._add_children(node, child)
            else:
                self._leaf[child] = node

    def refresh(self, keys: Iterable[TensorKey] | None = None) -> None:
        """Settings or results changed for `keys` (None: all): repaint those rows and the
        groups above them."""
        if keys is None:
            self._scores = None
            self._summaries.clear()
            self._shared.clear()
            if len(self._node) > 1:
                self._emit_rows(range(1, len(self._node)), Column.SQNR, max(Column))
            return
        keys = [k for k in keys if k in self._leaf]
        paths = {p for k in keys for p in self.tree.ancestors(k)}
        if self._scores is not None:
            for key in keys:
                self._score(key)
        for path in paths:
            self._summaries.pop(path, None)
        for cached in [c for c in self._shared if c[0] in paths]:
            del self._shared[cached]
        nodes = [self._leaf[k] for k in keys] + [self._group[p] for p in paths]
        if nodes:
            self._emit_rows(nodes, Column.SQNR, max(Column))

    def refresh_columns(self, first: Column, last: Column) -> None:
        """Every row of these columns changed (a sensitivity report, a fusion report)."""
        if len(self._node) > 1:
            self._emit_rows(range(1, len(self._node)), first, last)

    def _emit_rows(self, nodes: Iterable[int], first: int, last: int) -> None:
        # One signal per run of consecutive rows under one parent: a one-tensor change is a
        # few rows' repaint, a change to every weight a few signals per group, not thousands.
        by_parent: dict[int, list[int]] = defaultdict(list)
        for n in set(nodes):
            by_parent[self._parent[n]].append(self._row[n])
        for parent, rows in by_parent.items():
            rows.sort()
            start = prev = rows[0]
            for r in [*rows[1:], None]:
                if r is not None and r == prev + 1:
                    prev = r
                    continue
                self.dataChanged.emit(
                    self._index(parent, start, first), self._index(parent, prev, last)
                )
                if r is not None:
                    start = prev = r

    def _index(self, parent: int, row: int, col: int) -> QModelIndex:
        return self.createIndex(row, col, self._children[parent][row])

    # ----------------------------------------------------------------- lookups
    def index_of(self, key: TensorKey, column: int = 0) -> QModelIndex:
        """The source index of a tensor's row (invalid if the model has no such tensor)."""
        node = self._leaf.get(key)
        if node is None:
            return QModelIndex()
        return self.createIndex(self._row[node], column, node)

    def group_index(self, path: str, column: int = 0) -> QModelIndex:
        node = self._group.get(path)
        if node is None:
            return QModelIndex()
        return self.createIndex(self._row[node], column, node)

    def key_at(self, index: Index) -> TensorKey | None:
        node = self._node[index.internalId()] if index.isValid() else None
        return node if isinstance(node, TensorKey) else None

    def group_at(self, index: Index) -> Group | None:
        node = self._node[index.internalId()] if index.isValid() else None
        return node if isinstance(node, Group) else None

    def leaf_count(self) -> int:
        return len(self._leaf)

    def summary(self, path: str) -> GroupSummary:
        """A group's numbers (the core's), kept until a tensor under it changes."""
        summary = self._summaries.get(path)
        if summary is None:
            if self._scores is None:
                self._scores = {}
                for key in self._leaf:
                    self._score(key)
                self._params = {k: self._doc.element_count(k) for k in self._leaf
                                if k.kind is TensorKind.WEIGHT}
            group = self.tree.groups[path] if path else self.tree.root
            summary = self._summaries[path] = summarize_group(group, self._scores, self._params)
        return summary

    def scored(self) -> list[tuple[TensorKey, float, float]]:
        """(tensor, SQNR dB, element count) of every measured tensor in graph order: what
        the document's `summary` reads, from the scores kept here (a change looks up only
        the tensors it changed, not a thousand)."""
        if self._scores is None:
            self.summary("")
        assert self._scores is not None
        scores = self._scores
        return [(t.key, s.sqnr_db, s.size) for t in self._doc.tensors
                if (s := scores.get(t.key)) is not None]

    def _score(self, key: TensorKey) -> None:
        """Keep a tensor's score up to date (the SQNR of its result; exact when kept float)."""
        assert self._scores is not None
        doc = self._doc
        result = doc.result(key)
        if result is None:
            self._scores.pop(key, None)
            return
        quantized = doc.config_for(key).quantize
        self._scores[key] = TensorScore(
            sqnr_db=float(result.metrics.sqnr_db) if quantized else math.inf,
            size=doc.element_count(key),
            clipped=float(result.metrics.clipped_fraction) if quantized else 0.0,
        )

    # ----------------------------------------------------------------- Qt model API
    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        pid = parent.internalId() if parent.isValid() else _ROOT
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        children = self._children[pid]
        if not (0 <= row < len(children) and 0 <= column < _N_COLUMNS):
            return QModelIndex()
        return self.createIndex(row, column, children[row])

    def parent(self, index: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        if not index.isValid():
            return QModelIndex()
        pid = self._parent[index.internalId()]
        if pid == _ROOT:
            return QModelIndex()
        return self.createIndex(self._row[pid], 0, pid)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if not parent.isValid():
            return len(self._children[_ROOT])
        if parent.column() != 0:
            return 0
        return len(self._children[parent.internalId()])

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return _N_COLUMNS

    def hasChildren(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return self.rowCount(parent) > 0

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: E501
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(Column):
            return None
        title, tip = HEADERS[Column(section)]
        if role == Qt.ItemDataRole.DisplayRole:
            return title
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node = self._node[index.internalId()]
        col = _COLUMNS[index.column()]
        if isinstance(node, Group):
            return self._group_data(index.internalId(), node, col, role)
        assert node is not None
        return self._leaf_data(node, col, role)

    # ----------------------------------------------------------------- group rows
    def _group_data(self, node: int, group: Group, col: Column, role: int) -> Any:
        if role == GROUP_ROLE:
            return group.path
        if role == Qt.ItemDataRole.FontRole and col is Column.LAYER:
            font = QFont()
            font.setBold(True)
            return font
        if role == FILTER_ROLE:
            return f"{group.path}\n{group.label}".lower()
        if role not in (
            Qt.ItemDataRole.DisplayRole, SORT_ROLE, Qt.ItemDataRole.ToolTipRole,
            Qt.ItemDataRole.BackgroundRole, Qt.ItemDataRole.TextAlignmentRole,
        ):
            return None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _right() if col in _NUMBER_COLUMNS else None
        summary = self.summary(group.path)
        if role == Qt.ItemDataRole.BackgroundRole:
            if col is Column.SQNR and summary.worst is not None:
                bg = sqnr_background(summary.worst[1])
                return None if bg is None else QBrush(bg)
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return group_tooltip(group, summary, lambda k: self._doc.tensor(k).layer.name)
        text = self._shared_label(group, col) if col in SHARED_COLUMNS else \
            group_text(group, summary, col)
        if role == SORT_ROLE:
            value = group_sort_value(group, summary, col, self._depth[node])
            return text if value is None else value
        return text

    def _shared_label(self, group: Group, col: Column) -> str:
        cached = self._shared.get((group.path, col))
        if cached is None:
            labels = {k: self._text(k, col) for k in group.keys}
            if col in (Column.KIND, Column.OP):
                cached = common_label(group, labels, mixed="")
            else:  # settings: the weights' and the activations' apart
                cached = kinds_label(group, labels)
            self._shared[(group.path, col)] = cached
        return cached

    # ----------------------------------------------------------------- tensor rows
    def _leaf_data(self, key: TensorKey, col: Column, role: int) -> Any:
        if role == KEY_ROLE:
            return key
        if role == GROUP_ROLE:
            return None
        if role == FILTER_ROLE:
            return self._filter_text(key)
        if col is Column.NATIVE:
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
        if role == Qt.ItemDataRole.BackgroundRole and col is Column.SQNR:
            result = self._doc.result(key)
            if result is not None and self._doc.config_for(key).quantize:
                bg = sqnr_background(float(result.metrics.sqnr_db))
                return None if bg is None else QBrush(bg)
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(key, col)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in _NUMBER_COLUMNS:
            return _right()
        if (
            role == Qt.ItemDataRole.ForegroundRole
            and col in SENSITIVITY_COLUMNS
            and self._doc.measures.sensitivity_stale
        ):
            return QBrush(STALE_FG)
        return None

    def _filter_text(self, key: TensorKey) -> str:
        layer = self._doc.tensor(key).layer
        parts = [layer.name, key.name, kind_letter(key), layer.op_type]
        parts += [self._text(key, c) for c in (
            Column.SQNR, Column.CLIPPED, Column.METHOD, Column.GRANULARITY, Column.FORMAT,
            Column.SHAPE, Column.PARAMS,
        )]
        if self.fusion_shown:
            parts.append(native_text(self._doc.measures.fusion, layer.name))
        if self._doc.measures.sensitivity is not None:
            parts += [sensitivity_text(self._doc, key, c) for c in SENSITIVITY_COLUMNS]
        return "\n".join(parts).lower()

    def _text(self, key: TensorKey, col: Column) -> str:
        doc = self._doc
        tensor = doc.tensor(key)
        if col is Column.LAYER:
            return self.tree.labels.get(key, tensor.layer.name)
        if col is Column.KIND:
            return kind_letter(key)
        if col is Column.TENSOR:
            return key.name
        if col is Column.OP:
            return tensor.layer.op_type
        if col is Column.SHAPE:
            return fmt_shape(doc.shape(key))
        if col is Column.PARAMS:
            return fmt_count(doc.element_count(key)) if key.kind is TensorKind.WEIGHT else ""
        if col in SENSITIVITY_COLUMNS:
            return sensitivity_text(doc, key, col)
        if col is Column.WEIGHTED:
            return ""  # a group's number; a tensor's own is its SQNR
        if col in SPEED_COLUMNS:
            return speed_text(self._doc, key, col)
        if col is Column.NATIVE:
            return str(self._native_data(key, Qt.ItemDataRole.DisplayRole))
        if col is Column.EVAL_CLIPPED:
            return eval_clipped_text(doc, key)
        if col is Column.VS_A:
            return str(self._leaf_data(key, col, Qt.ItemDataRole.DisplayRole))
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
            return doc.element_count(key) if key.kind is TensorKind.WEIGHT else -1.0
        if col in SENSITIVITY_COLUMNS:
            value = sensitivity_value(doc, key, col)
            return -math.inf if value is None or math.isnan(value) else value  # unknowns last
        if col in (Column.SQNR, Column.CLIPPED, Column.WEIGHTED):
            result = doc.result(key)
            clipped = col is Column.CLIPPED
            if not doc.config_for(key).quantize:
                return -1.0 if clipped else math.inf  # float: lossless
            if result is None:
                return -1.0 if clipped else math.inf  # unknowns sort last/first
            value = result.metrics.clipped_fraction if clipped else result.metrics.sqnr_db
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
            return (f"{layer.name}\n{'weight' if key.kind is TensorKind.WEIGHT else 'input'}: "
                    f"{key.name}\nnode: {layer.node_name}\nop: {layer.op_type}")
        if col is Column.TENSOR:
            return key.name
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
            return _right()
        return None

    def _speed_data(self, key: TensorKey, col: Column, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return speed_text(self._doc, key, col)
        if role == SORT_ROLE:
            value = speed_value(self._doc, key, col)
            return -math.inf if value is None or math.isnan(value) else value
        if role == Qt.ItemDataRole.ToolTipRole:
            return speed_tooltip(self._doc, key)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _right()
        if role == Qt.ItemDataRole.ForegroundRole and not self._doc.measures.fusion_current:
            return QBrush(STALE_FG)
        if role == Qt.ItemDataRole.BackgroundRole and col is Column.SPEEDUP:
            bg = speed_background(self._doc, key)
            return None if bg is None else QBrush(bg)
        return None

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


def _right() -> int:
    return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


class TreeFilter(QSortFilterProxyModel):
    """Sorts by SORT_ROLE; keeps the rows whose FILTER_ROLE text holds the filter text, and
    the groups above them (a group that matches keeps all it holds)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._needle = ""
        self.setSortRole(SORT_ROLE)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(True)
        # Re-sort when SQNR values change, so "sort by SQNR" stays true while exploring.
        self.setDynamicSortFilter(True)

    @property
    def needle(self) -> str:
        return self._needle

    def set_needle(self, text: str) -> None:
        needle = text.strip().lower()
        if needle != self._needle:
            self.beginFilterChange()
            self._needle = needle
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        if not self._needle:
            return True
        source = self.sourceModel()
        text = source.data(source.index(source_row, 0, source_parent), FILTER_ROLE)
        return bool(text) and self._needle in text
