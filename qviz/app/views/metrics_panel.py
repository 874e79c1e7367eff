"""The live metrics of the selected layer: weight and activation side by side.

A compact grid of selectable labels (so numbers can be copied into a report). Each column
shows either a stored result (a ``TensorResult``) or, while a clip range is being dragged, a
*preview* of the manual per-tensor range, marked as such so the two are never confused.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QSizePolicy, QWidget

from qviz.app.views import plot_style as st
from qviz.core.layerdata.before import BEFORE_ROWS, before_texts
from qviz.core.layerdata.columns import COMPARE_ROWS, ColumnData, compare_texts, metric_texts
from qviz.core.model.loading import TensorKind

# Row keys, in display order, with their labels. Tests and screenshots address cells by key.
ROWS: tuple[tuple[str, str], ...] = (
    ("tensor", "tensor"),
    ("layer", "layer"),
    ("config", "quantizer"),
    ("scale", "scale"),
    ("zero_point", "zero point"),
    ("step", "step"),
    ("clip", "clip range"),
    ("clipped", "clipped"),
    ("mse", "MSE"),
    ("sqnr", "SQNR"),
    ("worst", "worst channel"),
    ("max_abs_error", "max abs error"),
    ("cosine", "cosine"),
)
# Rows shown only while a configuration is pinned for comparison ("A"), after the others.
# Rows shown only while a transform changed a shown tensor (`qviz.core.layerdata.before`).
ALL_ROWS = ROWS + COMPARE_ROWS + BEFORE_ROWS
_COMPARE_KEYS = frozenset(key for key, _ in COMPARE_ROWS)
_BEFORE_KEYS = frozenset(key for key, _ in BEFORE_ROWS)
BEFORE_LABEL_COLOR = "#6d6d6d"
_COLUMNS = {TensorKind.WEIGHT: 1, TensorKind.ACTIVATION: 2}
_TITLES = {TensorKind.WEIGHT: "Weight", TensorKind.ACTIVATION: "Activation"}
_COLORS = {TensorKind.WEIGHT: st.WEIGHT_COLOR, TensorKind.ACTIVATION: st.ACTIVATION_COLOR}
PREVIEW_COLOR = "#a05a00"
MAX_NAME_CHARS = 48


def elide_middle(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """'encoder.layers.11.attn…/MatMul_output_0': both ends of a long name say the most."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head):]


class MetricsPanel(QFrame):
    """Grid: one row per metric, one column per tensor kind."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        grid = QGridLayout(self)
        grid.setContentsMargins(8, 6, 8, 6)
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(3)
        self._headers: dict[TensorKind, QLabel] = {}
        self._cells: dict[tuple[TensorKind, str], QLabel] = {}
        self._row_labels: dict[str, QLabel] = {}
        self._data: dict[TensorKind, ColumnData | None] = {k: None for k in _COLUMNS}
        self._texts: dict[tuple[TensorKind, str], str] = {}
        self._preview_style: dict[TensorKind, bool] = {}

        bold = QFont()
        bold.setBold(True)
        for kind, col in _COLUMNS.items():
            header = QLabel(_TITLES[kind])
            header.setFont(bold)
            header.setStyleSheet(f"color: {_COLORS[kind]};")
            grid.addWidget(header, 0, col)
            self._headers[kind] = header
        for row, (key, label) in enumerate(ALL_ROWS, start=1):
            name = QLabel(label)
            name.setStyleSheet(
                f"color: {st.PINNED_COLOR};" if key in _COMPARE_KEYS else (
                    f"color: {BEFORE_LABEL_COLOR}; font-style: italic;" if key in _BEFORE_KEYS
                    else "color: #5f6368;")
            )
            name.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            grid.addWidget(name, row, 0)
            self._row_labels[key] = name
            for kind, col in _COLUMNS.items():
                cell = QLabel("—")
                cell.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                # No word wrap: a wrapped label in a splitter can lose its second line.
                # Long tensor names are elided instead (full name in the tooltip).
                cell.setMinimumWidth(190)
                grid.addWidget(cell, row, col)
                self._cells[(kind, key)] = cell
        # Values stay next to their row names; spare width goes to an empty last column.
        grid.setColumnStretch(3, 1)
        self.clear()

    # ------------------------------------------------------------------ public API
    def set_column(self, kind: TensorKind, data: ColumnData | None, absent: str = "—") -> None:
        """Fill one column; ``None`` shows ``absent`` (e.g. "no weight") in the tensor row."""
        self._data[kind] = data
        header = self._headers[kind]
        if data is None:
            for key, _ in ALL_ROWS:
                self._cells[(kind, key)].setText("—")
                self._cells[(kind, key)].setToolTip("")
                self._texts[(kind, key)] = "—"
            self._cells[(kind, "tensor")].setText(absent)
            self._texts[(kind, "tensor")] = absent
            header.setText(_TITLES[kind])
            header.setStyleSheet(f"color: {_COLORS[kind]};")
            self._style_values(kind, preview=False)
            self._update_worst_row()
            self._update_compare_rows()
            return
        texts = (metric_texts(data) | compare_texts(data.metrics, data.pinned)
                 | before_texts(data.metrics, data.before))
        for key, text in texts.items():
            self._texts[(kind, key)] = text
            cell = self._cells[(kind, key)]
            named = key in ("tensor", "layer")
            cell.setText(elide_middle(text) if named else text)
            cell.setToolTip(text if named else "")
        if data.preview:
            approx = " (≈ from a histogram)" if data.approximate else ""
            header.setText(f"{_TITLES[kind]} — manual preview{approx}")
            header.setStyleSheet(f"color: {PREVIEW_COLOR};")
        else:
            header.setText(_TITLES[kind])
            header.setStyleSheet(f"color: {_COLORS[kind]};")
        self._style_values(kind, data.preview)
        # "worst channel" only means something for per-channel / per-group tensors.
        self._update_worst_row()
        self._update_compare_rows()

    def _update_compare_rows(self) -> None:
        show = any(d is not None and d.pinned is not None for d in self._data.values())
        before = any(d is not None and d.before is not None for d in self._data.values())
        for keys, on in ((_COMPARE_KEYS, show), (_BEFORE_KEYS, before)):
            for key in keys:
                self._row_labels[key].setVisible(on)
                for kind in _COLUMNS:
                    self._cells[(kind, key)].setVisible(on)

    def text(self, kind: TensorKind, key: str) -> str:
        """The full text of one cell (tests, screenshots); long names are elided on screen."""
        return self._texts[(kind, key)]

    def header_text(self, kind: TensorKind) -> str:
        return self._headers[kind].text()

    def column(self, kind: TensorKind) -> ColumnData | None:
        return self._data[kind]

    def clear(self) -> None:
        for kind in _COLUMNS:
            self.set_column(kind, None)

    # ------------------------------------------------------------------ internals
    def _style_values(self, kind: TensorKind, preview: bool) -> None:
        # Style sheets re-polish each label (~0.1 ms apiece): only on a change of state,
        # not on every drag step.
        if self._preview_style.get(kind) == preview:
            return
        self._preview_style[kind] = preview
        style = f"color: {PREVIEW_COLOR}; font-style: italic;" if preview else ""
        for key, _ in ROWS:
            self._cells[(kind, key)].setStyleSheet(style)

    def _update_worst_row(self) -> None:
        show = any(
            d is not None and d.channel_sqnr is not None and np.asarray(d.channel_sqnr).size > 1
            for d in self._data.values()
        )
        # Per-group weights too: the SQNR is per output channel (the channel view's heatmap
        # has the per-group detail).
        self._row_labels["worst"].setVisible(show)
        for kind in _COLUMNS:
            self._cells[(kind, "worst")].setVisible(show)
