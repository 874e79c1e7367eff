"""One tensor's value histogram with its clip range as a draggable region.

Built once per layer, then updated in place (DESIGN.md, "update plot items in place"):
one ``PlotCurveItem(stepMode="center")`` for the histogram, one ``LinearRegionItem`` for the
clip range, one ``PlotCurveItem(connect="pairs")`` for the whole quantization grid and one
text item for scale / zero point / step. A drag only moves lines and rewrites text, so it
redraws in a few milliseconds; the owner recomputes metrics from ``regionChanging`` (live
preview) and stores the range on ``regionEdited`` (drag finished).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.app.views.before_overlay import BeforeOverlay
from qviz.app.views.count_axis import CountAxis, si_count
from qviz.core.layerdata.ranges import GridInfo, effective_range, grid_info, range_grid
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import QParams

# Draw the grid only when this few levels are visible: beyond that the lines merge into a
# grey wash that hides the histogram and tells the user nothing.
MAX_GRID_LINES = 200
MIN_GRID_SPACING_PX = 6.0
# A bin this many times taller than every other visible bin is drawn cut off and labelled.
SPIKE_RATIO = 8.0
_EMPTY_STEP_X = np.zeros(1)
_EMPTY_STEP_Y = np.zeros(0)


# ----------------------------------------------------------------------------- the view
class HistogramView(QWidget):
    """A histogram with a draggable clip range, bound labels, grid and quantizer text.

    Signals carry the *effective* range (see :func:`effective_range`) as floats:
    ``regionChanging`` on every move, ``regionEdited`` when a move finishes.
    """

    regionChanging = Signal(float, float)
    regionEdited = Signal(float, float)

    def __init__(self, title: str, color: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self._title = title
        self._color = color
        self._fmt: NumberFormat | None = None
        self._per_tensor = True          # False: per-channel/group weights, no single grid
        self._grid: GridInfo | None = None
        self._edges: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._log = False
        self._updating = False           # set while we move the region ourselves
        self._last_region: tuple[float, float] = (0.0, 0.0)
        self._scales_text = ""
        self._spike_note = ""
        self._spike_note_pending = ""
        self._info_state: tuple[float, float, bool] | None = None
        self._quantizer_state: tuple | None = None
        self._title_state: tuple[str, str] | None = None
        self._placeholder = False

        self.axis = CountAxis()
        self.plot_widget = pg.PlotWidget(axisItems={"left": self.axis})
        self.plot = self.plot_widget.getPlotItem()
        st.style_plot(self.plot)
        self.plot.setLabel("left", "count")
        self.plot.setLabel("bottom", "value")
        self.set_title(title, st.FOREGROUND)
        self.vb = self.plot.getViewBox()
        # Wheel / drag zooms along x only: the user zooms into a tail or onto the grid, and
        # y follows the visible bins (see _update_y) so the tail's counts fill the height.
        self.vb.setMouseEnabled(x=True, y=False)
        self.vb.disableAutoRange()

        fill = st.color(color, 110)
        self.curve = pg.PlotCurveItem(
            x=_EMPTY_STEP_X, y=_EMPTY_STEP_Y, stepMode="center", fillLevel=0.0, brush=fill,
            pen=pg.mkPen(color, width=1),
        )
        self.plot.addItem(self.curve)
        # Another data set's histogram on the same axis (the evaluation data): an outline.
        self.reference_curve = pg.PlotCurveItem(
            x=_EMPTY_STEP_X, y=_EMPTY_STEP_Y, stepMode="center",
            pen=pg.mkPen(st.REFERENCE_COLOR, width=1.5, style=Qt.PenStyle.DashLine),
        )
        self.reference_curve.setZValue(2)
        self.plot.addItem(self.reference_curve, ignoreBounds=True)
        self._reference: tuple[np.ndarray, np.ndarray] | None = None

        # Quantization grid: every visible level as one vertical segment, all in one item.
        self.grid_item = pg.PlotCurveItem(connect="pairs", pen=pg.mkPen(st.GRID_LINE, width=1))
        self.grid_item.setZValue(-5)
        self.plot.addItem(self.grid_item, ignoreBounds=True)

        self.region = pg.LinearRegionItem(
            values=(0.0, 1.0),
            brush=pg.mkBrush(st.REGION_BRUSH),
            hoverBrush=pg.mkBrush(st.REGION_HOVER_BRUSH),
            pen=pg.mkPen(st.REGION_LINE, width=2),
            hoverPen=pg.mkPen(st.REGION_LINE, width=3),
            swapMode="sort",
        )
        self.region.setZValue(10)
        self.plot.addItem(self.region, ignoreBounds=True)
        # Bound labels ride on the region's own lines and flip sides near the view edges,
        # so they are never cut off.
        self.lo_label = pg.InfLineLabel(
            self.region.lines[0], text="{value:.4g}", position=0.62, color=st.REGION_LINE,
            fill=pg.mkBrush(255, 255, 255, 200),
        )
        # The upper bound's label sits lower: the quantizer's box fills the top right corner.
        self.hi_label = pg.InfLineLabel(
            self.region.lines[1], text="{value:.4g}", position=0.4, color=st.REGION_LINE,
            fill=pg.mkBrush(255, 255, 255, 200),
        )
        for label in (self.lo_label, self.hi_label):
            label.setFont(st.label_font(8.0))
        # The pinned configuration's ("A") range, for comparison: two dashed lines, not
        # draggable, drawn under the current band.
        self.pinned_lines = [
            pg.InfiniteLine(angle=90, movable=False,
                            pen=pg.mkPen(st.PINNED_COLOR, width=2, style=Qt.PenStyle.DashLine))
            for _ in range(2)
        ]
        for line, pos in zip(self.pinned_lines, (0.9, 0.9), strict=True):
            line.setZValue(8)
            line.setVisible(False)
            self.plot.addItem(line, ignoreBounds=True)
            label = pg.InfLineLabel(line, text="A", position=pos, color=st.PINNED_COLOR,
                                    fill=pg.mkBrush(255, 255, 255, 200))
            label.setFont(st.label_font(8.0, bold=True))

        self.before = BeforeOverlay(self.plot)  # the untransformed tensor, when transformed

        # Quantizer text pinned to the top-right corner in *pixel* coordinates (parented to
        # the ViewBox, not its data group), so it neither pans away nor leaves the plot.
        self.info_text = pg.TextItem(
            anchor=(1, 0), color=st.FOREGROUND, fill=pg.mkBrush(255, 255, 255, 215),
            border=pg.mkPen("#c8c8c8"),
        )
        self.info_text.setFont(st.label_font(8.0))
        self.info_text.setParentItem(self.vb)
        self.info_text.setZValue(20)
        self.vb.sigResized.connect(self._place_info)
        # A bin far taller than the rest (ReLU zeros, padding) is cut at the top of the view
        # and labelled with its count, so the rest of the distribution stays readable.
        self.spike_text = pg.TextItem(anchor=(0, 0), color=self._color)
        self.spike_text.setFont(st.label_font(8.0))
        self.plot.addItem(self.spike_text, ignoreBounds=True)
        self.spike_text.setVisible(False)

        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #8a4b00; font-size: 8.5pt;")
        self.note.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.note)

        self.region.sigRegionChanged.connect(self._on_region_changed)
        self.region.sigRegionChangeFinished.connect(self._on_region_finished)
        self.vb.sigXRangeChanged.connect(self._on_x_range)
        self.vb.sigResized.connect(self._update_y)
        self.vb.sigResized.connect(self._update_grid)
        self.clear()

    # ------------------------------------------------------------------ public API
    def set_histogram(self, edges: np.ndarray, counts: np.ndarray, unit: str = "value") -> None:
        """New data (once per layer). ``edges`` has one more entry than ``counts``.

        The same data again (the layer re-shown after a settings change of the *other*
        tensor) leaves every item untouched, so nothing here is repainted."""
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        if (
            self._counts is counts
            and self._edges is not None
            and self._edges.shape == edges.shape
            and self._edges[0] == edges[0]
            and self._edges[-1] == edges[-1]
            and self.curve.isVisible()
        ):
            return
        self._edges, self._counts = edges, counts
        # New data: the previous tensor's band must not frame this one (set_quantizer shows
        # the new band and widens the frame if it reaches past the data).
        self.region.setVisible(False)
        for side in ("left", "bottom"):
            self.plot.getAxis(side).setStyle(showValues=True)
        if self.plot.getAxis("bottom").labelText != unit:
            self.plot.setLabel("bottom", unit)
        self._redraw_counts()
        self.curve.setVisible(True)
        self.plot_widget.setEnabled(True)

    def set_title(self, text: str, color: str) -> None:
        """Title above the plot; unchanged text is not re-laid out."""
        if (text, color) != self._title_state:
            self._title_state = (text, color)
            self.plot.setTitle(text, color=color, size="10pt")

    def set_quantizer(
        self,
        lo: float,
        hi: float,
        fmt: NumberFormat,
        qparams: QParams | None,
        note: str = "",
        scales_text: str = "",
    ) -> None:
        """Show a stored choice: region at [lo, hi] (already effective), grid and text from
        ``qparams`` when it is per-tensor. Per-channel / per-group weights pass None (they
        have no single grid) and ``scales_text`` summarising their scales instead.
        Does not emit the region signals."""
        state = (
            float(lo), float(hi), fmt, note, scales_text,
            None if qparams is None else (
                np.asarray(qparams.scale).tobytes(), np.asarray(qparams.zero_point).tobytes()
            ),
        )
        if state == self._quantizer_state and self.region.isVisible():
            return  # what is shown already (no drag preview since): nothing to redraw
        if self.dragging:
            # A redraw that lands mid-drag (a background result) must not yank the band
            # from under the mouse; the drag's own edit re-shows the layer when it ends.
            return
        self._quantizer_state = state
        self._fmt = fmt
        self._per_tensor = qparams is not None and np.asarray(qparams.scale).size == 1
        self._grid = grid_info(qparams, fmt) if self._per_tensor and qparams else None
        self._scales_text = scales_text
        self.region.setVisible(True)
        self._set_region_silently(lo, hi)
        # The bound labels skip updates while hidden: refresh them now that they show.
        self.lo_label.valueChanged()
        self.hi_label.valueChanged()
        self._write_info(lo, hi)
        self._update_y()  # the text box may have changed height: keep it clear of the bars
        self.set_note(note)
        self._update_grid()

    def set_region(self, lo: float, hi: float) -> None:
        """Move the clip range as a user drag would: ``regionChanging`` and ``regionEdited``
        are emitted, so the owner's handlers run exactly as for the mouse."""
        self.region.setRegion((float(lo), float(hi)))

    @property
    def dragging(self) -> bool:
        """True while the user holds the band or one of its bounds."""
        return bool(self.region.moving or any(line.moving for line in self.region.lines))

    def set_reference(self, hist: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Outline another histogram (edges, counts) over this one; None hides it."""
        if hist is None and self._reference is None:
            return
        self._reference = hist
        self._draw_reference()

    @property
    def reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._reference

    def _draw_reference(self) -> None:
        ref = self._reference
        if ref is None:
            self.reference_curve.setData(_EMPTY_STEP_X, _EMPTY_STEP_Y)
            self.reference_curve.setVisible(False)
            return
        edges, counts = ref
        shown = np.log10(1.0 + counts) if self._log else counts
        self.reference_curve.setData(edges, shown)
        self.reference_curve.setVisible(True)

    def set_pinned(self, band: tuple[float, float] | None) -> None:
        """Show the pinned configuration's range ("A") beside the current one (None: hide)."""
        for line, value in zip(self.pinned_lines, band or (0.0, 0.0), strict=True):
            line.setVisible(band is not None)
            if band is not None:
                line.setValue(value)

    @property
    def pinned_band(self) -> tuple[float, float] | None:
        if not self.pinned_lines[0].isVisible():
            return None
        return float(self.pinned_lines[0].value()), float(self.pinned_lines[1].value())

    def region_values(self) -> tuple[float, float]:
        lo, hi = self.region.getRegion()
        return float(lo), float(hi)

    def set_log_counts(self, on: bool) -> None:
        if on == self._log:
            return
        self._log = on
        self.axis.log = on
        self.plot.setLabel("left", "count (log scale)" if on else "count")
        self._redraw_counts()
        self.before.redraw(on)
        self.axis.picture = None  # tick positions depend on the mode: force a re-layout
        self.axis.update()

    @property
    def log_counts(self) -> bool:
        return self._log

    def set_note(self, text: str) -> None:
        self.note.setText(text)
        self.note.setVisible(bool(text))

    def set_placeholder(self, text: str) -> None:
        """Empty state: say why there is nothing to show instead of leaving a blank plot."""
        self.clear()
        self._placeholder = True
        # Empty axes with numbers on them would suggest data; show the sentence alone.
        self.set_title(self._title, st.FOREGROUND)
        for side in ("left", "bottom"):
            self.plot.getAxis(side).setStyle(showValues=False)
        self.info_text.setText(text)
        self._place_info()
        self.info_text.setVisible(True)

    def clear(self) -> None:
        self._edges = self._counts = None
        self._fmt = None
        self._grid = None
        self._scales_text = ""
        self._placeholder = False
        self._spike_note = self._spike_note_pending = ""
        self._info_state = None
        self._quantizer_state = None
        self.spike_text.setVisible(False)
        # A step curve needs one more x than y even when empty.
        self.curve.setData(_EMPTY_STEP_X, _EMPTY_STEP_Y)
        self.curve.setVisible(False)
        self.grid_item.setData([], [])
        self.region.setVisible(False)
        self.set_pinned(None)
        self.before.hide()
        self.set_reference(None)
        self.info_text.setText("")
        self.info_text.setVisible(False)
        self.set_note("")

    @property
    def grid_visible(self) -> bool:
        """True when the quantization grid is drawn (tests and screenshots)."""
        return self.grid_item.isVisible() and self.grid_item.xData is not None and len(
            self.grid_item.xData
        ) > 0

    @property
    def grid_line_count(self) -> int:
        return 0 if not self.grid_visible else len(self.grid_item.xData) // 2

    @property
    def info(self) -> str:
        return self.info_text.textItem.toPlainText()

    # ------------------------------------------------------------------ internals
    def _shown_counts(self) -> np.ndarray:
        assert self._counts is not None
        return np.log10(1.0 + self._counts) if self._log else self._counts

    def _redraw_counts(self) -> None:
        if self._edges is None or self._counts is None:
            return
        self.curve.setData(self._edges, self._shown_counts())
        self._draw_reference()
        self._reset_x_range()
        self._update_y()
        self._update_grid()

    def _reset_x_range(self) -> None:
        """Frame the occupied bins and the clip range: activation histograms keep empty bins
        from range doubling, which would squeeze the data into a sliver."""
        assert self._edges is not None and self._counts is not None
        nz = np.flatnonzero(self._counts > 0)
        if nz.size:
            x0, x1 = self._edges[nz[0]], self._edges[nz[-1] + 1]
        else:
            x0, x1 = self._edges[0], self._edges[-1]
        if self.region.isVisible():
            lo, hi = self.region_values()
            x0, x1 = min(x0, lo), max(x1, hi)
        pad = 0.04 * (x1 - x0) if x1 > x0 else 1.0
        st.set_view_range(self.vb, x=(x0 - pad, x1 + pad))

    def _on_x_range(self) -> None:
        self._update_y()
        self._update_grid()

    def _update_y(self) -> None:
        """Fit y to the bins in view. In linear mode a lone bin more than SPIKE_RATIO times
        taller than every other visible bin is cut at the top and labelled with its count."""
        self.spike_text.setVisible(False)
        self._fit_y()
        spike_note = self._spike_note_pending
        if spike_note != self._spike_note:
            self._spike_note = spike_note
            if self._info_state is not None:
                self._write_info(*self._info_state)
                self._fit_y()  # the text box changed height: redo the headroom

    def _fit_y(self) -> None:
        self._spike_note_pending = ""
        self._spike_x = 0.0
        if self._edges is None or self._counts is None or self._counts.size == 0:
            return
        (x0, x1), _ = self.vb.viewRange()
        i0 = max(int(np.searchsorted(self._edges, x0, side="right")) - 1, 0)
        i1 = min(int(np.searchsorted(self._edges, x1, side="left")), self._counts.size)
        y = self._shown_counts()[i0:i1]
        if y.size == 0:
            return
        top = float(y.max())
        if not self._log and y.size >= 3:
            k = int(np.argmax(y))
            second = float(np.partition(y, -2)[-2])
            if second > 0 and top > SPIKE_RATIO * second:
                top = second * 1.6
                centre = 0.5 * (self._edges[i0 + k] + self._edges[i0 + k + 1])
                # A small mark on the cut bar; the count goes in the info box, which is
                # never clipped and never overlaps it.
                self.spike_text.setText("▲")
                self._spike_x = centre
                self.spike_text.setVisible(True)
                self._spike_note_pending = (
                    f"▲ tallest bin cut off: {si_count(float(y[k]))} at {st.fmt_num(centre)}"
                )
        if top <= 0:
            top = 1.0
        # Headroom for the quantizer text in the top-right corner, so it never covers bars.
        frac = 0.06
        if self.info_text.isVisible() and not self._placeholder:
            box = self.info_text.boundingRect().height() + 10.0
            frac = min(max(box / max(self.vb.height(), 1.0), frac), 0.5)
        ymax = top / (1.0 - frac)
        st.set_view_range(self.vb, y=(0.0, ymax))
        if self.spike_text.isVisible():
            # The mark hangs from the top edge, where the cut bar leaves the view.
            self.spike_text.setPos(self._spike_x, ymax)
            self.spike_text.setAnchor((0.5, 0))

    def _set_region_silently(self, lo: float, hi: float) -> None:
        self._updating = True
        try:
            self.region.setRegion((float(lo), float(hi)))
        finally:
            self._updating = False
        self._last_region = (float(lo), float(hi))
        if self._edges is not None:
            # Re-frame only when the band leaves the view: a new method's band inside the
            # current frame keeps the axes (and the user's zoom) as they are.
            (x0, x1), _ = self.vb.viewRange()
            if lo < x0 or hi > x1:
                self._reset_x_range()

    def _snap(self, lo: float, hi: float) -> tuple[float, float]:
        """Snap a dragged range to what the quantizer covers (see :func:`effective_range`).

        For symmetric formats the bound the user did not touch follows the one they did, so
        the band always shows [-c, c]; when both moved (``set_region``, a drag of the whole
        band) c = max(|lo|, |hi|), as ``compute_qparams`` reads any range. Any range is
        widened to include 0.
        """
        if self._fmt is None:
            return lo, hi
        if self._fmt.symmetric:
            plo, phi = self._last_region
            tol = 1e-12 * max(abs(plo), abs(phi), 1e-30)
            if abs(lo - plo) <= tol:
                c = abs(hi)
            elif abs(hi - phi) <= tol:
                c = abs(lo)
            else:
                c = max(abs(lo), abs(hi))
            lo, hi = -c, c
        snapped = effective_range(lo, hi, self._fmt)
        if snapped != self.region_values():
            self._updating = True
            try:
                self.region.setRegion(snapped)
            finally:
                self._updating = False
        return snapped

    def _on_region_changed(self) -> None:
        if self._updating:
            return
        self._quantizer_state = None  # the stored choice is no longer what is shown
        lo, hi = self._snap(*self.region_values())
        self._last_region = (lo, hi)
        if self._fmt is not None:
            # A drag always means one per-tensor range (Manual): preview that quantizer.
            self._per_tensor = True
            self._scales_text = ""
            self._grid = range_grid(lo, hi, self._fmt)
        self._write_info(lo, hi, preview=True)
        self._update_grid()
        self.regionChanging.emit(lo, hi)

    def _on_region_finished(self) -> None:
        if self._updating:
            return
        lo, hi = self._last_region
        self.regionEdited.emit(lo, hi)

    def _write_info(self, lo: float, hi: float, preview: bool = False) -> None:
        self._info_state = (lo, hi, preview)
        if self._fmt is None:
            return
        lines = [f"<b>{self._fmt.label}</b>" + (" · <i>manual (dragging)</i>" if preview else "")]
        if self._grid is not None:
            g = self._grid
            lines.append(
                f"scale {st.fmt_num(g.scale)} · zp {st.fmt_zero_point(g.zero_point)}"
                f" · step {st.fmt_num(g.step)}"
            )
        elif self._scales_text:
            lines.append(self._scales_text)
        lines.append("clip " + st.fmt_range(lo, hi))
        if self._spike_note:
            lines.append(f"<span style='color:{self._color}'>{self._spike_note}</span>")
        self.info_text.setHtml("<div style='font-size:8pt'>" + "<br>".join(lines) + "</div>")
        self._placeholder = False
        self.info_text.setVisible(True)
        self._place_info()

    def _place_info(self) -> None:
        rect = self.vb.boundingRect()
        if self._placeholder:
            self.info_text.setAnchor((0.5, 0.5))
            self.info_text.setPos(rect.width() / 2, rect.height() / 2)
        else:
            self.info_text.setAnchor((1, 0))
            self.info_text.setPos(rect.width() - 4, 4)

    def _update_grid(self) -> None:
        """Draw every quantization level in view when they are few and far enough apart to
        tell apart (at most MAX_GRID_LINES, at least MIN_GRID_SPACING_PX between lines)."""
        if self._grid is None or not self._per_tensor or self._edges is None:
            self.grid_item.setData([], [])
            self.grid_item.setVisible(False)
            return
        (x0, x1), (y0, y1) = self.vb.viewRange()
        levels = self._grid.levels
        i0, i1 = np.searchsorted(levels, [x0, x1])
        n = int(i1 - i0)
        width_px = max(self.vb.width(), 1.0)
        spacing_px = width_px / max(n, 1)
        if n == 0 or n > MAX_GRID_LINES or spacing_px < MIN_GRID_SPACING_PX:
            self.grid_item.setData([], [])
            self.grid_item.setVisible(False)
            return
        xs = np.repeat(levels[i0:i1], 2)
        ys = np.tile([y0, y1], n)
        self.grid_item.setData(xs, ys)
        self.grid_item.setVisible(True)
