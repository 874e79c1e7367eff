"""Per-input-channel view of an activation: each channel's range against the one clip range.

Top: one column per channel along the activation's channel axis (the contraction axis of the
layer reading it) — min..max as a bar, loud channels (|max| over k x the median channel's)
in red, the per-tensor clip range every channel shares as two dashed lines. When a transform
rescaled the activation, the untransformed channels are drawn behind as faint outlines.
Bottom, on the same x axis: each channel's SQNR under the shared scale (from the per-channel
histograms of the statistics).

The numbers come from :func:`qviz.core.layerdata.activation_channels.activation_channels`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.app.views.before_overlay import BEFORE_COLOR
from qviz.app.views.channel_view import _Bars, channel_plots
from qviz.core.layerdata.activation_channels import ActivationChannels
from qviz.core.layerdata.channels import SQNR_CEILING_DB
from qviz.core.transforms.advice import ADVICE_RATIO

MAX_LISTED = 8  # loud channels named in the caption


class ActivationChannelView(QWidget):
    """Range plot per input channel over a per-channel SQNR plot."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data: ActivationChannels | None = None
        self.before: ActivationChannels | None = None
        plots = channel_plots("input channel")
        self.title, self.caption = plots.title, plots.caption
        self.layout_widget = plots.layout_widget
        self.range_plot, self.sqnr_plot = plots.range_plot, plots.sqnr_plot

        self.before_bars = _Bars(x=[], y0=[], height=[], width=0.9)
        self.range_bars = _Bars(x=[], y0=[], height=[], width=0.7)
        self.range_plot.addItem(self.before_bars)
        self.range_plot.addItem(self.range_bars)
        self.clip_lines = [
            pg.InfiniteLine(angle=0, movable=False,
                            pen=pg.mkPen(st.REGION_LINE, width=1.5, style=Qt.PenStyle.DashLine))
            for _ in range(2)
        ]
        for line in self.clip_lines:
            self.range_plot.addItem(line, ignoreBounds=True)
        self.sqnr_curve = pg.PlotCurveItem(
            x=np.zeros(1), y=np.zeros(0), stepMode="center", fillLevel=0.0,
            pen=pg.mkPen(st.SQNR_COLOR, width=1), brush=st.color(st.SQNR_COLOR, 90),
        )
        self.sqnr_plot.addItem(self.sqnr_curve)

        self.placeholder = QLabel()
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #5f6368; background: white;")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.layout_widget)
        self.stack.addWidget(self.placeholder)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        self.set_placeholder("select a layer")

    def show_channels(self, data: ActivationChannels, tensor: str,
                      before: ActivationChannels | None = None) -> None:
        if data is self.data and before is self.before:
            return
        self.data, self.before = data, before
        self.stack.setCurrentWidget(self.layout_widget)
        n = data.channels
        x = np.arange(n, dtype=np.float64)
        mins = np.nan_to_num(data.mins, nan=0.0)
        maxs = np.nan_to_num(data.maxs, nan=0.0)
        loud = np.zeros(n, dtype=bool)
        loud[data.loud] = True
        light, red = pg.mkBrush(st.ACTIVATION_COLOR), pg.mkBrush(st.CHANNEL_OUTLIER)
        self.range_bars.setOpts(x=x, y0=mins, height=maxs - mins, width=0.7,
                                brushes=[red if o else light for o in loud], pen=pg.mkPen(None))
        lo, hi = float(mins.min()), float(maxs.max())
        if before is not None and before.channels == n:
            bmin = np.nan_to_num(before.mins, nan=0.0)
            bmax = np.nan_to_num(before.maxs, nan=0.0)
            self.before_bars.setOpts(x=x, y0=bmin, height=bmax - bmin, width=0.9,
                                     brush=pg.mkBrush(st.color(BEFORE_COLOR, 35)),
                                     pen=pg.mkPen(st.color(BEFORE_COLOR, 120), width=1))
            self.before_bars.setVisible(True)
        else:
            self.before_bars.setVisible(False)
        for line, value in zip(self.clip_lines, data.clip or (0.0, 0.0), strict=True):
            line.setVisible(data.clip is not None)
            line.setValue(value)
        if data.clip is not None:
            lo, hi = min(lo, data.clip[0]), max(hi, data.clip[1])
        st.set_view_range(self.range_plot.getViewBox(), x=(-0.8, n - 0.2))
        st.fit_view_range(self.range_plot.getViewBox(), lo, hi)
        if data.sqnr_db is not None:
            sq = np.clip(np.where(np.isfinite(data.sqnr_db), data.sqnr_db, SQNR_CEILING_DB),
                         -SQNR_CEILING_DB, SQNR_CEILING_DB)
            self.sqnr_curve.setData(np.arange(n + 1) - 0.5, sq)
            top = 10.0 * np.ceil((float(sq.max()) * 1.15 + 1.0) / 10.0)
            bottom = min(0.0, 10.0 * np.floor(float(sq.min()) / 10.0))
            st.set_view_range(self.sqnr_plot.getViewBox(), y=(bottom, top))
            self.sqnr_plot.setVisible(True)
        else:
            self.sqnr_curve.setData(np.zeros(1), np.zeros(0))
            self.sqnr_plot.setVisible(False)
        self.title.setText(f"Input channels — {tensor} ({n} channels, axis {data.axis})")
        self.caption.setText(self._caption(data, before))

    def _caption(self, data: ActivationChannels, before: ActivationChannels | None) -> str:
        def loud_text(ch: ActivationChannels) -> str:
            k = ch.loud.size
            rule = f"|max| > {ch.factor:g}× median {st.fmt_num(ch.median_absmax)}"
            if not k:
                return f"no loud channel ({rule})"
            shown = ", ".join(f"#{int(i)}" for i in ch.loud[:MAX_LISTED])
            more = " …" if k > MAX_LISTED else ""
            return (f"<span style='color:{st.CHANNEL_OUTLIER}'>{k} loud channel"
                    f"{'s' if k != 1 else ''}</span> {shown}{more} ({rule})")

        text = f"bars: channel min..max · dashed: the per-tensor clip range · {loud_text(data)}"
        ratio = float(data.absmax.max()) / data.median_absmax if data.median_absmax > 0 else 0.0
        if before is None and data.clip is not None and ratio >= ADVICE_RATIO:
            text += (f" · the loudest is {ratio:.0f}× the median and sets the scale: "
                     "SmoothQuant (settings) moves loud channels into the weights")
        if before is not None:
            text += f" · faint: before the transform, {loud_text(before)}"
        if data.sqnr_db is None:
            text += " · no per-channel SQNR: these statistics predate per-channel histograms"
        return text

    def set_placeholder(self, text: str) -> None:
        self.data = self.before = None
        self.range_bars.setOpts(x=[], y0=[], height=[])
        self.before_bars.setOpts(x=[], y0=[], height=[])
        self.sqnr_curve.setData(np.zeros(1), np.zeros(0))
        for line in self.clip_lines:
            line.setVisible(False)
        self.title.setText("Input channels")
        self.caption.setText("")
        self.placeholder.setText(text)
        self.stack.setCurrentWidget(self.placeholder)
