"""The layer view: everything about one layer's weight and activation quantization.

::

    ┌ weight histogram ───────────┬ activation histogram ───────┐
    │ clip band, bounds, grid     │ clip band, bounds, grid     │
    ├ per-channel ranges ─────────┼ error vs clip threshold ────┤
    │ range bars + SQNR / groups  │ SQNR / MSE / KL, markers    │
    ├ metrics: weight | activation ───────────────────────────────┤

The view is thin: it takes core results (``TensorResult``, ``TensorStats``, the exact weight)
and draws them. The only computing it does is the live preview while a clip band is dragged
(``histogram_metrics`` / ``exact_metrics``, milliseconds) and, once per layer, the weight
histogram and the error curves. The main window owns the configuration: when a drag finishes,
``clipRangeEdited`` tells it the tensor's new Manual range and it calls ``show_layer`` again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QSplitter, QVBoxLayout, QWidget

from qviz.app.views import plot_style as st
from qviz.app.views.channel_view import ChannelView, channel_data
from qviz.app.views.error_curve_view import (
    CurveData,
    ErrorCurveView,
    Marker,
    activation_curve,
    activation_markers,
    curve_x,
    marker_of,
    weight_curve,
    weight_markers,
)
from qviz.app.views.histogram_view import HistogramView
from qviz.app.views.metrics_panel import ColumnData, MetricsPanel
from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import method_label
from qviz.core.calibration.methods import Method
from qviz.core.calibration.metrics import TensorMetrics, exact_metrics, histogram_metrics
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import GranularityKind
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.tensor_stats import TensorStats, compute_stats

# Weight histograms are rebuilt from the exact values: enough bins to show shape and tails,
# few enough that each bin holds several values for small layers.
MIN_WEIGHT_BINS, MAX_WEIGHT_BINS = 64, 512
# Exact weight metrics cost ~0.6 ms per 100k values (bench_histogram_redraw.py): up to this
# many values a drag step stays within a frame or two; bigger weights preview from a histogram.
EXACT_PREVIEW_MAX = 2_000_000
# Memoised curves and markers (a few layers' worth, so flipping between layers is instant).
CACHE_ENTRIES = 64
_T = TypeVar("_T")


@dataclass(frozen=True)
class _WeightHist:
    """Cached weight histogram: rebuilt only when the layer's weight array changes."""

    name: str
    values_id: int  # LayerView._token of the weight array
    edges: np.ndarray
    counts: np.ndarray


def weight_histogram(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the exact weight values over their full range."""
    flat = np.asarray(w, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    bins = int(np.clip(2 * np.sqrt(max(flat.size, 1)), MIN_WEIGHT_BINS, MAX_WEIGHT_BINS))
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(flat, bins=bins, range=(lo, hi))
    return edges, counts.astype(np.float64)


def result_range(result: TensorResult) -> tuple[float, float]:
    """The effective clip range of a result as one (lo, hi): ``TensorMetrics.lo/hi`` are
    already what the qparams cover; per-channel / per-group give the envelope."""
    return result.metrics.envelope


class LayerView(QWidget):
    """Histograms, channel view, error curve and metrics of one layer."""

    # tensor name, TensorKind, lo, hi — emitted when a drag of a clip band finishes.
    clipRangeEdited = Signal(str, object, float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.weight_hist = HistogramView("Weight", st.WEIGHT_COLOR)
        self.activation_hist = HistogramView("Activation", st.ACTIVATION_COLOR)
        self.channel_view = ChannelView()
        self.error_curve = ErrorCurveView()
        self.metrics_panel = MetricsPanel()

        self._weight: TensorResult | None = None
        self._weight_values: np.ndarray | None = None
        self._activation: TensorResult | None = None
        self._stats: TensorStats | None = None
        self._method_ranges: dict = {}
        self._whist: _WeightHist | None = None
        self._cache: dict[tuple, tuple[object, object]] = {}
        self._weights: dict[str, tuple[np.ndarray, int]] = {}
        self._next_token = 0
        self._log = False
        # Latest drag preview per kind (tests compare it with the core's metrics).
        self.preview_metrics: dict[TensorKind, TensorMetrics] = {}

        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.weight_hist)
        top.addWidget(self.activation_hist)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.channel_view)
        bottom.addWidget(self.error_curve)
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
        self.clear()

    # ------------------------------------------------------------------ public API
    def show_layer(
        self,
        weight: TensorResult | None,
        weight_values: np.ndarray | None,
        activation: TensorResult | None,
        activation_stats: TensorStats | None,
        method_ranges: Mapping,
    ) -> None:
        """Show one layer. ``method_ranges`` maps (tensor name, Method) to the (lo, hi) each
        method would choose; it places the markers on the error curve and may be empty."""
        self._weight = weight if weight_values is not None else None
        self._weight_values = weight_values if weight is not None else None
        self._activation = activation if activation_stats is not None else None
        self._stats = activation_stats if activation is not None else None
        self._method_ranges = dict(method_ranges)
        self.preview_metrics.clear()
        self._show_weight()
        self._show_activation()
        self.error_curve.set_curves(self._weight_curve(), self._activation_curve())

    def clear(self) -> None:
        self._weight = self._activation = None
        self._weight_values = None
        self._stats = None
        self._method_ranges = {}
        self._whist = None
        self.preview_metrics.clear()
        self.weight_hist.set_placeholder("select a layer")
        self.activation_hist.set_placeholder("select a layer")
        self.channel_view.set_placeholder("select a layer")
        self.error_curve.clear()
        self.metrics_panel.clear()

    def set_log_counts(self, on: bool) -> None:
        self._log = on
        self.weight_hist.set_log_counts(on)
        self.activation_hist.set_log_counts(on)

    # ------------------------------------------------------------------ weight
    def _show_weight(self) -> None:
        r, w = self._weight, self._weight_values
        if r is None or w is None:
            self._whist = None
            self.weight_hist.set_placeholder("this layer has no weight")
            self.channel_view.set_placeholder("no weight in this layer")
            self.metrics_panel.set_column(TensorKind.WEIGHT, None, "no weight")
            return
        token = self._token(r.name, w)
        if self._whist is None or self._whist.name != r.name or self._whist.values_id != token:
            edges, counts = weight_histogram(w)
            self._whist = _WeightHist(r.name, token, edges, counts)
        self.weight_hist.set_histogram(self._whist.edges, self._whist.counts)
        self.weight_hist.set_log_counts(self._log)
        fmt = r.config.fmt
        lo, hi = result_range(r)
        gran = r.config.granularity
        per_tensor = gran.kind is GranularityKind.PER_TENSOR
        note = ""
        if not per_tensor:
            word = "group" if gran.kind is GranularityKind.PER_GROUP else "channel"
            n = int(np.asarray(r.qparams.scale).size)
            note = (
                f"{gran.label}: the band is the envelope of {n} {word} ranges (each shown in "
                f"the channel view). Dragging it sets one per-tensor Manual range."
            )
        self.weight_hist.set_title(f"Weight — {r.name}", st.WEIGHT_COLOR)
        scales = np.asarray(r.qparams.scale, dtype=np.float64)
        scales_text = "" if per_tensor else (
            f"{scales.size} scales {st.fmt_num(scales.min())} … {st.fmt_num(scales.max())}"
        )
        self.weight_hist.set_quantizer(
            lo, hi, fmt, r.qparams if per_tensor else None, note, scales_text
        )
        self._show_channels(r, w, (lo, hi))
        self.metrics_panel.set_column(TensorKind.WEIGHT, self._weight_column(r))

    def _show_channels(self, r: TensorResult, w: np.ndarray, clip: tuple[float, float]) -> None:
        axis = r.layer.channel_axis
        if axis is None or w.ndim < 1:
            self.channel_view.set_placeholder("this weight has no output-channel axis")
            return
        qp = r.qparams
        # Per-group SQNR fake-quantizes the whole weight: reuse it while the qparams stand.
        key = (
            "channels", r.name, self._token(r.name, w), r.config.fmt, r.config.granularity, clip,
            hash(np.asarray(qp.scale).tobytes()), hash(np.asarray(qp.zero_point).tobytes()),
        )
        data = self._memo(key, w, lambda: channel_data(
            w, qp, r.config.fmt, axis, r.layer.reduction_axis,
            r.config.granularity.kind, r.channel_metrics, clip,
        ))
        self.channel_view.show_channels(data, r.name, r.config.granularity.label)

    def _weight_column(self, r: TensorResult) -> ColumnData:
        cm = r.channel_metrics
        sq = None if cm is None else np.asarray(cm.sqnr_db)
        word = "group" if r.config.granularity.kind is GranularityKind.PER_GROUP else "channel"
        return ColumnData(r.name, r.config.label, r.metrics, sq, word)

    def _on_weight_changing(self, lo: float, hi: float) -> None:
        if self._weight is None:
            return
        self.error_curve.select_tensor(TensorKind.WEIGHT)
        self._preview_weight(lo, hi, exact=False)

    def _preview_weight(self, lo: float, hi: float, exact: bool = True) -> None:
        """Metrics of the dragged per-tensor range. Exact over every value, except while a
        huge weight (over EXACT_PREVIEW_MAX values) is being dragged: then the preview reads
        a 2048-bin histogram of the weight (~1 ms, marked "≈") and the exact numbers follow
        when the drag ends, so the band never stutters under the mouse."""
        r, w = self._weight, self._weight_values
        if r is None or w is None:
            return
        fmt = r.config.fmt
        approx = not exact and w.size > EXACT_PREVIEW_MAX
        if approx:
            key = ("weight stats", r.name, self._token(r.name, w))
            stats = self._memo(key, w, lambda: compute_stats(w, r.name))
            m = histogram_metrics(stats, lo, hi, fmt)
        else:
            m = exact_metrics(w, compute_qparams(lo, hi, fmt), fmt)
        self.preview_metrics[TensorKind.WEIGHT] = m
        cfg = f"{fmt.label}, per-tensor, manual {st.fmt_range(lo, hi)}"
        self.metrics_panel.set_column(
            TensorKind.WEIGHT, ColumnData(r.name, cfg, m, preview=True, approximate=approx)
        )
        self.error_curve.move_current(TensorKind.WEIGHT, curve_x(lo, hi, fmt), m.sqnr_db, m.mse)

    def _on_weight_edited(self, lo: float, hi: float) -> None:
        if self._weight is None:
            return
        self._preview_weight(lo, hi, exact=True)
        self.clipRangeEdited.emit(self._weight.name, TensorKind.WEIGHT, lo, hi)

    # ------------------------------------------------------------------ activation
    def _show_activation(self) -> None:
        r, s = self._activation, self._stats
        if r is None or s is None:
            self.activation_hist.set_placeholder("no activation statistics for this layer")
            self.metrics_panel.set_column(TensorKind.ACTIVATION, None, "not calibrated")
            return
        h = s.histogram
        self.activation_hist.set_histogram(h.edges, h.counts)
        self.activation_hist.set_log_counts(self._log)
        self.activation_hist.set_title(f"Activation — {r.name}", st.ACTIVATION_COLOR)
        lo, hi = result_range(r)
        notes = []
        if s.dominated_by_extremes:
            notes.append(
                f"{s.n_extreme} extreme values (|x| ≥ 1e30, e.g. mask fills) are left out of "
                f"the histogram; MinMax would be ruined by them."
            )
        self.activation_hist.set_quantizer(lo, hi, r.config.fmt, r.qparams, " ".join(notes))
        self.metrics_panel.set_column(
            TensorKind.ACTIVATION, ColumnData(r.name, r.config.label, r.metrics)
        )

    def _on_activation_changing(self, lo: float, hi: float) -> None:
        r, s = self._activation, self._stats
        if r is None or s is None:
            return
        self.error_curve.select_tensor(TensorKind.ACTIVATION)
        fmt = r.config.fmt
        m = histogram_metrics(s, lo, hi, fmt)
        self.preview_metrics[TensorKind.ACTIVATION] = m
        cfg = f"{fmt.label}, per-tensor, manual {st.fmt_range(lo, hi)}"
        self.metrics_panel.set_column(
            TensorKind.ACTIVATION, ColumnData(r.name, cfg, m, preview=True)
        )
        self.error_curve.move_current(
            TensorKind.ACTIVATION, curve_x(lo, hi, fmt), m.sqnr_db, m.mse
        )

    def _on_activation_edited(self, lo: float, hi: float) -> None:
        if self._activation is None:
            return
        self.clipRangeEdited.emit(self._activation.name, TensorKind.ACTIVATION, lo, hi)

    # ------------------------------------------------------------------ error curves
    def _ranges_for(self, name: str) -> dict[Method, tuple[float, float]]:
        return {
            method: (float(lo), float(hi))
            for (tensor, method), (lo, hi) in self._method_ranges.items()
            if tensor == name
        }

    def _token(self, name: str, w: np.ndarray) -> int:
        """A number that stays the same while ``name``'s weight values do: the main window
        passes the same cached array every time (identity, free), other callers may pass a
        fresh copy (compared by value, ~0.2 ms per 400k values). Memo keys use it."""
        known = self._weights.get(name)
        if known is not None and (
            known[0] is w or (known[0].shape == w.shape and np.array_equal(known[0], w))
        ):
            return known[1]
        self._next_token += 1
        self._weights[name] = (w, self._next_token)
        if len(self._weights) > CACHE_ENTRIES:
            self._weights.pop(next(iter(self._weights)))
        return self._next_token

    def _memo(self, key: tuple, source: object, build: Callable[[], _T]) -> _T:
        """Curves and markers depend on the data, the format, the method ranges and (for
        asymmetric curves) the lower bound only, so re-showing a layer after a method change
        or a finished drag reuses them. ``source`` is kept alive in the cache so that its
        id() in the key cannot be reused by another array."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit[1]
        value = build()
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (source, value)
        return value

    def _weight_curve(self) -> CurveData | None:
        r, w = self._weight, self._weight_values
        if r is None or w is None:
            return None
        fmt = r.config.fmt
        lo, _hi = result_range(r)
        fixed_lo = 0.0 if fmt.symmetric else lo
        token = self._token(r.name, w)
        key = ("curve", TensorKind.WEIGHT, r.name, token, fmt, fixed_lo)
        base = self._memo(key, w, lambda: weight_curve(w, fmt, fixed_lo))
        ranges = self._ranges_for(r.name)
        key = ("markers", TensorKind.WEIGHT, r.name, token, fmt, tuple(sorted(
            (m.value, v) for m, v in ranges.items())))
        markers = self._memo(key, w, lambda: weight_markers(w, fmt, ranges))
        label = f"current ({method_label(r.config.spec)})"
        if r.config.granularity.kind is GranularityKind.PER_TENSOR:
            return replace(base, markers=markers, current=marker_of(r.metrics),
                           current_label=label)
        # Per-channel / per-group has no single clip on this axis: show its SQNR as a level
        # the per-tensor curve can be compared with.
        level = Marker(float("nan"), float(r.metrics.sqnr_db), float(r.metrics.mse))
        return replace(
            base, markers=markers, current=None, current_level=level,
            current_label=f"current ({r.config.granularity.label}, {method_label(r.config.spec)})",
        )

    def _activation_curve(self) -> CurveData | None:
        r, s = self._activation, self._stats
        if r is None or s is None:
            return None
        fmt = r.config.fmt
        lo, _ = result_range(r)
        fixed_lo = 0.0 if fmt.symmetric else lo
        key = ("curve", TensorKind.ACTIVATION, r.name, id(s), fmt, fixed_lo)
        base = self._memo(key, s, lambda: activation_curve(s, fmt, fixed_lo))
        ranges = self._ranges_for(r.name)
        key = ("markers", TensorKind.ACTIVATION, r.name, id(s), fmt, tuple(sorted(
            (m.value, v) for m, v in ranges.items())))
        markers = self._memo(key, s, lambda: activation_markers(s, fmt, ranges))
        return replace(
            base,
            markers=markers,
            current=marker_of(r.metrics),
            current_label=f"current ({method_label(r.config.spec)})",
        )
