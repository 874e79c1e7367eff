"""Per-output-channel view of a weight: each channel's value range against its clip range.

Top: a range plot, one column per output channel — min..max in a light bar, the clip range
lo..hi in a dark bar inside it — so a channel whose values dwarf the others (an outlier that a
per-tensor scale must cover) stands out in red. Bottom, on the same x axis: per-channel SQNR,
or for per-group granularity a heatmap of SQNR per (channel, group).

The numbers come from :func:`qviz.core.layerdata.channels.channel_data`; this view draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.core.layerdata.channels import OUTLIER_RATIO, SQNR_CEILING_DB, ChannelData


# ----------------------------------------------------------------------------- the view
class _Bars(pg.BarGraphItem):
    """Bars whose updates do not ask the view to re-measure its children.

    The channel view sets every range itself (no auto-range), and pyqtgraph's
    bounds-changed notice would otherwise cost a second full paint after each update.
    """

    def informViewBoundsChanged(self) -> None:  # pyqtgraph's name
        pass


@dataclass(frozen=True)
class ChannelPlots:
    """What both channel views are made of: a title, a caption, and a range plot over an
    SQNR plot sharing its x axis (one column per channel)."""

    title: QLabel
    caption: QLabel
    layout_widget: pg.GraphicsLayoutWidget
    range_plot: pg.PlotItem
    sqnr_plot: pg.PlotItem


def channel_plots(x_label: str) -> ChannelPlots:
    """The title, caption and the two linked plots, styled; `x_label` names the channels."""
    st.configure_pyqtgraph()
    title = QLabel()
    # Wrapped: a long tensor name must not set the window's minimum width.
    title.setWordWrap(True)
    title.setStyleSheet("font-weight: 600;")
    caption = QLabel()
    caption.setWordWrap(True)
    caption.setStyleSheet("color: #5f6368; font-size: 8.5pt;")
    layout_widget = pg.GraphicsLayoutWidget()
    range_plot = layout_widget.addPlot(row=0, col=0)
    sqnr_plot = layout_widget.addPlot(row=1, col=0)
    for plot in (range_plot, sqnr_plot):
        st.style_plot(plot)
        plot.getViewBox().setMouseEnabled(x=True, y=False)
    range_plot.setLabel("left", "value")
    sqnr_plot.setLabel("left", "SQNR (dB)")
    sqnr_plot.setLabel("bottom", x_label)
    sqnr_plot.setXLink(range_plot)
    range_plot.getAxis("bottom").setStyle(showValues=False)
    layout_widget.ci.layout.setRowStretchFactor(0, 3)
    layout_widget.ci.layout.setRowStretchFactor(1, 2)
    return ChannelPlots(title, caption, layout_widget, range_plot, sqnr_plot)


class ChannelView(QWidget):
    """Range plot per output channel over a per-channel SQNR plot (or per-group heatmap)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data: ChannelData | None = None
        self._shown_for: tuple[str, str] | None = None

        plots = channel_plots("output channel")
        self.title, self.caption = plots.title, plots.caption
        self.layout_widget = plots.layout_widget
        self.range_plot, self.sqnr_plot = plots.range_plot, plots.sqnr_plot

        # Items are created once and refreshed with setOpts / setData.
        self.range_bars = _Bars(x=[], y0=[], height=[], width=0.8)
        self.clip_bars = _Bars(x=[], y0=[], height=[], width=0.4)
        self.range_plot.addItem(self.range_bars)
        self.range_plot.addItem(self.clip_bars)
        self.zero_line = pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#9e9e9e", width=1))
        self.range_plot.addItem(self.zero_line, ignoreBounds=True)

        self.sqnr_curve = pg.PlotCurveItem(
            x=np.zeros(1), y=np.zeros(0), stepMode="center", fillLevel=0.0,
            pen=pg.mkPen(st.SQNR_COLOR, width=1),
            brush=st.color(st.SQNR_COLOR, 90),
        )
        self.worst_point = pg.ScatterPlotItem(
            size=9, brush=pg.mkBrush(st.CHANNEL_OUTLIER), pen=pg.mkPen("w")
        )
        self.worst_text = pg.TextItem(
            anchor=(0, 1), color=st.CHANNEL_OUTLIER, fill=pg.mkBrush(255, 255, 255, 200)
        )
        self.worst_text.setFont(st.label_font(8.0))
        self.sqnr_plot.addItem(self.sqnr_curve)
        self.sqnr_plot.addItem(self.worst_point)
        self.sqnr_plot.addItem(self.worst_text, ignoreBounds=True)

        # Per-group: heatmap of SQNR per (channel, group) with its colour bar.
        self.heatmap = pg.ImageItem(axisOrder="row-major")
        self.sqnr_plot.addItem(self.heatmap)
        self.colorbar = pg.ColorBarItem(
            values=(0, 60), colorMap=pg.colormap.get("viridis"), label="dB",
            interactive=False, width=12,
        )
        self.colorbar.setImageItem(self.heatmap)
        self.colorbar.getAxis("right").setTickFont(st.label_font(7.5))
        # In the layout only while a heatmap shows: a hidden item still takes its column,
        # and one hidden at layout time comes back squeezed over its own tick labels.
        self._colorbar_shown = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        # Empty state: a sentence in place of empty axes (same size, so nothing jumps).
        self.placeholder = QLabel()
        self.placeholder.setWordWrap(True)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #5f6368; background: white;")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.layout_widget)
        self.stack.addWidget(self.placeholder)
        layout.addWidget(self.title)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        self.clear()

    # ------------------------------------------------------------------ public API
    def show_channels(self, data: ChannelData, tensor: str, granularity_label: str) -> None:
        # The layer view memoises ChannelData: the same object means nothing changed, so
        # leave the items alone (and unpainted).
        if data is self.data and (tensor, granularity_label) == self._shown_for:
            return
        self._shown_for = (tensor, granularity_label)
        self.data = data
        self.stack.setCurrentWidget(self.layout_widget)
        n = data.mins.size
        x = np.arange(n, dtype=np.float64)
        light = pg.mkBrush(st.CHANNEL_RANGE)
        red = pg.mkBrush(st.color(st.CHANNEL_OUTLIER, 150))
        self.range_bars.setOpts(
            x=x, y0=data.mins, height=data.maxs - data.mins, width=0.8,
            brushes=[red if o else light for o in data.outliers], pen=pg.mkPen(None),
        )
        self.clip_bars.setOpts(
            x=x, y0=data.los, height=data.his - data.los, width=0.4,
            brush=pg.mkBrush(st.CHANNEL_CLIP), pen=pg.mkPen(None),
        )
        self.range_plot.setVisible(True)
        self.sqnr_plot.setVisible(True)
        self.title.setText(f"Per-channel ranges — {tensor} ({n} channels, {granularity_label})")

        finite = np.where(np.isfinite(data.sqnr_db), data.sqnr_db, SQNR_CEILING_DB)
        finite = np.clip(finite, -SQNR_CEILING_DB, SQNR_CEILING_DB)
        worst = int(np.argmin(finite))
        upper = False  # the worst point in the plot's upper half: its label goes below it
        if data.group_sqnr_db is not None:
            self._show_groups(data, n)
        else:
            self.heatmap.setVisible(False)
            self._show_colorbar(False)
            self.sqnr_curve.setData(np.arange(n + 1) - 0.5, finite)
            self.sqnr_curve.setVisible(True)
            self.sqnr_plot.setLabel("left", "SQNR (dB)")
            # Whole 10 dB steps: a method change rarely moves the axis, so only the bars
            # repaint (a range change costs pyqtgraph a second paint pass).
            top = 10.0 * np.ceil((float(finite.max()) * 1.15 + 1.0) / 10.0)
            bottom = min(0.0, 10.0 * np.floor(float(finite.min()) / 10.0))
            st.set_view_range(self.sqnr_plot.getViewBox(), y=(bottom, top))
            upper = float(finite[worst]) > (bottom + top) / 2
        self.worst_point.setData([worst], [finite[worst]])
        self.worst_point.setVisible(data.group_sqnr_db is None)
        self.worst_text.setText(f"worst #{worst}: {st.fmt_db(float(data.sqnr_db[worst]))}")
        # Beside the point, on the side and above or below it where there is room, so the
        # label stays inside the plot.
        right_half = worst > 0.6 * n
        self.worst_text.setPos(worst + (-0.6 if right_half else 0.6), float(finite[worst]))
        self.worst_text.setAnchor((1 if right_half else 0, 0 if upper else 1))
        self.worst_text.setVisible(data.group_sqnr_db is None)

        st.set_view_range(self.range_plot.getViewBox(), x=(-0.8, n - 0.2))
        lo = min(float(data.mins.min()), float(data.los.min()))
        hi = max(float(data.maxs.max()), float(data.his.max()))
        st.fit_view_range(self.range_plot.getViewBox(), lo, hi)

        n_out = int(data.outliers.sum())
        outliers = (
            f"<span style='color:{st.CHANNEL_OUTLIER}'>{n_out} outlier channel"
            f"{'s' if n_out != 1 else ''}</span> (|max| > {OUTLIER_RATIO:g}× median)"
            if n_out
            else "no outlier channels"
        )
        self.caption.setText(
            f"light: channel min..max · dark: {data.source} · {outliers}"
        )

    def set_placeholder(self, text: str) -> None:
        self.clear()
        self.placeholder.setText(text)

    def clear(self) -> None:
        self.data = None
        self._shown_for = None
        self.range_bars.setOpts(x=[], y0=[], height=[])
        self.clip_bars.setOpts(x=[], y0=[], height=[])
        self.sqnr_curve.setData(np.zeros(1), np.zeros(0))
        self.worst_point.setData([], [])
        self.worst_text.setText("")
        self.heatmap.clear()
        self.heatmap.setVisible(False)
        self._show_colorbar(False)
        self.title.setText("Per-channel ranges")
        self.caption.setText("")
        self.placeholder.setText("select a layer")
        self.stack.setCurrentWidget(self.placeholder)

    # ------------------------------------------------------------------ internals
    def _show_colorbar(self, on: bool) -> None:
        if on == self._colorbar_shown:
            return
        if on:
            self.layout_widget.addItem(self.colorbar, row=1, col=1)
        else:
            self.layout_widget.removeItem(self.colorbar)
        self._colorbar_shown = on

    def _show_groups(self, data: ChannelData, n: int) -> None:
        assert data.group_sqnr_db is not None
        img = np.where(np.isfinite(data.group_sqnr_db), data.group_sqnr_db, SQNR_CEILING_DB)
        img = np.clip(img, -SQNR_CEILING_DB, SQNR_CEILING_DB).T  # rows = groups, cols = ch.
        g = img.shape[0]
        self.sqnr_curve.setVisible(False)
        self.heatmap.setImage(img.astype(np.float32), autoLevels=False)
        self.heatmap.setRect(QRectF(-0.5, -0.5, n, g))
        lo, hi = float(np.percentile(img, 1)), float(img.max())
        self.colorbar.setLevels((lo, max(hi, lo + 1)))
        self.heatmap.setVisible(True)
        self._show_colorbar(True)
        self.sqnr_plot.setLabel("left", f"group ({data.group_size} values)")
        st.set_view_range(self.sqnr_plot.getViewBox(), y=(-0.5, g - 0.5))
