"""The layer view: everything about one layer's weight and activation quantization.

::

    ┌ weight histogram ───────────┬ activation histogram ───────┐
    │ clip band, bounds, grid     │ clip band, bounds, grid     │
    ├ per-channel ranges ─────────┼ error vs clip threshold ────┤
    │ range bars + SQNR / groups  │ SQNR / MSE / KL, markers    │
    ├ metrics: weight | activation ───────────────────────────────┤

The view draws the document's selected layer. Everything it draws is computed in the core
(`Document.layer_data`: histograms, effective bands, channel data, error curves and markers,
metrics columns); it redraws when the document says the selection, the settings or the
results of a shown tensor changed. While a band is dragged it previews the Manual range's
metrics (core functions, milliseconds); when the drag ends the range goes into the document
(`set_manual_range`, one undo step) and the view redraws from there.

With `defer_parts` (the app), a layer of a large model is drawn at once from what is cached
or cheap; its slow parts say "computing…" and go out on `partsPending` (the window hands them to a
`LayerPartsController`); when the document announces them (`events.parts`) the view draws
again. A redraw leaves alone the panels whose data did not change, so filling in one part
repaints only that part.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QSplitter, QTabWidget, QVBoxLayout, QWidget

from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.views import plot_style as st
from qviz.app.views.activation_channel_view import ActivationChannelView
from qviz.app.views.channel_view import ChannelView
from qviz.app.views.convergence_view import ConvergenceView
from qviz.app.views.error_curve_view import ErrorCurveView
from qviz.app.views.histogram_view import HistogramView
from qviz.app.views.metrics_panel import MetricsPanel
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.metrics import TensorMetrics
from qviz.core.document.document import Document
from qviz.core.errors import QvizError
from qviz.core.layerdata.curves import CurveData
from qviz.core.layerdata.deferred import COMPUTING
from qviz.core.layerdata.layer import (
    ActivationPanel,
    LayerData,
    WeightPanel,
    preview_activation,
    preview_weight,
)
from qviz.core.layerdata.ranges import curve_x
from qviz.core.model.loading import TensorKind


class LayerView(QWidget):
    """Histograms, channel view, error curve and metrics of the document's selected layer."""

    #: A drag of a clip band finished: tensor name, kind, low, high (then stored in the
    #: document when the tensor is one of its own).
    clipRangeEdited = Signal(str, TensorKind, float, float)
    #: Parts of the layer on view still to compute (a tuple of `deferred.Pending`).
    partsPending = Signal(tuple)

    def __init__(
        self, doc: Document, reporter: ErrorReporter, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._doc = doc
        self._reporter = reporter
        self.weight_hist = HistogramView("Weight", st.WEIGHT_COLOR)
        self.activation_hist = HistogramView("Activation", st.ACTIVATION_COLOR)
        self.channel_view = ChannelView()
        self.input_channels = ActivationChannelView()
        # Weight channels and input (activation) channels share the bottom-left pane.
        self.channel_tabs = QTabWidget()
        self.channel_tabs.addTab(self.channel_view, "Weight channels")
        self.channel_tabs.addTab(self.input_channels, "Input channels")
        self.error_curve = ErrorCurveView()
        self.convergence = ConvergenceView()
        self.metrics_panel = MetricsPanel()
        self.data: LayerData | None = None
        # Latest drag preview per kind (tests compare it with the core's metrics).
        self.preview_metrics: dict[TensorKind, TensorMetrics] = {}
        # Errors already reported, so a refused setting is said once, not on every redraw.
        self._reported: set[tuple[TensorKey, object]] = set()
        #: Leave the slow parts of a large model's layers to a worker (see the module docstring).
        self.defer_parts = False
        # What each panel last drew, so a redraw with the same data skips it.
        self._shown: dict[str, tuple[object, ...]] = {}

        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.weight_hist)
        top.addWidget(self.activation_hist)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.channel_tabs)
        self.curve_tabs = QTabWidget()
        self.curve_tabs.addTab(self.error_curve, "Error vs clip")
        self.curve_tabs.addTab(self.convergence, "Convergence")
        self.curve_tabs.setTabToolTip(
            1, "How the activation's range moved as calibration data grew, and what the "
            "evaluation data alone would choose"
        )
        bottom.addWidget(self.curve_tabs)
        outer = QSplitter(Qt.Orientation.Vertical)
        outer.addWidget(top)
        outer.addWidget(bottom)
        outer.addWidget(self.metrics_panel)
        outer.setStretchFactor(0, 5)
        outer.setStretchFactor(1, 5)
        outer.setStretchFactor(2, 0)
        for splitter in (top, bottom, outer):
            splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(outer)

        self.weight_hist.regionChanging.connect(self._on_weight_changing)
        self.weight_hist.regionEdited.connect(self._on_weight_edited)
        self.activation_hist.regionChanging.connect(self._on_activation_changing)
        self.activation_hist.regionEdited.connect(self._on_activation_edited)
        events = doc.events
        for event in (events.selection, events.model, events.stats, events.pinned,
                      events.eval_stats, events.parts):
            event.connect(self.redraw)
        events.config.connect(self._on_changed)
        events.results.connect(self._on_changed)
        events.view.connect(self._on_view)
        self.clear()

    # ------------------------------------------------------------------ following the document
    def _on_changed(self, keys: tuple[TensorKey, ...]) -> None:
        if set(keys) & set(self._doc.visible_keys()):
            self.redraw()

    def _on_view(self) -> None:
        self.set_log_counts(self._doc.log_counts)

    def redraw(self) -> None:
        """Draw the selected layer from the document (measuring what it shows, now)."""
        with self._reporter.guard("Showing the layer"):
            data = self._doc.layer_data(defer=self.defer_parts)
            self._report_errors()
            if data is None:
                self.clear()
            else:
                self.show_layer(data)
                if data.pending:
                    self.partsPending.emit(data.pending)

    def _report_errors(self) -> None:
        for key in self._doc.visible_keys():
            error = self._doc.error(key)
            mark = (key, self._doc.config_for(key))
            if error is not None and mark not in self._reported:
                self._reported.add(mark)
                self._reporter.report(QvizError(f"{key.name}: {error}"))

    def show_layer(self, data: LayerData) -> None:
        self.data = data
        self.preview_metrics.clear()
        self._show_weight(data.weight, data.weight_missing)
        self._show_activation(data.activation, data.activation_missing)
        curves = (None if data.weight is None else data.weight.curve,
                  None if data.activation is None else data.activation.curve)
        missing = [p.curve_missing for p in (data.weight, data.activation)
                   if p is not None and p.curve is None and p.curve_missing]
        if self._changed("curves", *(_curve_state(c) for c in curves), *missing):
            self.error_curve.set_curves(*curves, placeholder=_curves_placeholder(missing))

    def _changed(self, panel: str, *state: object) -> bool:
        """Whether `panel` must be drawn for `state` (and note it as drawn)."""
        if self._shown.get(panel) == state:
            return False
        self._shown[panel] = state
        return True

    def clear(self) -> None:
        self.data = None
        self.preview_metrics.clear()
        self._shown.clear()
        self.weight_hist.set_placeholder("select a layer")
        self.activation_hist.set_placeholder("select a layer")
        self.channel_view.set_placeholder("select a layer")
        self.input_channels.set_placeholder("select a layer")
        self.error_curve.clear()
        self.metrics_panel.clear()

    def set_log_counts(self, on: bool) -> None:
        self.weight_hist.set_log_counts(on)
        self.activation_hist.set_log_counts(on)

    # ------------------------------------------------------------------ weight
    def _show_weight(self, w: WeightPanel | None, missing: str) -> None:
        if w is None:
            self.weight_hist.set_placeholder(missing)
            self._shown.pop("weight channels", None)
            self.channel_view.set_placeholder(
                "no weight in this layer" if missing == "this layer has no weight" else missing
            )
            self.metrics_panel.set_column(TensorKind.WEIGHT, None, "no weight")
            return
        r = w.result
        if w.edges is None or w.counts is None:  # its statistics are being computed
            self.weight_hist.set_placeholder(
                f"the histogram of {r.name}: {COMPUTING}"
                if w.histogram_missing in ("", COMPUTING) else w.histogram_missing
            )
        else:
            self.weight_hist.set_histogram(w.edges, w.counts)
            self.weight_hist.set_log_counts(self._doc.log_counts)
            self.weight_hist.set_title(f"Weight — {r.name}", st.WEIGHT_COLOR)
            self.weight_hist.set_quantizer(
                w.band[0], w.band[1], r.config.fmt, r.qparams if w.per_tensor else None,
                w.note, w.scales_text,
            )
            self.weight_hist.set_pinned(w.pinned_band)
            _show_before(self.weight_hist, w.before_edges, w.before_counts, w.before_band,
                         w.edges, self._doc.log_counts)
        if w.channels is None:
            self._shown.pop("weight channels", None)
            self.channel_view.set_placeholder(w.channels_missing)
        elif self._changed("weight channels", id(w.channels), r.name,
                           r.config.granularity.label):
            self.channel_view.show_channels(w.channels, r.name, r.config.granularity.label)
        self.metrics_panel.set_column(TensorKind.WEIGHT, w.column)

    def _on_weight_changing(self, lo: float, hi: float) -> None:
        if self.data is not None and self.data.weight is not None:
            self.error_curve.select_tensor(TensorKind.WEIGHT)
            self._preview_weight(self.data.weight, lo, hi, exact=False)

    def _preview_curve(self, kind: TensorKind, x: float, sqnr: float, mse: float) -> None:
        self._shown.pop("curves", None)  # the curve view shows the drag, not the data
        self.error_curve.move_current(kind, x, sqnr, mse)

    def _preview_weight(self, w: WeightPanel, lo: float, hi: float, exact: bool) -> None:
        r, values, held = w.result, w.values, w.stats
        column = preview_weight(
            r.name, values, r.config.fmt, lo, hi, exact=exact,
            # The statistics the histogram shows (a large weight's stored ones).
            stats=lambda: held or self._doc.plots.weight_stats(r.name, values),
        )
        # A's rows, the "before" rows and the layer's name stay while dragging.
        column = replace(column, pinned=w.column.pinned, before=w.column.before,
                         layer=w.column.layer)
        m = column.metrics
        self.preview_metrics[TensorKind.WEIGHT] = m
        self.metrics_panel.set_column(TensorKind.WEIGHT, column)
        self._preview_curve(TensorKind.WEIGHT, curve_x(lo, hi, r.config.fmt), m.sqnr_db, m.mse)

    def _on_weight_edited(self, lo: float, hi: float) -> None:
        if self.data is None or self.data.weight is None:
            return
        self._preview_weight(self.data.weight, lo, hi, exact=True)
        self._set_range(self.data.weight.result.name, TensorKind.WEIGHT, lo, hi)

    # ------------------------------------------------------------------ activation
    def _show_activation(self, a: ActivationPanel | None, missing: str) -> None:
        if a is None:
            self.activation_hist.set_placeholder(
                missing if missing != "not calibrated"
                else "no activation statistics for this layer"
            )
            self.metrics_panel.set_column(TensorKind.ACTIVATION, None, "not calibrated")
            self._shown.pop("input channels", None)
            self.input_channels.set_placeholder("no activation statistics for this layer")
            self.convergence.show_convergence((), None, "")
            return
        r, h = a.result, a.stats.histogram
        self.activation_hist.set_histogram(h.edges, h.counts)
        self.activation_hist.set_log_counts(self._doc.log_counts)
        self.activation_hist.set_title(f"Activation — {r.name}", st.ACTIVATION_COLOR)
        self.activation_hist.set_quantizer(a.band[0], a.band[1], r.config.fmt, r.qparams, a.note)
        self.activation_hist.set_pinned(a.pinned_band)
        b = a.before_stats
        _show_before(self.activation_hist, None if b is None else b.histogram.edges,
                     None if b is None else b.histogram.counts, a.before_band, h.edges,
                     self._doc.log_counts)
        if a.channels is None:
            self._shown.pop("input channels", None)
            self.input_channels.set_placeholder(
                a.channels_missing or "no per-channel statistics for this input"
            )
        elif self._changed("input channels", id(a.channels), r.name, id(a.before_channels)):
            self.input_channels.show_channels(a.channels, r.name, a.before_channels)
        self.activation_hist.set_reference(a.eval_hist)
        self.convergence.show_convergence(a.convergence, a.eval_band, r.name,
                                          f"the convergence: {COMPUTING}"
                                          if a.convergence_waiting else "")
        self.metrics_panel.set_column(TensorKind.ACTIVATION, a.column)

    def _on_activation_changing(self, lo: float, hi: float) -> None:
        if self.data is None or self.data.activation is None:
            return
        a = self.data.activation
        self.error_curve.select_tensor(TensorKind.ACTIVATION)
        fmt = a.result.config.fmt
        column = replace(
            preview_activation(a.result.name, a.stats, fmt, lo, hi), pinned=a.column.pinned,
            before=a.column.before, layer=a.column.layer,
        )
        m = column.metrics
        self.preview_metrics[TensorKind.ACTIVATION] = m
        self.metrics_panel.set_column(TensorKind.ACTIVATION, column)
        self._preview_curve(TensorKind.ACTIVATION, curve_x(lo, hi, fmt), m.sqnr_db, m.mse)

    def _on_activation_edited(self, lo: float, hi: float) -> None:
        if self.data is not None and self.data.activation is not None:
            self._set_range(self.data.activation.result.name, TensorKind.ACTIVATION, lo, hi)

    def _set_range(self, name: str, kind: TensorKind, lo: float, hi: float) -> None:
        """A finished drag: the tensor gets this Manual range, as one undo step."""
        self.clipRangeEdited.emit(name, kind, lo, hi)
        key = TensorKey(name, kind)
        if not self._doc.has(key):
            return  # a layer shown on its own (no document behind it)
        with self._reporter.guard("Setting the clip range"):
            self._doc.select(key)
            self._doc.set_manual_range(key, lo, hi)
            self._reporter.status(f"{name}: manual clip range [{lo:.4g}, {hi:.4g}]")


def _curves_placeholder(missing: list[str]) -> str:
    """What the error curve view says with no curve: why one could not be computed, that one
    is being computed, or that the layer has none."""
    failed = [text for text in missing if text != COMPUTING]
    if failed:
        return failed[0]
    return COMPUTING if missing else "no tensor to plot"


def _curve_state(c: CurveData | None) -> object:
    """What the error curve view draws of `c`: the same state draws nothing new (curves and
    markers are memoised; the markers are small, compared by value)."""
    if c is None:
        return None
    return (id(c.clips), id(c.sqnr_db), repr(c.markers), repr(c.current),
            repr(c.current_level), c.current_label, c.note, c.x_label)


def _show_before(view: HistogramView, edges: np.ndarray | None, counts: np.ndarray | None,
                 band: tuple[float, float] | None, shown: np.ndarray, log: bool) -> None:
    """The untransformed histogram under `view`'s, or nothing when there is none."""
    if edges is None or counts is None:
        view.before.hide()
        return
    e = np.asarray(shown, dtype=np.float64)
    view.before.show(np.asarray(edges), np.asarray(counts), band,
                     (e[-1] - e[0]) / max(e.size - 1, 1), log)
