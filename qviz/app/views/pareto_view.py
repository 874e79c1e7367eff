"""Size (or latency) against the task metric for every configuration a search measured.

x is the model's size as stored (KiB of initializers: the weights at their chosen precision),
or — where the search measured per-layer times (the speed objective) — its predicted
milliseconds per run (`XAxis`; the speed objective shows latency first);
y the criterion's number (e.g. the accuracy drop in points) measured on the search subset.
Points that meet the criterion are filled green, the others hollow red; the Pareto front (no
other point is both smaller and better) is joined by a line; the criterion's threshold is a
dashed line with the passing side shaded. The answer is a star, with its confirmation on the
full data beside it, and the configuration applied to the document is ringed.

Clicking a point announces it (`pointClicked`); the controller applies its configuration to
the document. The view draws a `MixedResult` and nothing else.
"""

from __future__ import annotations

import html
import math
from enum import Enum

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.core.evaluation.criteria import Comparison
from qviz.core.runtime.speed_text import fmt_ms
from qviz.core.search.mixed import MixedResult, Objective, ParetoPoint, pareto_front
from qviz.core.text import KIB, fmt_bytes, fmt_decimals

PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
FRONT_COLOR = "#455a64"
CHOSEN_COLOR = "#000000"
APPLIED_COLOR = "#e08600"
PASS_REGION = (46, 125, 50, 22)


def short_data_name(description: str) -> str:
    """A data set's name without the shape details qviz's descriptions append."""
    return description.split(": ", 1)[0] if ": " in description else description


class XAxis(Enum):
    SIZE = "model size (KiB of weights as stored)"
    LATENCY = "predicted ms per run (measured per-layer times)"


def point_text(p: ParetoPoint, result: MixedResult) -> str:
    """One point, as its tooltip and the applied-point line say it."""
    c = result.criterion
    verdict = "meets" if p.passed else "fails"
    n = p.n_float_layers
    floats = f", {n} layer{'s' if n != 1 else ''} float" if n else ""
    latency = "" if p.latency_ms is None else f", predicted {fmt_ms(p.latency_ms)} ms"
    return (
        f"#{p.index} {p.label}: {fmt_bytes(p.size_bytes)}{latency}, {c.metric.label} "
        f"{fmt_decimals(p.value, c.metric.digits())}{c.metric.unit} on "
        f"{p.measurement.n_samples} samples ({verdict} {c.spec}){floats}"
    )


class ParetoView(QWidget):
    """The trade-off plot of a mixed-precision search."""

    pointClicked = Signal(object)  # ParetoPoint

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self._result: MixedResult | None = None
        self._applied: int | None = None
        self.axis = XAxis.SIZE
        self.axis_combo = QComboBox()
        for a in XAxis:
            self.axis_combo.addItem(a.value, a)
        self.axis_combo.setToolTip(
            "What x shows: each configuration's size, or its latency predicted from the "
            "per-layer times the speed objective measured"
        )
        self.axis_combo.currentIndexChanged.connect(self._on_axis)

        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumSize(360, 260)
        plot = self.plot_widget.getPlotItem()
        self.plot = plot
        st.style_plot(plot, grid_y=True)
        plot.showGrid(x=True, y=True, alpha=st.GRID_ALPHA)
        plot.setLabel("bottom", "model size (KiB of weights as stored)")

        self.pass_region = pg.LinearRegionItem(
            values=(0, 1), orientation="horizontal", movable=False,
            brush=pg.mkBrush(PASS_REGION), pen=pg.mkPen(None),
        )  # fmt: skip
        self.pass_region.setZValue(-30)
        plot.addItem(self.pass_region, ignoreBounds=True)
        self.threshold = pg.InfiniteLine(
            pos=0.0, angle=0, pen=pg.mkPen(PASS_COLOR, width=1.5, style=Qt.PenStyle.DashLine)
        )
        plot.addItem(self.threshold, ignoreBounds=True)
        self.threshold_label = pg.TextItem("", color=PASS_COLOR, anchor=(1.0, 1.0))
        plot.addItem(self.threshold_label, ignoreBounds=True)
        self.front = pg.PlotDataItem(
            [], [], pen=pg.mkPen(FRONT_COLOR, width=1.5), stepMode=None, name="Pareto front"
        )
        plot.addItem(self.front)
        self.points = pg.ScatterPlotItem(
            size=10, hoverable=True, hoverSize=13, tip=self._tip, name="configurations tried"
        )
        self.points.sigClicked.connect(self._on_points_clicked)
        plot.addItem(self.points)
        self.confirmed = pg.ScatterPlotItem(
            size=12, symbol="x", pen=pg.mkPen(CHOSEN_COLOR, width=2), brush=pg.mkBrush(None),
            name="answer, confirmed on all samples",
        )  # fmt: skip
        plot.addItem(self.confirmed)
        self.chosen = pg.ScatterPlotItem(
            size=18, symbol="star", pen=pg.mkPen(CHOSEN_COLOR, width=1),
            brush=pg.mkBrush(PASS_COLOR), name="answer (search subset)",
        )  # fmt: skip
        self.chosen.sigClicked.connect(self._on_points_clicked)
        plot.addItem(self.chosen)
        self.applied = pg.ScatterPlotItem(
            size=22, symbol="o", pen=pg.mkPen(APPLIED_COLOR, width=2.5), brush=pg.mkBrush(None),
            name="applied to the document",
        )  # fmt: skip
        plot.addItem(self.applied)
        self.baseline_label = pg.TextItem("", color=FAIL_COLOR, anchor=(0.0, 1.2))
        self.chosen_label = pg.TextItem("", color=CHOSEN_COLOR, anchor=(0.0, -0.3))
        self.confirmed_label = pg.TextItem("", color=CHOSEN_COLOR, anchor=(-0.15, 0.5))
        for item in (self.baseline_label, self.chosen_label, self.confirmed_label):
            plot.addItem(item, ignoreBounds=True)

        self.caption = QLabel("Run a search to see the trade-off.")
        self.caption.setWordWrap(True)
        self.caption.setTextFormat(Qt.TextFormat.RichText)
        self.caption.setStyleSheet(f"color: {st.AXIS_PEN};")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        axis_row = QHBoxLayout()
        axis_row.addWidget(QLabel("x:"))
        axis_row.addWidget(self.axis_combo)
        axis_row.addStretch(1)
        layout.addLayout(axis_row)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.caption)
        self.set_result(None)

    # ----------------------------------------------------------------- public API
    @property
    def result(self) -> MixedResult | None:
        return self._result

    def set_axis(self, axis: XAxis) -> None:
        """Show size or predicted latency on x (latency only where the search timed)."""
        self.axis_combo.setCurrentIndex(self.axis_combo.findData(axis))

    def _on_axis(self, _index: int) -> None:
        self.axis = self.axis_combo.currentData()
        applied = self._applied
        self.set_result(self._result, keep_axis=True)
        if applied is not None:
            self.set_applied(applied)

    def _x(self, p: ParetoPoint) -> float:
        if self.axis is XAxis.LATENCY:
            return math.nan if p.latency_ms is None else p.latency_ms
        return p.size_bytes / KIB

    def set_result(self, result: MixedResult | None, keep_axis: bool = False) -> None:
        timed = result is not None and any(p.latency_ms is not None for p in result.points)
        self.axis_combo.setEnabled(timed)
        if not keep_axis:
            fastest = result is not None and result.objective is Objective.FASTEST
            axis = XAxis.LATENCY if fastest and timed else XAxis.SIZE
            self.axis_combo.blockSignals(True)
            self.axis_combo.setCurrentIndex(self.axis_combo.findData(axis))
            self.axis_combo.blockSignals(False)
            self.axis = axis
        self.plot.setLabel("bottom", self.axis.value)
        self._result = result
        self._applied = None
        self.applied.setData([], [])
        if result is None or not result.points:
            for item in (self.points, self.chosen, self.confirmed):
                item.setData([], [])
            self.front.setData([], [])
            self.threshold.hide()
            self.threshold_label.setText("")
            self.pass_region.hide()
            self.baseline_label.setText("")
            self.chosen_label.setText("")
            self.confirmed_label.setText("")
            self.plot.setLabel("left", "")
            return
        c = result.criterion
        pts = result.points
        x = np.array([self._x(p) for p in pts], float)
        y = np.array([p.value for p in pts], float)
        finite = np.isfinite(y) & np.isfinite(x)
        spots = [
            {
                "pos": (x[i], y[i]),
                "data": p.index,
                "brush": pg.mkBrush(PASS_COLOR if p.passed else "#ffffff"),
                "pen": pg.mkPen(PASS_COLOR if p.passed else FAIL_COLOR, width=1.5),
                "symbol": "o",
            }
            for i, p in enumerate(pts)
            if finite[i]
        ]
        self.points.setData(spots)
        front = [p for p in pareto_front(pts, c, self._x) if math.isfinite(p.value)]
        self.front.setData([self._x(p) for p in front], [p.value for p in front])
        ch = result.chosen
        ch_x = self._x(ch)
        if math.isfinite(ch.value) and math.isfinite(ch_x):
            self.chosen.setData([{"pos": (ch_x, ch.value), "data": ch.index}])
        else:
            self.chosen.setData([], [])
        measured = result.measured_value
        # The confirmation is drawn at the answer's x: its size as measured, or its
        # predicted latency (the timing against float is in the dialog's summary).
        confirmed_x = result.size_bytes / KIB if self.axis is XAxis.SIZE else ch_x
        if (measured is not None and math.isfinite(measured) and result.evaluation is not None
                and math.isfinite(confirmed_x)):
            self.confirmed.setData([confirmed_x], [measured])
            self.confirmed_label.setText(
                f"confirmed on all {result.evaluation.n_samples}: "
                f"{fmt_decimals(measured, c.metric.digits())}"
            )
            self.confirmed_label.setPos(confirmed_x, measured)
        else:
            self.confirmed.setData([], [])
            self.confirmed_label.setText("")
        assert c.comparison is not None
        self.threshold.setValue(c.threshold)
        self.threshold.show()
        self.threshold_label.setText(
            f"criterion: {c.metric.label} {c.comparison.symbol} {c.threshold:g}{c.metric.unit}"
        )
        ys = np.concatenate([y[finite], [c.threshold]])
        if measured is not None and math.isfinite(measured):
            ys = np.append(ys, measured)
        y_lo, y_hi = float(ys.min()), float(ys.max())
        span = max(y_hi - y_lo, 1e-9)
        far = 1e3 * span + abs(c.threshold) + 1.0
        if c.comparison is Comparison.AT_MOST:
            self.pass_region.setRegion((c.threshold - far, c.threshold))
        else:
            self.pass_region.setRegion((c.threshold, c.threshold + far))
        self.pass_region.show()
        base = result.baseline
        self.baseline_label.setText(f"{base.label}")
        base_x = self._x(base)
        self.baseline_label.setPos(
            base_x if math.isfinite(base_x) else 0.0,
            base.value if math.isfinite(base.value) else 0.0,
        )
        verdict = "PASS" if result.passed else "FAIL"
        self.chosen_label.setText(f"answer ({verdict})")
        self.chosen_label.setPos(ch_x if math.isfinite(ch_x) else 0.0,
                                 ch.value if math.isfinite(ch.value) else 0)
        self.plot.setLabel(
            "left", f"{c.metric.label}{c.metric.unit} on {result.search_samples} samples"
        )
        xs = x[np.isfinite(x)]
        x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
        x_pad = max(0.06 * (x_hi - x_lo), 1.0 if self.axis is XAxis.SIZE else 1e-3)
        self.plot.setXRange(x_lo - x_pad, x_hi + 2 * x_pad, padding=0)
        self.plot.setYRange(y_lo - 0.08 * span, y_hi + 0.12 * span, padding=0)
        # Labels of points in the right half end at their point: started there, they ran
        # off the plot's right edge.
        right = math.isfinite(ch_x) and ch_x > (x_lo + x_hi) / 2
        self.chosen_label.setAnchor((1.0, -0.3) if right else (0.0, -0.3))
        self.confirmed_label.setAnchor((1.15, 0.5) if right else (-0.15, 0.5))
        left_base = math.isfinite(base_x) and base_x > (x_lo + x_hi) / 2
        self.baseline_label.setAnchor((1.0, 1.2) if left_base else (0.0, 1.2))
        # Above the line on the right edge: where the passing side is not.
        below = c.comparison is Comparison.AT_MOST
        self.threshold_label.setAnchor((1.0, 1.0) if below else (1.0, 0.0))
        self.threshold_label.setPos(x_hi + 2 * x_pad, c.threshold)
        confirmed = (
            "" if result.evaluation is None
            else f"; <b>×</b> the answer confirmed on all {result.evaluation.n_samples} samples"
        )  # fmt: skip
        self.caption.setText(
            f"{len(pts)} configurations measured on {result.search_samples} samples (float "
            f"model {fmt_bytes(result.float_size_bytes)}). "
            f"<span style='color:{PASS_COLOR}'>●</span> meets {html.escape(c.spec)}; "
            f"<span style='color:{FAIL_COLOR}'>○</span> fails; "
            f"<span style='color:{FRONT_COLOR}'>—</span> Pareto front; "
            f"<b>★</b> the answer{confirmed}; "
            f"<span style='color:{APPLIED_COLOR}'>◯</span> applied to the document. "
            "Click a point to apply its configuration; hover for details."
        )

    def point(self, index: int) -> ParetoPoint:
        """A point by its `ParetoPoint.index` (IndexError if there is none)."""
        if self._result is None:
            raise IndexError(index)
        for p in self._result.points:
            if p.index == index:
                return p
        raise IndexError(index)

    def click_point(self, index: int) -> None:
        """What a click on point `index` does: mark it and announce it."""
        p = self.point(index)
        self.set_applied(p.index)
        self.pointClicked.emit(p)

    def set_applied(self, index: int | None) -> None:
        """Ring the point whose configuration the document has now (None: none of them)."""
        self._applied = index
        if index is None or self._result is None:
            self.applied.setData([], [])
            return
        p = self.point(index)
        if math.isfinite(p.value) and math.isfinite(self._x(p)):
            self.applied.setData([self._x(p)], [p.value])

    @property
    def applied_index(self) -> int | None:
        return self._applied

    # ----------------------------------------------------------------- internals
    def _tip(self, x: float, y: float, data: object) -> str:
        if self._result is None or not isinstance(data, int | np.integer):
            return ""
        return point_text(self.point(int(data)), self._result) + "\nClick to apply it."

    def _on_points_clicked(self, _item: object, points: object, _event: object = None) -> None:
        spots = list(points) if points is not None else []  # type: ignore[call-overload]
        if spots:
            data = spots[0].data()
            if isinstance(data, int | np.integer):
                self.click_point(int(data))
