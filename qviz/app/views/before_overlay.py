"""The untransformed distribution under a histogram: a faint step curve and its clip band.

When a transform changed a tensor (SmoothQuant or equalization rescaled it), the histogram
view draws the tensor as measured and this overlay draws the same tensor before the
transform, faint and dotted, so the two read together. Counts are rescaled to the shown
histogram's bin width (counts per unit of x), so both curves are densities on one axis.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

from qviz.app.views import plot_style as st

BEFORE_COLOR = "#6d6d6d"


class BeforeOverlay:
    """Items added to a histogram plot; hidden until `show` is called with data."""

    def __init__(self, plot: pg.PlotItem) -> None:
        self.curve = pg.PlotCurveItem(
            x=np.zeros(1), y=np.zeros(0), stepMode="center",
            pen=pg.mkPen(st.color(BEFORE_COLOR, 170), width=1, style=Qt.PenStyle.DotLine),
        )
        self.curve.setZValue(5)
        plot.addItem(self.curve, ignoreBounds=True)
        self.lines = [
            pg.InfiniteLine(angle=90, movable=False,
                            pen=pg.mkPen(st.color(BEFORE_COLOR, 150), width=1,
                                         style=Qt.PenStyle.DashDotLine))
            for _ in range(2)
        ]
        for line in self.lines:
            line.setZValue(6)
            plot.addItem(line, ignoreBounds=True)
        # One label (on the high end): two would collide when the old band is narrow.
        label = pg.InfLineLabel(self.lines[1], text="before", position=0.97,
                                color=BEFORE_COLOR, anchors=[(0, 0), (0, 0)])
        label.setFont(st.label_font(7.5))
        self._edges: np.ndarray | None = None
        self._density: np.ndarray | None = None
        self.hide()

    @property
    def visible(self) -> bool:
        return self.curve.isVisible()

    def hide(self) -> None:
        self._edges = self._density = None
        self.curve.setData(np.zeros(1), np.zeros(0))
        self.curve.setVisible(False)
        for line in self.lines:
            line.setVisible(False)

    def show(self, edges: np.ndarray, counts: np.ndarray, band: tuple[float, float] | None,
             shown_width: float, log: bool) -> None:
        """Draw the untransformed histogram (`edges`, `counts`) scaled to `shown_width`,
        the main histogram's bin width, and its clip `band`."""
        e = np.asarray(edges, dtype=np.float64)
        c = np.asarray(counts, dtype=np.float64)
        width = (e[-1] - e[0]) / max(c.size, 1)
        self._edges = e
        self._density = c * (shown_width / width) if width > 0 else c
        self.redraw(log)
        for line, value in zip(self.lines, band or (0.0, 0.0), strict=True):
            line.setVisible(band is not None)
            if band is not None:
                line.setValue(value)

    def redraw(self, log: bool) -> None:
        """Follow the main histogram's count scale (linear or log)."""
        if self._edges is None or self._density is None:
            return
        y = np.log10(1.0 + self._density) if log else self._density
        self.curve.setData(self._edges, y)
        self.curve.setVisible(True)
