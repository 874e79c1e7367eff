"""How an activation's chosen range moved as calibration data grew, beside what the
evaluation data alone would choose.

x: calibration samples (16, 32, 64 … on a log scale), y: the effective range's bounds under
the current method. A range still moving over the last doublings would move with more data;
one that settled did not need it. The evaluation data's own choice is a dashed line: far from
the settled range, the calibration data does not represent it.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st

HI_COLOR = st.ACTIVATION_COLOR
LO_COLOR = "#8c564b"


class ConvergenceView(QWidget):
    """The chosen range against the number of calibration samples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self.plot_widget = pg.PlotWidget()
        self.plot = self.plot_widget.getPlotItem()
        st.style_plot(self.plot, grid_y=True)
        self.plot.setLogMode(x=True, y=False)
        self.plot.setLabel("bottom", "calibration samples")
        self.plot.setLabel("left", "clip bound")
        self.plot.setMouseEnabled(x=False, y=False)
        self.legend = self.plot.addLegend(offset=(-8, 8), labelTextSize="8pt")
        self.legend.setBrush(pg.mkBrush(255, 255, 255, 220))
        self.hi_curve = pg.PlotDataItem(
            pen=pg.mkPen(HI_COLOR, width=2), symbol="o", symbolSize=6, symbolBrush=HI_COLOR,
            symbolPen=None, name="upper bound",
        )
        self.lo_curve = pg.PlotDataItem(
            pen=pg.mkPen(LO_COLOR, width=2), symbol="o", symbolSize=6, symbolBrush=LO_COLOR,
            symbolPen=None, name="lower bound",
        )
        self.eval_hi = pg.InfiniteLine(
            angle=0, movable=False,
            pen=pg.mkPen(st.REFERENCE_COLOR, width=1.5, style=Qt.PenStyle.DashLine),
            label="evaluation data alone", labelOpts={"position": 0.05, "color": st.REFERENCE_COLOR,
                                                      "anchors": [(0, 1), (0, 1)]},
        )
        self.eval_lo = pg.InfiniteLine(
            angle=0, movable=False,
            pen=pg.mkPen(st.REFERENCE_COLOR, width=1.5, style=Qt.PenStyle.DashLine),
        )
        for item in (self.hi_curve, self.lo_curve):
            self.plot.addItem(item)
        for line in (self.eval_hi, self.eval_lo):
            self.plot.addItem(line, ignoreBounds=True)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet("color: #5f6368; font-size: 8.5pt;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.caption)
        self.show_convergence((), None, "")

    def show_convergence(
        self,
        points: tuple[tuple[int, float, float], ...],
        eval_band: tuple[float, float] | None,
        tensor: str,
        waiting: str = "",
    ) -> None:
        """`points`: (samples, lo, hi); `eval_band`: the evaluation data's own range;
        `waiting`: what to say while the points are being computed."""
        self.points = points
        if len(points) < 2:
            for item in (self.hi_curve, self.lo_curve):
                item.setData([], [])
            for line in (self.eval_hi, self.eval_lo):
                line.setVisible(False)
            self.caption.setText(
                waiting or (
                    "Calibrate on more than 16 samples to see the range settle as data grows."
                    if tensor else "Select a layer with an activation."
                )
            )
            return
        n = np.array([p[0] for p in points], dtype=np.float64)
        lo = np.array([p[1] for p in points])
        hi = np.array([p[2] for p in points])
        self.hi_curve.setData(n, hi)
        has_lo = bool(np.any(lo < 0))
        if has_lo:
            self.lo_curve.setData(n, lo)
        else:  # a range from 0 (ReLU outputs): only the upper bound moves
            self.lo_curve.setData([], [])
        ys = [*hi, *(lo if has_lo else [])]
        for line, value, shown in (
            (self.eval_hi, None if eval_band is None else eval_band[1], True),
            (self.eval_lo, None if eval_band is None else eval_band[0], has_lo),
        ):
            visible = value is not None and shown and math.isfinite(value)
            line.setVisible(visible)
            if visible:
                assert value is not None
                line.setValue(value)
                ys.append(value)
        y0, y1 = float(min(ys)), float(max(ys))
        pad = 0.08 * (y1 - y0) if y1 > y0 else max(abs(y1), 1.0) * 0.1
        st.set_view_range(
            self.plot.getViewBox(), x=(math.log10(n[0]) - 0.1, math.log10(n[-1]) + 0.1),
            y=(y0 - pad, y1 + pad),
        )
        last = hi[-1]
        half = hi[-2]
        moved = abs(last - half) / max(abs(last), 1e-30)
        self.caption.setText(
            f"{tensor}: upper bound {st.fmt_num(half)} → {st.fmt_num(last)} over the last "
            f"doubling of the data ({100 * moved:.2g} %)"
            + ("; still moving: more calibration data would change it." if moved > 0.05 else
               "; settled.")
        )
