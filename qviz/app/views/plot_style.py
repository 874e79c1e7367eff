"""Shared look of qviz plots: colours, fonts and number formatting.

One place for these so the weight histogram, the channel view, the error curve and the
metrics panel agree: the same method always has the same colour, the same number is always
written the same way.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont

from qviz.core import text
from qviz.core.calibration.methods import Method

# Light theme: plots sit next to ordinary widgets (tables, forms), and a white background
# prints and screenshots well.
BACKGROUND = "#ffffff"
FOREGROUND = "#202124"
AXIS_PEN = "#5f6368"
GRID_ALPHA = 0.12

# Tensor kinds get their own hue everywhere (histogram fill, metrics column header).
WEIGHT_COLOR = "#1f77b4"      # blue
ACTIVATION_COLOR = "#2ca02c"  # green

# The clip range: a translucent amber band with solid amber bounds, readable over both hues.
REGION_BRUSH = (255, 179, 0, 45)
REGION_HOVER_BRUSH = (255, 179, 0, 80)
REGION_LINE = "#e08600"
# Quantization levels: faint, so the histogram stays readable underneath.
GRID_LINE = (90, 90, 90, 70)

# Channel view.
CHANNEL_RANGE = "#c6dbef"     # min..max of a channel (light)
CHANNEL_CLIP = "#2171b5"      # clip lo..hi of a channel (dark)
CHANNEL_OUTLIER = "#d62728"   # channels whose range dwarfs the others

# One colour per calibration method, chosen to stay distinct for common colour-vision
# deficiencies (Okabe-Ito palette). "current" is black so it reads as the reference.
METHOD_COLORS: dict[Method, str] = {
    Method.MINMAX: "#0072B2",
    Method.PERCENTILE: "#E69F00",
    Method.ENTROPY: "#009E73",
    Method.MSE: "#CC79A7",
    Method.MANUAL: "#56B4E9",
}
CURRENT_COLOR = "#000000"
# The configuration pinned for comparison ("A"): a colour no method or tensor kind uses.
PINNED_COLOR = "#7b1fa2"
# Another data set's histogram drawn over the calibration data's (the evaluation data).
REFERENCE_COLOR = "#37474f"
METHOD_NAMES: dict[Method, str] = {
    Method.MINMAX: "MinMax",
    Method.PERCENTILE: "Percentile",
    Method.ENTROPY: "Entropy",
    Method.MSE: "MSE",
    Method.MANUAL: "Manual",
}

# Error-curve traces.
SQNR_COLOR = "#1f77b4"
MSE_COLOR = "#d62728"
KL_COLOR = "#9467bd"


def configure_pyqtgraph() -> None:
    """Global pyqtgraph options; idempotent, called by every view's constructor."""
    pg.setConfigOptions(background=BACKGROUND, foreground=FOREGROUND, antialias=False)


def label_font(point_size: float = 9.0, bold: bool = False) -> QFont:
    font = QFont()
    font.setPointSizeF(point_size)
    font.setBold(bold)
    return font


def style_plot(plot: pg.PlotItem, grid_y: bool = False) -> None:
    """Axes and fonts shared by every qviz plot.

    No background grid by default: on histograms it would be mistaken for the quantization
    grid, and axis grids are the most expensive thing pyqtgraph paints (a few ms per axis).
    Plots where reading values off the y axis matters ask for horizontal lines only."""
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen(AXIS_PEN))
        axis.setTextPen(pg.mkPen(FOREGROUND))
        axis.setTickFont(label_font(8.0))
        axis.label.setFont(label_font(8.5))
        # "(x0.001)" appended to an axis label makes its numbers disagree with the same
        # values written in text items and the metrics panel: always show real values.
        axis.enableAutoSIPrefix(False)
    plot.showGrid(x=False, y=grid_y, alpha=GRID_ALPHA)
    # Left axis wide enough for "1.2M" or "-40" and its label, so nothing is cut off.
    plot.getAxis("left").setWidth(58)
    plot.setMenuEnabled(False)
    plot.hideButtons()


def set_view_range(
    vb: pg.ViewBox, x: tuple[float, float] | None = None, y: tuple[float, float] | None = None
) -> None:
    """Set a view's range only where it really changes.

    pyqtgraph treats every setRange as a change: the axes regenerate and the view paints a
    second time. Re-showing a layer with the same frame must cost nothing.
    """
    (cx0, cx1), (cy0, cy1) = vb.viewRange()

    def differs(new: tuple[float, float], c0: float, c1: float) -> bool:
        tol = 1e-9 * max(abs(c1 - c0), abs(new[1] - new[0]), 1e-300)
        return abs(new[0] - c0) > tol or abs(new[1] - c1) > tol

    if x is not None and differs(x, cx0, cx1):
        vb.setXRange(float(x[0]), float(x[1]), padding=0)
    if y is not None and differs(y, cy0, cy1):
        vb.setYRange(float(y[0]), float(y[1]), padding=0)


def fit_view_range(vb: pg.ViewBox, lo: float, hi: float, pad: float = 0.06) -> None:
    """Frame [lo, hi] on y, keeping the current range while it still frames it snugly
    (contains it, at most 25% larger): a method change that moves one bar or one marker
    then repaints that item only, not the axes."""
    margin = pad * (hi - lo) if hi > lo else 1.0
    want = (lo - margin, hi + margin)
    (y0, y1) = vb.viewRange()[1]
    if y0 <= lo and y1 >= hi and (y1 - y0) <= 1.25 * (want[1] - want[0]):
        return
    set_view_range(vb, y=want)


def color(hex_or_rgba: str | tuple[int, ...], alpha: int | None = None) -> QColor:
    c = pg.mkColor(hex_or_rgba)
    if alpha is not None:
        c.setAlpha(alpha)
    return c


# ----------------------------------------------------------------------------- numbers
# One set of number formatters for the app, the CLI and the reports (qviz.core.text); the
# views reach them through this module with the rest of the style.
fmt_num = text.fmt_num
fmt_db = text.fmt_db
fmt_pct = text.fmt_pct
fmt_range = text.fmt_range
fmt_zero_point = text.fmt_zero_point
summarize = text.summarize
