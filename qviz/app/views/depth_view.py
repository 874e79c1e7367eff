"""Error along depth: at each quantized activation, in graph order, how far the quantized model
has drifted from the float one (accumulated), beside that tensor quantized alone (local).

Where the accumulated curve falls faster than the local one, error from earlier layers is
being amplified. A click on a point selects that layer (`layerClicked(tensor)`); the
selected layer is ringed. x ticks are layer names, thinned so they never overlap; hovering a
point tells its full name and both numbers.

With hundreds of points (a decoder of many blocks) the plot stays readable: alternate blocks
(top-level module groups, `qviz.core.document.grouping.depth_groups`) are shaded, the x axis
names blocks while their points are too dense to name one by one, the mouse wheel zooms and
a drag pans along depth (the y range stays), and points shrink where they crowd. A new
evaluation of the same points keeps the zoom.
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
from qviz.core.document.grouping import Band, depth_groups
from qviz.core.evaluation.evaluate import DepthPoint

ACCUMULATED_COLOR = "#d62728"
LOCAL_COLOR = "#7f7f7f"
SELECTED_COLOR = "#000000"
# Infinite SQNR (an exact tensor) is drawn this far above the highest finite point.
INF_HEADROOM_DB = 6.0
MIN_TICK_GAP_PX = 8
BAND_BRUSH = (0, 0, 0, 14)   # alternate blocks, faint enough to leave the curves in front
# Point sizes (px) where points are far apart and where they crowd.
POINT_SIZE, MIN_POINT_SIZE = 10.0, 4.0
# Zoomed in as far as this many points across.
MIN_VISIBLE_POINTS = 4
# Point names on the axis down to every this-many-th point; denser, the axis names blocks.
POINT_TICK_STEP = 3
BAND_TITLE_COLOR = "#757575"


def plotted_values(values: Sequence[float | None]) -> tuple[np.ndarray, float]:
    """y values to draw (inf clamped just above the finite ones, None as NaN) and the clamp."""
    raw = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    top = (float(finite.max()) if finite.size else 0.0) + INF_HEADROOM_DB
    out = raw.copy()
    out[np.isposinf(raw)] = top
    out[np.isneginf(raw)] = np.nan
    return out, top


def visible_ticks(
    names: Sequence[str],
    bands: Sequence[Band],
    x_range: tuple[float, float],
    width_px: float,
    text_px: Callable[[str], float],
) -> list[tuple[float, str]]:
    """The x ticks for the points in view: each point's name where they fit (thinned to
    every k-th, k up to POINT_TICK_STEP), or, where there are blocks and their points are too
    dense to name, each block's name at its middle (thinned the same way)."""
    n = len(names)
    lo = max(0, math.ceil(x_range[0]))
    hi = min(n - 1, math.floor(x_range[1]))
    if n == 0 or hi < lo or width_px <= 0:
        return []
    per_point = width_px / max(x_range[1] - x_range[0], 1e-9)
    shown = range(lo, hi + 1)
    longest = max(text_px(names[i]) for i in shown) + MIN_TICK_GAP_PX
    step = max(1, math.ceil(longest / per_point))
    if step <= POINT_TICK_STEP or not bands:
        first = math.ceil(lo / step) * step  # steady ticks while panning
        return [(float(i), names[i]) for i in range(first, hi + 1, step)]
    in_view = [b for b in bands if b.stop - 1 >= lo and b.start <= hi]
    if not in_view:
        return []
    widest = max(text_px(b.label) for b in in_view) + MIN_TICK_GAP_PX
    mean_px = per_point * sum(b.stop - b.start for b in in_view) / len(in_view)
    band_step = max(1, math.ceil(widest / max(mean_px, 1e-9)))
    return [
        ((max(b.start, lo) + min(b.stop - 1, hi)) / 2.0, b.label)
        for b in in_view[::band_step]
    ]


def names_points(
    names: Sequence[str], x_range: tuple[float, float], width_px: float,
    text_px: Callable[[str], float],
) -> bool:
    """Do the ticks name points (rather than blocks) at this zoom?"""
    n = len(names)
    lo, hi = max(0, math.ceil(x_range[0])), min(n - 1, math.floor(x_range[1]))
    if hi < lo or width_px <= 0:
        return False
    per_point = width_px / max(x_range[1] - x_range[0], 1e-9)
    longest = max(text_px(names[i]) for i in range(lo, hi + 1)) + MIN_TICK_GAP_PX
    return math.ceil(longest / per_point) <= POINT_TICK_STEP


def band_titles(
    bands: Sequence[Band], x_range: tuple[float, float], width_px: float,
    text_px: Callable[[str], float],
) -> list[tuple[float, str]]:
    """Where to title each block in view inside the plot (x of its left edge in view), for
    the blocks wide enough on screen to hold their name."""
    per_point = width_px / max(x_range[1] - x_range[0], 1e-9)
    out = []
    for b in bands:
        left, right = max(b.start - 0.5, x_range[0]), min(b.stop - 0.5, x_range[1])
        if right > left and (right - left) * per_point >= text_px(b.label) + MIN_TICK_GAP_PX:
            out.append((left, b.label))
    return out


def point_size(per_point_px: float) -> float:
    """Symbol size where points are `per_point_px` apart: full size with room, smaller
    where they crowd, so a dense stretch reads as a curve rather than a smear."""
    return float(np.clip(0.8 * per_point_px, MIN_POINT_SIZE, POINT_SIZE))


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
        # Zoom (wheel) and pan (drag) along depth only: the dB scale stays comparable.
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.hideButtons()  # the auto-range "A" would also rescale y
        self.vb = self.plot.getViewBox()
        self.vb.sigResized.connect(lambda _vb: self._update_ticks())  # labels fit the width
        self.vb.sigXRangeChanged.connect(lambda *_: self._update_ticks())
        # Alternate blocks shaded behind everything (one item for all of them).
        self.bands = pg.BarGraphItem(x0=[], x1=[], y0=[], y1=[], brush=pg.mkBrush(*BAND_BRUSH),
                                     pen=pg.mkPen(None))
        self.bands.setZValue(-10)
        self._titles: list[pg.TextItem] = []  # block names inside the plot, when zoomed in
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
        self.plot.addItem(self.bands, ignoreBounds=True)
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
        self._short: list[str] = []
        self._bands: tuple[Band, ...] = ()
        self._accumulated: list[float] = []
        self._local: list[float | None] = []
        self._y = np.zeros(0)
        self._selected: str | None = None
        self.show_depth((), {}, "No evaluation yet")

    # ----------------------------------------------------------------- public API
    @property
    def tensors(self) -> list[str]:
        return list(self._tensors)

    @property
    def band_labels(self) -> list[str]:
        """The blocks shaded along depth (tests read them)."""
        return [b.label for b in self._bands]

    def tick_labels(self) -> list[str]:
        """The x axis's labels as drawn now."""
        ticks = self.plot.getAxis("bottom")._tickLevels
        return [] if not ticks else [label for _x, label in ticks[0]]

    def zoom_to(self, first: float, last: float) -> None:
        """Show points `first` to `last` (as the mouse wheel would)."""
        self.vb.setXRange(first - 0.5, last + 0.5, padding=0)

    def show_depth(
        self,
        depth: Sequence[DepthPoint],
        local: Mapping[str, float],
        empty_message: str = "No quantized activation to show",
    ) -> None:
        """Draw the points (in depth order); `local` maps tensor -> its own SQNR (dB)."""
        points = sorted(depth, key=lambda p: p.depth)
        same_points = [p.tensor for p in points] == self._tensors and bool(points)
        self._tensors = [p.tensor for p in points]
        self._layers = [p.layer for p in points]
        groups = depth_groups(self._layers)
        self._bands = groups.bands
        self._short = list(groups.short_names)
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
            y_range = (min(0.0, lo - pad), hi + pad)
            n = len(points)
            self.vb.setLimits(xMin=-0.5, xMax=n - 0.5,
                              minXRange=min(float(n), float(MIN_VISIBLE_POINTS)))
            # The same points again (a new live evaluation): keep where the user zoomed.
            x_range = tuple(self.vb.viewRange()[0]) if same_points else (-0.5, n - 0.5)
            st.set_view_range(self.vb, x=x_range, y=y_range)
            self._draw_bands(y_range)
        else:
            self.vb.setLimits(xMin=None, xMax=None, minXRange=None)
            st.set_view_range(self.vb, x=(0.0, 1.0), y=(0.0, 1.0))
            self.empty_text.setPos(0.5, 0.5)
            self._draw_bands((0.0, 1.0))
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

    def _draw_bands(self, y_range: tuple[float, float]) -> None:
        shaded = self._bands[1::2]  # every other block, so neighbours stay apart
        span = y_range[1] - y_range[0]
        self.bands.setOpts(
            x0=[b.start - 0.5 for b in shaded], x1=[b.stop - 0.5 for b in shaded],
            y0=[y_range[0] - 10 * span] * len(shaded), y1=[y_range[1] + 10 * span] * len(shaded),
        )

    def _update_ticks(self) -> None:
        axis = self.plot.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.font())
        width = max(1.0, float(self.vb.width()) or float(self.width() - 70))
        x0, x1 = self.vb.viewRange()[0]
        names = self._short if self._bands else self._layers
        text_px = metrics.horizontalAdvance
        ticks = visible_ticks(names, self._bands, (x0, x1), width, text_px)
        axis.setTicks([ticks, []])
        titles = []
        if self._bands and names_points(names, (x0, x1), width, text_px):
            titles = band_titles(self._bands, (x0, x1), width, text_px)
        self._show_titles(titles)
        size = point_size(width / max(x1 - x0, 1e-9))
        if self._tensors and size != self.points.opts["size"]:
            self.points.setSize(size)
            self.local_curve.setSymbolSize(max(MIN_POINT_SIZE - 1, 0.6 * size))

    def _show_titles(self, titles: list[tuple[float, str]]) -> None:
        while len(self._titles) < len(titles):
            item = pg.TextItem("", color=BAND_TITLE_COLOR, anchor=(0, 0))
            self.plot.addItem(item, ignoreBounds=True)
            self._titles.append(item)
        top = self.vb.viewRange()[1][1]
        for item, (x, label) in zip(self._titles, titles, strict=False):
            item.setText(label)
            item.setPos(x, top)
            item.setVisible(True)
        for item in self._titles[len(titles):]:
            item.setVisible(False)

    @property
    def band_titles(self) -> list[str]:
        """Block names shown inside the plot now (tests read them)."""
        return [t.toPlainText() for t in self._titles if t.isVisible()]

    def _on_points_clicked(self, _item: object, points: Sequence[pg.SpotItem], _ev: object) -> None:
        if len(points) == 0:
            return
        i = int(points[0].data())
        self.layerClicked.emit(self._tensors[i])

    def _on_points_hovered(self, _item: object, points: Sequence[pg.SpotItem], _ev: object) -> None:
        if len(points) == 0:
            self.plot_widget.setToolTip(
                "Click a point to select its layer; the wheel zooms along depth, a drag pans"
            )
            return
        i = int(points[0].data())
        local = self._local[i]
        local_text = "—" if local is None else st.fmt_db(local)
        self.plot_widget.setToolTip(
            f"{self._layers[i]} (input {self._tensors[i]})\n"
            f"accumulated: {st.fmt_db(self._accumulated[i])}\nlocal: {local_text}\n"
            "Click to select this layer"
        )
