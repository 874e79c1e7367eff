"""Speed along depth: each layer's time per run in the float and the quantized model.

Two bars per layer, in graph order: float (grey) and quantized, the quantized one stacked from
its kernel, the Q/DQ nodes ONNX Runtime runs for it and the layout changes it adds, so a
layer that got slower shows *why* at a glance. Above each pair, its speed-up. Read from the
document's last full evaluation (greyed once the settings change); hovering a pair tells the
numbers and, for a slower layer, the cause and its fix; a click selects the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.app.views.depth_view import MIN_TICK_GAP_PX
from qviz.core.document.document import Document
from qviz.core.runtime.slowdown import NOISE
from qviz.core.runtime.speed import LayerSpeed
from qviz.core.runtime.speed_text import fmt_ms, fmt_speedup, threads_text

FLOAT_COLOR = "#9e9e9e"
KERNEL_COLOR = "#1f77b4"
QDQ_COLOR = "#ff7f0e"
LAYOUT_COLOR = "#9467bd"
SLOW_COLOR = "#c62828"
FAST_COLOR = "#2e7d32"
STALE_ALPHA = 90
WIDTH = 0.38



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

class SpeedView(QWidget):
    """Per-layer bars of the document's last per-layer speed profile."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        st.configure_pyqtgraph()
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumHeight(180)
        self.plot = self.plot_widget.getPlotItem()
        st.style_plot(self.plot, grid_y=True)
        self.plot.setLabel("left", "ms per run")
        self.plot.setLabel("bottom", "layer, in depth order")
        self.plot.setMouseEnabled(x=False, y=False)
        self.vb = self.plot.getViewBox()
        self.vb.sigResized.connect(lambda _vb: self._update_ticks())
        self.legend = self.plot.addLegend(offset=(-8, 8), labelTextSize="8pt")
        self.legend.setBrush(pg.mkBrush(255, 255, 255, 220))
        self.bars: dict[str, pg.BarGraphItem] = {}
        for key, colour, name in (
            ("float", FLOAT_COLOR, "float"),
            ("kernel", KERNEL_COLOR, "quantized: kernel"),
            ("qdq", QDQ_COLOR, "quantized: Q/DQ at run time"),
            ("layout", LAYOUT_COLOR, "quantized: layout changes"),
        ):
            item = pg.BarGraphItem(x=[], height=[], width=WIDTH, brush=colour, pen=None,
                                   name=name)
            self.plot.addItem(item)
            self.legend.addItem(item, name)
            self.bars[key] = item
        self.labels: list[pg.TextItem] = []
        self.empty_text = pg.TextItem("", color=st.AXIS_PEN, anchor=(0.5, 0.5))
        self.plot.addItem(self.empty_text, ignoreBounds=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.plot_widget, 1)

        self._layers: list[LayerSpeed] = []
        self._why: dict[str, tuple[str, str]] = {}
        self.plot_widget.scene().sigMouseMoved.connect(self._on_hover)
        self.plot_widget.scene().sigMouseClicked.connect(self._on_click)
        doc.events.evaluation.connect(self.refresh)
        doc.events.model.connect(self.refresh)
        self.refresh()

    # ----------------------------------------------------------------- public API
    @property
    def layer_names(self) -> list[str]:
        return [x.name for x in self._layers]

    def heights(self, key: str) -> list[float]:
        """The drawn heights of one bar set ("float", "kernel", "qdq", "layout"; tests)."""
        opts = self.bars[key].opts
        return [float(h) for h in opts.get("height", [])]

    def refresh(self) -> None:
        """Draw the document's last per-layer speed profile (or say there is none)."""
        speed = self._doc.measures.speed
        for label in self.labels:
            self.plot.removeItem(label)
        self.labels = []
        if speed is None:
            self._layers, self._why = [], {}
            for item in self.bars.values():
                item.setOpts(x=[], height=[], y0=[])
            self.title.setText("<b>Speed per layer</b>")
            self.empty_text.setText("Evaluate (Ctrl+R) to time every layer")
            st.set_view_range(self.vb, x=(0.0, 1.0), y=(0.0, 1.0))
            self.empty_text.setPos(0.5, 0.5)
            self._update_ticks()
            return
        current = self._doc.measures.fusion_current
        outcome = self._doc.measures.last_full
        slow = () if outcome is None else outcome.evaluation.slow_layers
        self._why = {s.layer: (s.reason, s.fix) for s in slow}
        self._layers = sorted(speed.layers, key=lambda x: x.depth)
        n = len(self._layers)
        x = np.arange(n, dtype=np.float64)
        f = np.array([v.float_ms for v in self._layers])
        k = np.array([v.kernel_ms for v in self._layers])
        q = np.array([v.qdq_ms for v in self._layers])
        lay = np.array([v.layout_ms for v in self._layers])
        alpha = 255 if current else STALE_ALPHA
        colours = {"float": FLOAT_COLOR, "kernel": KERNEL_COLOR, "qdq": QDQ_COLOR,
                   "layout": LAYOUT_COLOR}
        for key, xs, height, y0 in (
            ("float", x - WIDTH / 2, f, np.zeros(n)),
            ("kernel", x + WIDTH / 2, k, np.zeros(n)),
            ("qdq", x + WIDTH / 2, q, k),
            ("layout", x + WIDTH / 2, lay, k + q),
        ):
            self.bars[key].setOpts(x=xs, height=height, y0=y0, width=WIDTH,
                                   brush=st.color(colours[key], alpha))
        top = float(max(f.max(initial=0.0), (k + q + lay).max(initial=0.0))) or 1.0
        for i, v in enumerate(self._layers):
            if not v.quantized:
                continue
            slower = v.speedup < 1 / (1 + NOISE)
            colour = SLOW_COLOR if slower else (FAST_COLOR if v.speedup > 1 + NOISE else
                                                st.AXIS_PEN)
            label = pg.TextItem(f"{v.speedup:.2f}×", color=colour, anchor=(0.5, 1.0))
            label.setPos(float(i), max(v.float_ms, v.quantized_ms) + 0.02 * top)
            self.plot.addItem(label, ignoreBounds=True)
            self.labels.append(label)
        timing = speed.timing
        whole = "" if timing is None else (
            f" — whole model {fmt_ms(timing.a_ms)} → {fmt_ms(timing.b_ms)} ms, "
            f"{fmt_speedup(timing.speedup)}"
        )
        stale = "" if current else " (measured for earlier settings: Evaluate again)"
        self.title.setText(
            f"<b>Speed per layer</b>, batch {speed.batch_size}, {threads_text(speed.threads)}"
            f"{whole}; {len(slow)} layer{'s' * (len(slow) != 1)} slower quantized{stale}"
        )
        self.empty_text.setText("")
        st.set_view_range(self.vb, x=(-0.6, n - 0.4), y=(0.0, top * 1.15))
        self._update_ticks()

    def tooltip_at(self, index: int) -> str:
        """What hovering layer `index` (depth order) tells."""
        v = self._layers[index]
        lines = [
            v.name,
            f"float: {fmt_ms(v.float_ms)} ms ({v.float_kernel or 'no kernel seen'})",
            f"quantized: {fmt_ms(v.quantized_ms)} ms — {v.kernel or '?'} {fmt_ms(v.kernel_ms)}"
            + (f", Q/DQ {fmt_ms(v.qdq_ms)}" if v.qdq_ms else "")
            + (f", layout {fmt_ms(v.layout_ms)}" if v.layout_ms else ""),
            f"speed-up: {fmt_speedup(v.speedup)}" + ("" if v.quantized else " (kept float)"),
        ]
        if v.name in self._why:
            reason, fix = self._why[v.name]
            lines += [f"why: {reason}", f"fix: {fix}"]
        return "\n".join(lines) + "\nClick to select this layer"

    def select_index(self, index: int) -> None:
        """Select layer `index` (depth order) in the document, as a click does."""
        name = self._layers[index].name
        keys = [t.key for t in self._doc.tensors if t.layer.name == name]
        if keys:
            self._doc.select(keys[0])

    # ----------------------------------------------------------------- internals
    def _index_at(self, scene_pos: QPointF) -> int | None:
        if not self._layers or not self.vb.sceneBoundingRect().contains(scene_pos):
            return None
        i = round(self.vb.mapSceneToView(scene_pos).x())
        return i if 0 <= i < len(self._layers) else None

    def _on_hover(self, scene_pos: QPointF) -> None:
        i = self._index_at(scene_pos)
        self.plot_widget.setToolTip("" if i is None else self.tooltip_at(i))

    def _on_click(self, event: object) -> None:
        pos = getattr(event, "scenePos", None)
        i = None if pos is None else self._index_at(pos())
        if i is not None:
            self.select_index(i)

    def _update_ticks(self) -> None:
        axis = self.plot.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.font())
        width = max(1.0, float(self.vb.width()) or float(self.width() - 70))
        ticks = thinned_ticks(self.layer_names, width, metrics.horizontalAdvance)
        axis.setTicks([ticks, []])
