"""Per-layer sensitivity along depth: end-to-end harm beside the layer's own error.

For each quantized layer, in graph order, two bars in the task metric's units (left axis):

* **Δ if quantized alone** — how much worse the model gets with only this layer quantized;
* **recovery if float** — how much better the all-quantized model gets with only this layer
  kept float.

On the right axis, the local view the statistics give: the SQNR of the layer's own weight and
of its input activation. Reading the two together shows when local error predicts end-to-end
harm (a low-SQNR layer with tall bars) and when it does not (low SQNR, no bars: the network
absorbs it; or high SQNR and tall bars: a small error in a place that matters).

The panel draws the document's `SensitivityReport` (and says when it was measured for
earlier settings); clicking a bar selects that layer in the document. Items are created once
and updated in place.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qviz.app.controllers.sensitivity_controller import SensitivityController
from qviz.app.views import plot_style as st
from qviz.core.document.document import Document
from qviz.core.evaluation.display import fmt_metric, fmt_metric_change, metric_unit
from qviz.core.evaluation.evaluate import Metric
from qviz.core.progress import Progress, format_seconds
from qviz.core.search.sensitivity import DEFAULT_LIMIT, LayerSensitivity, SensitivityReport

DROP_COLOR = "#D55E00"  # vermillion: harm
RECOVERY_COLOR = "#8E6BBF"  # purple: what sparing the layer buys back
CURRENT_BRUSH = (255, 179, 0, 45)  # the selected layer, the same amber as a clip band
STALE_ALPHA = 90
BAR_WIDTH = 0.38
MAX_TICK_LABELS = 40

#: Metrics a report can be re-ranked by without a run, in combo order.
METRICS: tuple[Metric, ...] = (
    Metric.ACCURACY, Metric.AGREEMENT, Metric.SQNR, Metric.COSINE, Metric.KL,
)  # fmt: skip


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v if v is not None and math.isfinite(v) else np.nan for v in values], float)


def layer_tooltip(s: LayerSensitivity, report: SensitivityReport) -> str:
    """Everything measured about one layer, as plain text."""
    m = report.metric
    lines = [
        s.name,
        f"node {s.node_name} · {s.op_type} · depth {s.depth}",
    ]
    if s.module_path:
        lines.append(f"torch module {s.module_path}")
    lines += [
        f"Δ if quantized alone: {fmt_metric_change(s.drop, m)} "
        f"({fmt_metric(s.quantized_only.value(m), m)} vs float "
        f"{fmt_metric(report.float_value, m)})",
        f"recovery if float: {fmt_metric_change(s.recovery, m)} "
        f"({fmt_metric(s.float_only.value(m), m)} vs all quantized "
        f"{fmt_metric(report.quantized_value, m)})",
        "local SQNR: weight "
        + ("—" if s.weight_sqnr_db is None else st.fmt_db(s.weight_sqnr_db))
        + ", input "
        + ("—" if s.activation_sqnr_db is None else st.fmt_db(s.activation_sqnr_db)),
        f"quantizes {', '.join(s.tensors)}",
    ]
    return "\n".join(lines)


def report_summary(report: SensitivityReport) -> str:
    """One line: what was measured, on what, how."""
    m = report.metric
    how = (
        "from the cache (not re-run)"
        if report.cached
        else f"{report.n_runs} runs in {format_seconds(report.elapsed_s)}"
    )
    data = report.data_description
    data = data.split(": ", 1)[0] if ": " in data else data
    return (
        f"{m.label} on {report.n_samples} samples of {data}: float "
        f"{fmt_metric(report.float_value, m)}, all quantized "
        f"{fmt_metric(report.quantized_value, m)}"
        f" · {report.quantized.mode_label} · {how}"
    )


class SensitivityChart(QWidget):
    """The bar chart along depth, with the local SQNR on a second axis."""

    layerClicked = Signal(str)  # the layer's display name

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        st.configure_pyqtgraph()
        self._report: SensitivityReport | None = None
        self._layers: tuple[LayerSensitivity, ...] = ()
        self._stale = False

        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumHeight(180)
        plot = self.plot_widget.getPlotItem()
        self.plot = plot
        st.style_plot(plot, grid_y=True)
        plot.setLabel("bottom", "layer, in graph order")
        plot.getViewBox().setMouseEnabled(x=True, y=False)
        plot.addLegend(offset=(8, 4), labelTextSize="8pt", colCount=4)

        self.current_band = pg.LinearRegionItem(
            values=(-0.5, 0.5), movable=False, brush=pg.mkBrush(CURRENT_BRUSH),
            pen=pg.mkPen(None),
        )  # fmt: skip
        self.current_band.setZValue(-20)
        self.current_band.hide()
        plot.addItem(self.current_band, ignoreBounds=True)
        self.zero_line = pg.InfiniteLine(pos=0.0, angle=0, pen=pg.mkPen(st.AXIS_PEN, width=1))
        plot.addItem(self.zero_line, ignoreBounds=True)
        self.drop_bars = pg.BarGraphItem(
            x=[], height=[], width=BAR_WIDTH, brush=DROP_COLOR, pen=pg.mkPen(None),
            name="Δ if quantized alone",
        )  # fmt: skip
        self.recovery_bars = pg.BarGraphItem(
            x=[], height=[], width=BAR_WIDTH, brush=RECOVERY_COLOR, pen=pg.mkPen(None),
            name="recovery if float",
        )  # fmt: skip
        plot.addItem(self.drop_bars)
        plot.addItem(self.recovery_bars)

        # The local view on a second y axis (dB), sharing x.
        self.sqnr_box = pg.ViewBox()
        self.sqnr_box.setMouseEnabled(x=False, y=False)
        self.sqnr_box.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        plot.showAxis("right")
        right = plot.getAxis("right")
        right.linkToView(self.sqnr_box)
        right.setLabel("local SQNR (dB)")
        right.setPen(pg.mkPen(st.AXIS_PEN))
        right.setTextPen(pg.mkPen(st.FOREGROUND))
        right.setTickFont(st.label_font(8.0))
        right.label.setFont(st.label_font(8.5))
        right.enableAutoSIPrefix(False)
        right.setWidth(52)
        plot.scene().addItem(self.sqnr_box)
        self.sqnr_box.setXLink(plot)
        plot.getViewBox().sigResized.connect(self._sync_boxes)
        self.weight_sqnr = pg.PlotDataItem(
            [], [], pen=pg.mkPen(st.WEIGHT_COLOR, width=1.2, style=Qt.PenStyle.DashLine),
            symbol="d", symbolSize=8, symbolBrush=st.WEIGHT_COLOR, symbolPen=pg.mkPen(None),
            name="weight SQNR (right)", connect="finite",
        )  # fmt: skip
        self.activation_sqnr = pg.PlotDataItem(
            [], [], pen=pg.mkPen(st.ACTIVATION_COLOR, width=1.2, style=Qt.PenStyle.DashLine),
            symbol="o", symbolSize=7, symbolBrush=st.ACTIVATION_COLOR, symbolPen=pg.mkPen(None),
            name="input SQNR (right)", connect="finite",
        )  # fmt: skip
        self.sqnr_box.addItem(self.weight_sqnr)
        self.sqnr_box.addItem(self.activation_sqnr)
        # Legend entries for the right-axis items (they live in another view box).
        legend = plot.legend
        if legend is not None:
            legend.addItem(self.weight_sqnr, "weight SQNR (right axis)")
            legend.addItem(self.activation_sqnr, "input SQNR (right axis)")

        self.empty_text = pg.TextItem(
            "No sensitivity yet: Run ▸ Sensitivity (F6)", color=st.AXIS_PEN, anchor=(0.5, 0.5)
        )
        plot.addItem(self.empty_text, ignoreBounds=True)
        self.empty_text.setPos(0.0, 0.5)
        plot.setXRange(-1, 1)
        plot.setYRange(0, 1)

        scene = plot.scene()
        scene.sigMouseClicked.connect(self._on_scene_clicked)
        scene.sigMouseMoved.connect(self._on_scene_moved)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    # ----------------------------------------------------------------- public API
    @property
    def report(self) -> SensitivityReport | None:
        return self._report

    def layer_names(self) -> list[str]:
        """Bar positions' layers, left to right (depth order)."""
        return [s.name for s in self._layers]

    def set_report(self, report: SensitivityReport | None, stale: bool = False) -> None:
        self._report = report
        self._stale = stale
        self._layers = () if report is None else tuple(sorted(report.layers, key=lambda s: s.depth))
        n = len(self._layers)
        x = np.arange(n, dtype=float)
        alpha = STALE_ALPHA if stale else 255
        if report is None or n == 0:
            for bars in (self.drop_bars, self.recovery_bars):
                bars.setOpts(x=[], height=[])
            self.weight_sqnr.setData([], [])
            self.activation_sqnr.setData([], [])
            self.plot.getAxis("bottom").setTicks(None)
            self.plot.setLabel("left", "")
            self.empty_text.show()
            self.plot.setXRange(-1, 1)
            self.plot.setYRange(0, 1)
            return
        self.empty_text.hide()
        m = report.metric
        drops = _finite([s.drop for s in self._layers])
        recoveries = _finite([s.recovery for s in self._layers])
        self.drop_bars.setOpts(
            x=x - BAR_WIDTH / 2, height=np.nan_to_num(drops), brush=st.color(DROP_COLOR, alpha)
        )
        self.recovery_bars.setOpts(
            x=x + BAR_WIDTH / 2,
            height=np.nan_to_num(recoveries),
            brush=st.color(RECOVERY_COLOR, alpha),
        )
        w = _finite([s.weight_sqnr_db for s in self._layers])
        a = _finite([s.activation_sqnr_db for s in self._layers])
        self.weight_sqnr.setData(x, w)
        self.activation_sqnr.setData(x, a)
        step = max(1, math.ceil(n / MAX_TICK_LABELS))
        ticks = [(float(i), s.name) for i, s in enumerate(self._layers) if i % step == 0]
        self.plot.getAxis("bottom").setTicks([ticks, []])
        self.plot.setLabel("left", metric_unit(m))
        heights = np.concatenate([drops, recoveries])
        heights = heights[np.isfinite(heights)]
        lo = min(0.0, float(heights.min())) if heights.size else 0.0
        hi = max(0.0, float(heights.max())) if heights.size else 1.0
        if hi - lo < 1e-12:
            hi = lo + 1.0
        pad = 0.08 * (hi - lo)
        self.plot.setXRange(-0.6, n - 0.4, padding=0)
        # Headroom above the bars for the legend.
        self.plot.setYRange(lo - (pad if lo < 0 else 0.0), hi + 4 * pad, padding=0)
        sq = np.concatenate([w, a])
        sq = sq[np.isfinite(sq)]
        if sq.size:
            s_lo, s_hi = float(sq.min()), float(sq.max())
            s_pad = max(2.0, 0.1 * (s_hi - s_lo))
            self.sqnr_box.setYRange(max(0.0, s_lo - s_pad), s_hi + s_pad, padding=0)
        self._sync_boxes()

    def set_current(self, name: str | None) -> None:
        """Highlight the selected layer's bars (nothing when it has none)."""
        names = self.layer_names()
        if name is None or name not in names:
            self.current_band.hide()
            return
        i = names.index(name)
        self.current_band.setRegion((i - 0.5, i + 0.5))
        self.current_band.show()

    def click_bar(self, index: int) -> None:
        """What a click on the bars of layer `index` (depth order) does: announce the layer."""
        if 0 <= index < len(self._layers):
            name = self._layers[index].name
            self.set_current(name)
            self.layerClicked.emit(name)

    # ----------------------------------------------------------------- internals
    def _sync_boxes(self) -> None:
        self.sqnr_box.setGeometry(self.plot.getViewBox().sceneBoundingRect())
        self.sqnr_box.linkedViewChanged(self.plot.getViewBox(), self.sqnr_box.XAxis)

    def _index_at(self, scene_pos: QPointF) -> int | None:
        vb = self.plot.getViewBox()
        if not self._layers or not vb.sceneBoundingRect().contains(scene_pos):
            return None
        x = vb.mapSceneToView(scene_pos).x()
        i = round(x)
        return i if 0 <= i < len(self._layers) and abs(x - i) <= 0.5 else None

    def _on_scene_clicked(self, event: object) -> None:
        if event.button() != Qt.MouseButton.LeftButton:  # type: ignore[attr-defined]
            return
        i = self._index_at(event.scenePos())  # type: ignore[attr-defined]
        if i is not None:
            self.click_bar(i)

    def _on_scene_moved(self, scene_pos: QPointF) -> None:
        i = self._index_at(scene_pos)
        if i is None or self._report is None:
            self.plot_widget.setToolTip("")
            return
        tip = layer_tooltip(self._layers[i], self._report) + "\nClick to select this layer."
        self.plot_widget.setToolTip(tip)


class SensitivityPanel(QWidget):
    """The sensitivity dock's contents: run controls, what was measured, and the chart.

    Draws the document's report; its buttons call the controller; a bar click selects the
    layer in the document.
    """

    def __init__(
        self, doc: Document, controller: SensitivityController, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._doc = doc
        self._controller = controller
        self.run_button = QPushButton("Measure")
        self.run_button.setToolTip(
            "For every quantized layer, run the model with only that layer quantized and with "
            "only that layer kept float (F6). Cached: the same settings never run twice."
        )
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the measurement at the end of the current batch")
        self.cancel_button.clicked.connect(controller.runner.cancel)
        self.cancel_button.hide()
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(16, 1_000_000)
        self.limit_spin.setSingleStep(100)
        self.limit_spin.setValue(DEFAULT_LIMIT)
        self.limit_spin.setSuffix(" samples")
        self.limit_spin.setToolTip(
            "Samples each variant runs on (the first N of the data). 2 runs per layer plus "
            "one: fewer samples are quicker, more are less noisy."
        )
        self.metric_combo = QComboBox()
        self.metric_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.metric_combo.setMinimumContentsLength(16)
        for m in METRICS:
            self.metric_combo.addItem(m.label, m)
        self.metric_combo.setToolTip(
            "The task metric the bars are counted in. Every metric is measured in the same "
            "runs: switching re-ranks without running anything."
        )
        self.metric_combo.activated.connect(
            lambda i: controller.set_metric(self.metric_combo.itemData(i))
        )
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Samples run so far, over every variant")
        self.progress.hide()
        self.summary = QLabel()
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet(f"color: {st.AXIS_PEN};")
        self.notes.hide()
        self.chart = SensitivityChart()

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.run_button)
        top.addWidget(self.cancel_button)
        top.addWidget(QLabel("on"))
        top.addWidget(self.limit_spin)
        top.addWidget(QLabel("metric"))
        top.addWidget(self.metric_combo)
        top.addWidget(self.progress, 1)
        top.addStretch(0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.notes)
        layout.addWidget(self.chart, 1)

        self.chart.layerClicked.connect(self._select_layer)
        controller.sensitivityBusy.connect(self.set_running)
        controller.sensitivityProgress.connect(self.show_progress)
        doc.events.sensitivity.connect(self.refresh)
        doc.events.model.connect(self.refresh)
        doc.events.selection.connect(self._show_selection)
        self.refresh()

    def run(self) -> None:
        self._controller.run_sensitivity(self.limit)

    def refresh(self) -> None:
        m = self._doc.measures
        self.show_report(m.sensitivity, m.sensitivity_stale)
        self._show_selection()

    def _show_selection(self) -> None:
        key = self._doc.selection
        has = key is not None and self._doc.has(key)
        self.chart.set_current(self._doc.tensor(key).layer.name if has and key else None)

    def _select_layer(self, name: str) -> None:
        """A bar was clicked: select the layer's weight (or its first tensor)."""
        keys = self._doc.index.keys_of_layer(name)
        if keys:
            self._doc.select(keys[0])

    @property
    def limit(self) -> int:
        return int(self.limit_spin.value())

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setVisible(running)
        self.progress.setVisible(running)
        if running:
            self.progress.setRange(0, 0)
            self.progress.setFormat("starting…")

    def show_progress(self, p: Progress) -> None:
        if p.total > 0:
            self.progress.setRange(0, p.total)
            self.progress.setValue(min(p.done, p.total))
        eta = "" if p.remaining_s is None else f" · {format_seconds(p.remaining_s)} left"
        self.progress.setFormat(f"{p.message or 'measuring'}{eta}")

    def show_report(self, report: SensitivityReport | None, stale: bool = False) -> None:
        self.chart.set_report(report, stale)
        if report is None:
            self.summary.setText(
                "Measures, for every layer, the harm of quantizing it alone and the gain of "
                "keeping it alone float, beside its own SQNR."
            )
            self.summary.setToolTip("")
            self.notes.hide()
            return
        i = self.metric_combo.findData(report.metric)
        if i >= 0:
            self.metric_combo.setCurrentIndex(i)
        for j in range(self.metric_combo.count()):
            item = self.metric_combo.model().item(j)  # type: ignore[attr-defined]
            item.setEnabled(self.metric_combo.itemData(j) in report.quantized.metrics)
        text = report_summary(report)
        if stale:
            self.summary.setText(
                f"<span style='color:#b26a00'><b>Measured for earlier settings</b> — "
                f"Measure again.</span> {html.escape(text)}"
            )
        else:
            self.summary.setText(html.escape(text))
        self.summary.setToolTip(text)
        if report.notes:
            first = report.notes[0]
            more = f" (+{len(report.notes) - 1} more: hover)" if len(report.notes) > 1 else ""
            self.notes.setText(f"Note: {first}{more}")
            self.notes.setToolTip("\n".join(f"• {n}" for n in report.notes))
            self.notes.show()
        else:
            self.notes.hide()
