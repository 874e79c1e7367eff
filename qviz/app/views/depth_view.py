"""Error along depth: at each quantized activation, in graph order, how far the quantized model
has drifted from the float one (accumulated), beside that tensor quantized alone (local).

Where the accumulated curve falls faster than the local one, error from earlier layers is
being amplified. A click on a point selects that layer (`layerClicked(tensor)`); the
selected layer is ringed. x ticks are layer names, thinned so they never overlap; hovering a
point tells its full name and both numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.core.evaluation.evaluate import DepthPoint

ACCUMULATED_COLOR = "#d62728"
LOCAL_COLOR = "#7f7f7f"
SELECTED_COLOR = "#000000"
# Infinite SQNR (an exact tensor) is drawn this far above the highest finite point.
INF_HEADROOM_DB = 6.0
MIN_TICK_GAP_PX = 8


def plotted_values(values: Sequence[float | None]) -> tuple[np.ndarray, float]:
    """y values to draw (inf clamped just above the finite ones, None as NaN) and the clamp."""
    raw = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    top = (float(finite.max()) if finite.size else 0.0) + INF_HEADROOM_DB
    out = raw.copy()
    out[np.isposinf(raw)] = top
    out[np.isneginf(raw)] = np.nan
    return out, top


def thinned_ticks(
    labels: Sequence[str], width_px: float, text_px: Callable[[str], float]
) -> list[tuple[int, str]]:
    """Every k-th label, k the smallest step at which the labels fit side by side."""
    n = len(labels)
    if n == 0:
        return []
    longest = max(text_px(s) for s in labels) + MIN_TICK_GAP_PX
    per_label = width_px / n
    step = max(1, math.ceil(longest / per_label)) if per_label > 0 else n
    return [(i, labels[i]) for i in range(0, n, step)]


class DepthView(QWidget):
    """SQNR (dB) against depth; `show_depth` replaces the points, `set_selected` rings one."""

    layerClicked = Signal(str)  # the activation tensor's name

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumHeight(180)
        self.plot = self.plot_widget.getPlotItem()
        st.style_plot(self.plot, grid_y=True)
        self.plot.setLabel("left", "SQNR (dB)")
        self.plot.setLabel("bottom", "quantized layer input, in depth order")
        self.plot.setMouseEnabled(x=False, y=False)
        self.vb = self.plot.getViewBox()
        self.vb.sigResized.connect(lambda _vb: self._update_ticks())  # labels fit the width
        self.legend = self.plot.addLegend(offset=(-8, 8), labelTextSize="8pt")
        self.legend.setBrush(pg.mkBrush(255, 255, 255, 220))
        self.local_curve = pg.PlotDataItem(
            pen=pg.mkPen(LOCAL_COLOR, width=1.5, style=Qt.PenStyle.DashLine),
            symbol="s", symbolSize=6, symbolBrush=LOCAL_COLOR, symbolPen=None,
            name="local: this tensor quantized alone",
        )
        self.accumulated_curve = pg.PlotDataItem(
            pen=pg.mkPen(ACCUMULATED_COLOR, width=2),
            name="accumulated: quantized vs float model",
        )
        self.points = pg.ScatterPlotItem(
            size=10, brush=pg.mkBrush(ACCUMULATED_COLOR), pen=pg.mkPen("w", width=1),
            hoverable=True, hoverSize=13, tip=None,
        )
        self.points.sigClicked.connect(self._on_points_clicked)
        self.points.sigHovered.connect(self._on_points_hovered)
        self.selected_ring = pg.ScatterPlotItem(
            size=18, brush=None, pen=pg.mkPen(SELECTED_COLOR, width=2)
        )
        # The configuration pinned for comparison ("A"): its accumulated curve, dashed.
        self.pinned_curve = pg.PlotDataItem(
            pen=pg.mkPen(st.PINNED_COLOR, width=2, style=Qt.PenStyle.DashLine),
            name="A (pinned): accumulated",
        )
        self.plot.addItem(self.local_curve)
        self.plot.addItem(self.accumulated_curve)
        self.plot.addItem(self.points)
        self.plot.addItem(self.selected_ring)
        self.empty_text = pg.TextItem("", color=st.AXIS_PEN, anchor=(0.5, 0.5))
        self.plot.addItem(self.empty_text, ignoreBounds=True)
        self.inf_line = pg.InfiniteLine(
            angle=0, movable=False, pen=pg.mkPen(st.AXIS_PEN, width=1, style=Qt.PenStyle.DotLine),
            label="∞ (exact)", labelOpts={"position": 0.02, "color": st.AXIS_PEN,
                                          "anchors": [(0, 1), (0, 1)]},
        )
        self.inf_line.setVisible(False)
        self.plot.addItem(self.inf_line, ignoreBounds=True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

        self._tensors: list[str] = []
        self._layers: list[str] = []
        self._accumulated: list[float] = []
        self._local: list[float | None] = []
        self._y = np.zeros(0)
        self._selected: str | None = None
        self.show_depth((), {}, "No evaluation yet")

    # ----------------------------------------------------------------- public API
    @property
    def tensors(self) -> list[str]:
        return list(self._tensors)

    def show_depth(
        self,
        depth: Sequence[DepthPoint],
        local: Mapping[str, float],
        empty_message: str = "No quantized activation to show",
    ) -> None:
        """Draw the points (in depth order); `local` maps tensor -> its own SQNR (dB)."""
        points = sorted(depth, key=lambda p: p.depth)
        self._tensors = [p.tensor for p in points]
        self._layers = [p.layer for p in points]
        self._accumulated = [p.sqnr_db for p in points]
        self._local = [local.get(p.tensor) for p in points]
        x = np.arange(len(points), dtype=np.float64)
        y, top = plotted_values(self._accumulated)
        y_local, top_local = plotted_values(self._local)
        # One clamp for both curves so "exact" sits at the same height.
        top = max(top, top_local)
        y[np.isposinf(np.array(self._accumulated, dtype=np.float64))] = top
        local_raw = np.array([np.nan if v is None else v for v in self._local], dtype=np.float64)
        y_local[np.isposinf(local_raw)] = top
        self._y = y
        self.accumulated_curve.setData(x, y, connect="finite")
        if np.isfinite(y_local).any():
            self.local_curve.setData(x, y_local, connect="finite")
        else:  # nothing measured locally: draw nothing (all-NaN data upsets pyqtgraph)
            self.local_curve.setData([], [])
        self.points.setData(
            x=x, y=y, data=list(range(len(points))),
        )
        any_inf = bool(np.isposinf(np.array(self._accumulated + [
            v for v in self._local if v is not None], dtype=np.float64)).any())
        self.inf_line.setVisible(any_inf)
        self.inf_line.setValue(top)
        self.empty_text.setText("" if points else empty_message)
        if points:
            both = np.concatenate([y[np.isfinite(y)], y_local[np.isfinite(y_local)]])
            lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
            pad = max(2.0, 0.08 * (hi - lo))
            st.set_view_range(self.vb, x=(-0.5, len(points) - 0.5),
                              y=(min(0.0, lo - pad), hi + pad))
        else:
            st.set_view_range(self.vb, x=(0.0, 1.0), y=(0.0, 1.0))
            self.empty_text.setPos(0.5, 0.5)
        self._update_ticks()
        self._update_selected()

    def set_pinned(self, depth: Sequence[DepthPoint] | None) -> None:
        """Draw the pinned configuration's accumulated SQNR at the same layer inputs (None
        hides it; an input A did not quantize leaves a gap)."""
        if not depth or not self._tensors:
            if self.pinned_curve in self.plot.items:
                self.plot.removeItem(self.pinned_curve)
                self.legend.removeItem(self.pinned_curve)
                self.legend.setColumnCount(1)
            return
        by_tensor = {p.tensor: p.sqnr_db for p in depth}
        values = [by_tensor.get(t) for t in self._tensors]
        y, _ = plotted_values(values)
        if self.pinned_curve not in self.plot.items:
            self.plot.addItem(self.pinned_curve)
            self.legend.setColumnCount(2)  # three entries in two rows hide less of the plot
        self.pinned_curve.setData(np.arange(len(values), dtype=np.float64), y,
                                  connect="finite")

    @property
    def pinned_values(self) -> list[float]:
        """The pinned curve's y values as drawn (tests read them)."""
        if self.pinned_curve not in self.plot.items:
            return []
        return [float(v) for v in self.pinned_curve.getData()[1]]

    def set_selected(self, tensor: str | None) -> None:
        """Ring the point of this activation tensor (None, or a tensor not shown: no ring)."""
        self._selected = tensor
        self._update_selected()

    def point_position(self, tensor: str) -> QPointF | None:
        """The point's position in the plot widget's coordinates (tests click there)."""
        if tensor not in self._tensors:
            return None
        i = self._tensors.index(tensor)
        scene = self.vb.mapViewToScene(QPointF(float(i), float(self._y[i])))
        return self.plot_widget.mapFromScene(scene).toPointF()

    # ----------------------------------------------------------------- internals
    def _update_selected(self) -> None:
        if self._selected in self._tensors:
            i = self._tensors.index(self._selected)
            self.selected_ring.setData(x=[float(i)], y=[float(self._y[i])])
        else:
            self.selected_ring.setData(x=[], y=[])

    def _update_ticks(self) -> None:
        axis = self.plot.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.font())
        width = max(1.0, float(self.vb.width()) or float(self.width() - 70))
        ticks = thinned_ticks(self._layers, width, metrics.horizontalAdvance)
        axis.setTicks([ticks, []])

    def _on_points_clicked(self, _item: object, points: Sequence[pg.SpotItem], _ev: object) -> None:
        if len(points) == 0:
            return
        i = int(points[0].data())
        self.layerClicked.emit(self._tensors[i])

    def _on_points_hovered(self, _item: object, points: Sequence[pg.SpotItem], _ev: object) -> None:
        if len(points) == 0:
            self.plot_widget.setToolTip("Click a point to select its layer")
            return
        i = int(points[0].data())
        local = self._local[i]
        local_text = "—" if local is None else st.fmt_db(local)
        self.plot_widget.setToolTip(
            f"{self._layers[i]} (input {self._tensors[i]})\n"
            f"accumulated: {st.fmt_db(self._accumulated[i])}\nlocal: {local_text}\n"
            "Click to select this layer"
        )
