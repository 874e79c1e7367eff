"""Error versus clip threshold for one tensor, with where each method lands.

x is the clip value: |clip| for symmetric formats (the range is [-c, c]); for asymmetric
formats the upper bound, with the lower bound held at the current choice (the axis label says
so). y is SQNR in dB (default), MSE (log axis) or, for activations, KL divergence — the
quantity the entropy method minimizes. A vertical marker shows where each calibration method
lands and a black one the current choice, each with a point on the curve and a legend entry
giving its x and y, so the numbers can be checked against the metrics panel.
"""

from __future__ import annotations

import html
from dataclasses import replace

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from qviz.app.views import plot_style as st
from qviz.core.calibration.methods import Method
from qviz.core.layerdata.curves import CurveData, Marker
from qviz.core.model.loading import TensorKind

# y modes, in combo order.
SQNR, MSE, KL = "sqnr", "mse", "kl"
_Y_LABELS = {SQNR: "SQNR (dB)", MSE: "MSE", KL: "KL divergence"}
_Y_COLORS = {SQNR: st.SQNR_COLOR, MSE: st.MSE_COLOR, KL: st.KL_COLOR}
# log10 of zero is undefined; an MSE this small is below anything float32 can express anyway.
_MSE_FLOOR = 1e-30
# KL is 0 where the clip keeps every value exactly: plot that as this floor on the log axis.
_KL_FLOOR = 1e-9
# MSE spans decades and KL falls steeply towards its minimum: both read best on a log axis.
_LOG_MODES = frozenset({MSE, KL})


class ErrorCurveView(QWidget):
    """Error-versus-threshold plot with a tensor selector and a y-quantity selector."""

    tensorChanged = Signal(object)   # TensorKind

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self._curves: dict[TensorKind, CurveData | None] = {
            TensorKind.WEIGHT: None, TensorKind.ACTIVATION: None,
        }
        self._kind = TensorKind.WEIGHT
        self._preferred = TensorKind.WEIGHT  # the kind the user chose last
        self._placeholder_text = "no tensor to plot"
        self._mode = SQNR

        self.tensor_combo = QComboBox()
        self.tensor_combo.addItem("weight", TensorKind.WEIGHT)
        self.tensor_combo.addItem("activation", TensorKind.ACTIVATION)
        self.y_combo = QComboBox()
        for mode in (SQNR, MSE, KL):
            self.y_combo.addItem(_Y_LABELS[mode], mode)
        self.title = QLabel("Error vs clip threshold")
        self.title.setStyleSheet("font-weight: 600;")
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.title, 1)
        top.addWidget(QLabel("tensor"))
        top.addWidget(self.tensor_combo)
        top.addWidget(QLabel("y"))
        top.addWidget(self.y_combo)

        self.plot_widget = pg.PlotWidget()
        self.plot = self.plot_widget.getPlotItem()
        st.style_plot(self.plot, grid_y=False)
        self.plot.getViewBox().setMouseEnabled(x=True, y=False)
        self.plot.getViewBox().disableAutoRange()
        self.curve = pg.PlotDataItem(pen=pg.mkPen(st.SQNR_COLOR, width=2))
        self.plot.addItem(self.curve)
        # One line + label + point per marker, created once; hidden when a method is absent.
        # Labels sit at staggered heights so markers that land close together stay legible.
        self.marker_lines: dict[Method | str, pg.InfiniteLine] = {}
        self.marker_points: dict[Method | str, pg.ScatterPlotItem] = {}
        self._colours: dict[Method | str, str] = {}
        specs: list[tuple[Method | str, str, float, Qt.PenStyle, str]] = [
            (m, st.METHOD_COLORS[m], 1.5, Qt.PenStyle.DashLine, st.METHOD_NAMES[m])
            for m in (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)
        ]
        specs.append(("current", st.CURRENT_COLOR, 2.5, Qt.PenStyle.SolidLine, "current"))
        self.marker_labels: dict[Method | str, pg.InfLineLabel] = {}
        for key, colour, width, style, name in specs:
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen(colour, width=width, style=style))
            # Text runs along the line (narrow), in tiers chosen per draw (_place_labels).
            label = pg.InfLineLabel(
                line, text=name, position=0.2, color=colour, rotateAxis=(1, 0),
                fill=pg.mkBrush(255, 255, 255, 170),
            )
            label.setFont(st.label_font(7.5, bold=key == "current"))
            self.marker_labels[key] = label
            point = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(colour), pen=pg.mkPen("w"))
            line.setZValue(5 if key == "current" else 4)
            point.setZValue(6)
            self.plot.addItem(line, ignoreBounds=True)
            self.plot.addItem(point)
            self.marker_lines[key] = line
            self.marker_points[key] = point
            self._colours[key] = colour
        # Current choice without a single x (per-channel weights): a horizontal level instead.
        self.current_level = pg.InfiniteLine(
            angle=0, pen=pg.mkPen(st.CURRENT_COLOR, width=2, style=Qt.PenStyle.DotLine)
        )
        self._colours["level"] = st.CURRENT_COLOR
        self.current_level_label = pg.InfLineLabel(
            self.current_level, text="current", position=0.03, color=st.CURRENT_COLOR,
            anchors=[(0, 1), (0, 1)], fill=pg.mkBrush(255, 255, 255, 170),
        )
        self.current_level_label.setFont(st.label_font(7.5, bold=True))
        self.plot.addItem(self.current_level, ignoreBounds=True)
        # The legend lives under the plot, not on it: it can never hide a marker or the
        # curve, and it is never cut off however small the plot is.
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setStyleSheet("font-size: 8.5pt;")
        self._legend_entries: list[tuple[Method | str, str]] = []
        self._drawn: tuple | None = None   # what the curve item holds (see _redraw)
        self._marker_xy: dict[Method | str, tuple[float, float]] = {}

        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #5f6368; font-size: 8.5pt;")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(top)
        self.placeholder = QLabel("select a layer")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #5f6368; background: white;")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.plot_widget)
        self.stack.addWidget(self.placeholder)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.note)

        self.tensor_combo.currentIndexChanged.connect(self._on_tensor_combo)
        self.y_combo.currentIndexChanged.connect(self._on_y_combo)
        self.clear()

    # ------------------------------------------------------------------ public API
    def set_curves(
        self, weight: CurveData | None, activation: CurveData | None,
        placeholder: str = "no tensor to plot",
    ) -> None:
        """The layer's curves; `placeholder` says why there is none to plot."""
        self._curves = {TensorKind.WEIGHT: weight, TensorKind.ACTIVATION: activation}
        self._placeholder_text = placeholder
        # The kind last chosen, when it has a curve: one still being computed (a large
        # layer's) only lends its place to the other until it comes.
        kind = self._preferred
        other = TensorKind.ACTIVATION if kind is TensorKind.WEIGHT else TensorKind.WEIGHT
        if self._curves[kind] is None and self._curves[other] is not None:
            kind = other
        self._select(kind, redraw=False)
        self._redraw()

    def select_tensor(self, kind: TensorKind) -> None:
        """Show ``kind``'s curve (the layer view calls this when that histogram is dragged)."""
        if self._curves.get(kind) is not None and kind is not self._kind:
            self._preferred = kind
            self._select(kind)

    def set_y_mode(self, mode: str) -> None:
        self.y_combo.setCurrentIndex(self.y_combo.findData(mode))

    @property
    def y_mode(self) -> str:
        return self._mode

    @property
    def tensor_kind(self) -> TensorKind:
        return self._kind

    def curve_data(self, kind: TensorKind | None = None) -> CurveData | None:
        return self._curves[kind or self._kind]

    def move_current(self, kind: TensorKind, x: float, sqnr: float, mse: float) -> None:
        """Live: put the current-choice marker at ``x`` while a clip range is dragged (a drag
        always means one per-tensor Manual range, so per-channel curves get a marker too)."""
        data = self._curves.get(kind)
        if data is None:
            return
        moved = replace(
            data, current=Marker(x, sqnr, mse), current_label="manual (dragging)",
            current_level=None,
        )
        self._curves[kind] = moved
        if kind is self._kind:
            self._draw_markers(moved, only_current=True)

    def clear(self) -> None:
        self._curves = {TensorKind.WEIGHT: None, TensorKind.ACTIVATION: None}
        self.curve.setData([], [])
        self._drawn = None
        self._marker_xy.clear()
        for key in self.marker_lines:
            self.marker_lines[key].setVisible(False)
            self.marker_points[key].setVisible(False)
        self.current_level.setVisible(False)
        self._set_legend([])
        self.note.setText("")
        self.title.setText("Error vs clip threshold")
        self.stack.setCurrentWidget(self.placeholder)

    # ------------------------------------------------------------------ internals
    def _select(self, kind: TensorKind, redraw: bool = True) -> None:
        self._kind = kind
        self.tensor_combo.blockSignals(True)
        self.tensor_combo.setCurrentIndex(self.tensor_combo.findData(kind))
        self.tensor_combo.blockSignals(False)
        # KL is defined on activation histograms only.
        kl_index = self.y_combo.findData(KL)
        has_kl = (d := self._curves.get(kind)) is not None and d.kl is not None
        model = self.y_combo.model()
        assert isinstance(model, QStandardItemModel)  # a QComboBox's own model
        model.item(kl_index).setEnabled(has_kl)
        if self._mode == KL and not has_kl:
            self.y_combo.blockSignals(True)
            self.y_combo.setCurrentIndex(self.y_combo.findData(SQNR))
            self.y_combo.blockSignals(False)
            self._mode = SQNR
        if redraw:
            self._redraw()
        self.tensorChanged.emit(kind)

    def _on_tensor_combo(self, index: int) -> None:
        kind = self.tensor_combo.itemData(index)
        if self._curves.get(kind) is None:
            return
        self._preferred = kind
        self._select(kind)

    def _on_y_combo(self, index: int) -> None:
        self._mode = self.y_combo.itemData(index)
        self._redraw()

    def _y(self, data: CurveData) -> np.ndarray:
        if self._mode == MSE:
            return np.maximum(data.mse, _MSE_FLOOR)
        if self._mode == KL and data.kl is not None:
            return np.where(np.isfinite(data.kl), np.maximum(data.kl, _KL_FLOOR), data.kl)
        return data.sqnr_db

    def _y_of(self, data: CurveData, marker: Marker) -> float:
        """A marker's y: its own SQNR / MSE; KL read off the curve (it depends on |c| only)."""
        if self._mode == SQNR:
            return marker.sqnr_db
        if self._mode == MSE:
            return max(marker.mse, _MSE_FLOOR)
        assert data.kl is not None
        finite = np.isfinite(data.kl)
        if not finite.any():
            return float("nan")
        kl = float(np.interp(marker.x, data.clips[finite], data.kl[finite]))
        return max(kl, _KL_FLOOR)

    def _redraw(self) -> None:
        data = self._curves.get(self._kind)
        if data is None:
            self.clear()
            self.placeholder.setText(self._placeholder_text)
            return
        self.stack.setCurrentWidget(self.plot_widget)
        self.title.setText("Error vs clip threshold")
        self.note.setText(data.note)
        xs = [float(data.clips.min()), float(data.clips.max())]
        xs += [m.x for m in data.markers.values()]
        if data.current is not None:
            xs.append(data.current.x)
        x0, x1 = min(0.0, *xs), max(xs)
        pad = 0.02 * (x1 - x0) if x1 > x0 else 1.0
        # Curves are memoised by the layer view: the same arrays in the same mode need no
        # new path (re-showing a layer after a change elsewhere repaints nothing here).
        drawn = (id(data.clips), id(data.sqnr_db), self._mode, data.x_label, x0, x1 + pad)
        if drawn != self._drawn:
            self._drawn = drawn
            log_y = self._mode in _LOG_MODES
            if self.plot.getAxis("left").logMode != log_y:
                self.plot.setLogMode(x=False, y=log_y)
            y = self._y(data)
            keep = np.isfinite(y)
            self.curve.setData(data.clips[keep], y[keep])
            self.curve.setPen(pg.mkPen(_Y_COLORS[self._mode], width=2))
            self.plot.setLabel("left", _Y_LABELS[self._mode])
            self.plot.setLabel("bottom", data.x_label)
            st.set_view_range(self.plot.getViewBox(), x=(x0, x1 + pad))
        self._draw_markers(data)

    def _draw_markers(self, data: CurveData, only_current: bool = False) -> None:
        """Markers, their labels and the legend. ``only_current``: during a drag only the
        current marker moves, so the method markers' items are left as they are."""
        log_y = self._mode in _LOG_MODES
        entries: list[tuple[Method | str, Marker, str]] = [
            (m, mk, st.METHOD_NAMES[m]) for m, mk in data.markers.items()
            if m in self.marker_lines
        ]
        if data.current is not None:
            entries.append(("current", data.current, data.current_label))
        shown = {key for key, _, _ in entries}
        for key, line in self.marker_lines.items():
            line.setVisible(key in shown)
            self.marker_points[key].setVisible(key in shown)
        legend: list[tuple[Method | str, str]] = []
        for key, marker, name in entries:
            y = self._y_of(data, marker)
            if not only_current or key == "current":
                py = np.log10(y) if log_y and y > 0 else y
                if self._marker_xy.get(key) != (marker.x, py):
                    self._marker_xy[key] = (marker.x, py)
                    self.marker_lines[key].setValue(marker.x)
                    self.marker_points[key].setData([marker.x], [py])
            legend.append((key, f"{name}: {st.fmt_num(marker.x)} → {self._y_text(y)}"))
        level = data.current_level
        if level is not None and self._mode in (SQNR, MSE):
            y = self._y_of(data, level)
            self.current_level.setValue(np.log10(y) if log_y else y)
            self.current_level.setVisible(True)
            legend.append(("level", f"{data.current_label}: {self._y_text(y)}"))
            # InfLineLabel formats its text with str.format: keep braces literal.
            text = data.current_label.replace("{", "{{").replace("}", "}}")
            self.current_level_label.format = text
            self.current_level_label.valueChanged()
        else:
            self.current_level.setVisible(False)
        self._set_legend(legend)
        self._fit_y(data)
        self._place_labels([(key, marker.x) for key, marker, _ in entries])

    def _place_labels(self, xs: list[tuple[Method | str, float]]) -> None:
        """Put marker labels where the curve is not, in tiers so that close markers' labels
        do not overlap. SQNR rises to the right, so labels go low; MSE and KL fall to the
        right, so labels go high."""
        tiers = (0.14, 0.4, 0.66) if self._mode == SQNR else (0.86, 0.6, 0.34)
        (x0, x1), _ = self.plot.getViewBox().viewRange()
        px_per_x = max(self.plot.getViewBox().width(), 1.0) / max(x1 - x0, 1e-300)
        last_px: list[float] = [-1e9] * len(tiers)
        for key, x in sorted(xs, key=lambda kx: kx[1]):
            px = (x - x0) * px_per_x
            tier = next((t for t in range(len(tiers)) if px - last_px[t] >= 16), 0)
            last_px[tier] = px
            label = self.marker_labels[key]
            label.orthoPos = tiers[tier]
            label.updatePosition()

    def _set_legend(self, entries: list[tuple[Method | str, str]]) -> None:
        self._legend_entries = entries
        parts = []
        for key, text in entries:
            symbol = "┅" if key == "level" else "●"
            weight = "font-weight:600;" if key in ("current", "level") else ""
            parts.append(
                f"<span style='color:{self._colours[key]};{weight}'>{symbol}&nbsp;"
                f"{html.escape(text).replace(' ', '&nbsp;').replace('-', '&#8209;')}</span>"
            )
        self.legend.setText(" &nbsp; ".join(parts))
        self.legend.setVisible(bool(entries))

    @property
    def legend_texts(self) -> list[str]:
        """The legend's entries as plain text (tests, screenshots)."""
        return [text for _, text in self._legend_entries]

    def _fit_y(self, data: CurveData) -> None:
        """y range covering the curve and every marker / level, so none falls off the top."""
        log_y = self._mode in _LOG_MODES
        ys = list(self._y(data)[np.isfinite(self._y(data))])
        markers = list(data.markers.values())
        if data.current is not None:
            markers.append(data.current)
        if data.current_level is not None and self._mode in (SQNR, MSE):
            markers.append(data.current_level)
        ys += [self._y_of(data, m) for m in markers]
        arr = np.asarray([y for y in ys if np.isfinite(y) and (y > 0 or not log_y)], float)
        if arr.size == 0:
            return
        if log_y:
            arr = np.log10(arr)
        st.fit_view_range(self.plot.getViewBox(), float(arr.min()), float(arr.max()), 0.08)

    def _y_text(self, y: float) -> str:
        if self._mode == SQNR:
            return st.fmt_db(y)
        if self._mode == MSE:
            return f"MSE {st.fmt_num(y)}"
        return f"KL {st.fmt_num(y)}"
