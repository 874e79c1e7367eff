"""Everything the layer view draws for one layer, computed once and cached by what it depends on.

`LayerPlots.layer_data` turns a layer's analysed weight and activation (``TensorResult``), the
exact weight values, the activation's statistics and each method's range into a frozen
`LayerData`: histograms, the effective clip band with its notes, the per-channel data, the
error curves with their method markers and the metrics columns. The app's layer view only
draws it. Curves, markers and channel data depend on the data, the format and (for
asymmetric curves) the lower bound, not on the method, so they are memoised: switching method
or finishing a drag redraws without recomputing them.

`preview_weight` / `preview_activation` are the metrics of a band being dragged (per-tensor
Manual), computed on every mouse move: exact for weights up to `EXACT_PREVIEW_MAX` values,
from a histogram above that (marked approximate; the exact numbers follow on release).

Asked to defer (`layer_data(..., defer=True)`, the app in a large model), the memoised parts
that are not cached yet are not computed here: they come back as `LayerData.pending`
(`deferred.Pending`), and the panel holding each says "computing…" until a worker has built
it and the next `layer_data` finds it in the cache; one whose build failed is not asked for
again, and its panel says why it is missing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import method_label
from qviz.core.calibration.methods import Method
from qviz.core.calibration.metrics import TensorMetrics, exact_metrics, histogram_metrics
from qviz.core.layerdata.activation_channels import ActivationChannels, activation_channels
from qviz.core.layerdata.before import Before, before_column
from qviz.core.layerdata.channels import ChannelData, channel_data
from qviz.core.layerdata.columns import ColumnData, PinnedColumn
from qviz.core.layerdata.curves import (
    CurveData,
    Marker,
    activation_curve,
    activation_markers,
    marker_of,
    weight_curve,
    weight_markers,
)
from qviz.core.layerdata.deferred import COMPUTING, Pending, failed_text
from qviz.core.quant.formats import GranularityKind, NumberFormat, PerGroup, PerTensor
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.tensor_stats import TensorStats, compute_stats
from qviz.core.text import fmt_num, fmt_range

# Weight histograms are rebuilt from the exact values: enough bins to show shape and tails,
# few enough that each bin holds several values for small layers.
MIN_WEIGHT_BINS, MAX_WEIGHT_BINS = 64, 512
# Exact weight metrics cost ~0.6 ms per 100k values (bench_histogram_redraw.py): up to this
# many values a drag step stays within a frame or two; bigger weights preview from a histogram.
EXACT_PREVIEW_MAX = 2_000_000
# Memoised curves, markers and channel data: a few layers' worth, so flipping between layers
# is instant.
CACHE_ENTRIES = 64
_T = TypeVar("_T")

MethodRanges = Mapping[Method, tuple[float, float]]


def weight_histogram(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    """Histogram (edges, counts) of a weight for display, from its statistics' histogram.

    About 2·√n bins (64 to 512) for n values: enough to show shape and tails, few enough that
    each bin holds several values of a small layer. Each display bin is the sum of a power of
    two of adjacent statistics bins, so the counts are exact unions of the statistics'
    counts and the weight's values are not read again (a 100 M-value weight draws in
    milliseconds once its statistics exist)."""
    h = stats.histogram
    target = float(np.clip(2 * np.sqrt(max(stats.count, 1)), MIN_WEIGHT_BINS, MAX_WEIGHT_BINS))
    factor = 1
    while h.bins % (2 * factor) == 0 and h.bins / (2 * factor) >= target / math.sqrt(2):
        factor *= 2
    counts = h.counts.reshape(-1, factor).sum(axis=1)
    return np.linspace(h.lo, h.hi, counts.size + 1), counts


@dataclass(frozen=True, eq=False)
class WeightPanel:
    """The weight half of the layer view."""

    result: TensorResult
    values: np.ndarray             # the exact weight (previews of a dragged band use it)
    # The weight's statistics (2048-bin histogram) and the histogram drawn from them; None
    # while they are computed (a large weight without stored statistics).
    stats: TensorStats | None
    edges: np.ndarray | None
    counts: np.ndarray | None
    band: tuple[float, float]      # effective clip range (envelope when not per-tensor)
    per_tensor: bool
    note: str                      # what the band means when it is an envelope
    scales_text: str               # "32 scales 0.001 … 0.004" when not per-tensor
    channels: ChannelData | None
    channels_missing: str          # why there is no channel view ("" when there is one)
    curve: CurveData | None        # None while it is computed
    column: ColumnData
    pinned_band: tuple[float, float] | None = None  # the pinned configuration's ("A")
    # Why the histogram (without statistics) or the curve is missing: "" while computed.
    histogram_missing: str = ""
    curve_missing: str = ""
    # Without its transforms (a faint overlay): histogram and clip band, None when untouched.
    before_edges: np.ndarray | None = None
    before_counts: np.ndarray | None = None
    before_band: tuple[float, float] | None = None


@dataclass(frozen=True, eq=False)
class ActivationPanel:
    """The activation half of the layer view."""

    result: TensorResult
    stats: TensorStats
    band: tuple[float, float]
    note: str
    curve: CurveData | None        # None while it is computed
    column: ColumnData
    pinned_band: tuple[float, float] | None = None
    # Without its transforms (a faint overlay): statistics and clip band, None when untouched.
    before_stats: TensorStats | None = None
    before_band: tuple[float, float] | None = None
    # The input channels (the activation channel view), and without the transforms.
    channels: ActivationChannels | None = None
    before_channels: ActivationChannels | None = None
    channels_missing: str = ""  # why there is no input-channel view ("" when there is one)
    #: The evaluation data's histogram, scaled to the calibration data's total (to compare
    #: shapes), and the range the method would choose on it alone.
    eval_hist: tuple[np.ndarray, np.ndarray] | None = None
    eval_band: tuple[float, float] | None = None
    #: (samples, lo, hi) of the chosen range as calibration data grew.
    convergence: tuple[tuple[int, float, float], ...] = ()
    convergence_waiting: bool = False  # still being computed
    curve_missing: str = ""  # why the error curve is missing ("" while it is computed)


@dataclass(frozen=True, eq=False)
class LayerData:
    """One layer as the layer view draws it; a missing half says why it is missing."""

    weight: WeightPanel | None
    activation: ActivationPanel | None
    weight_missing: str = ""
    activation_missing: str = ""
    #: Parts still to compute (only when asked to defer); their panels say "computing…".
    pending: tuple[Pending, ...] = ()


def _group_word(result: TensorResult) -> str:
    return "group" if isinstance(result.config.granularity, PerGroup) else "channel"


def _pinned(r: TensorResult | None) -> PinnedColumn | None:
    return None if r is None else PinnedColumn(r.config.label, r.metrics)


def weight_column(r: TensorResult, pinned: TensorResult | None = None) -> ColumnData:
    cm = r.channel_metrics
    sq = None if cm is None else np.asarray(cm.sqnr_db)
    return ColumnData(r.name, r.config.label, r.metrics, sq, _group_word(r),
                      pinned=_pinned(pinned), layer=r.layer.name)


def preview_label(fmt: NumberFormat, lo: float, hi: float) -> str:
    return f"{fmt.label}, per-tensor, manual {fmt_range(lo, hi)}"


def preview_weight(
    name: str, w: np.ndarray, fmt: NumberFormat, lo: float, hi: float, *, exact: bool,
    stats: Callable[[], TensorStats] | None = None,
) -> ColumnData:
    """Metrics of a dragged per-tensor weight range. Exact over every value, except while a
    huge weight (over EXACT_PREVIEW_MAX values) is being dragged: then from a 2048-bin
    histogram of the weight (~1 ms, marked approximate). ``stats`` supplies that histogram
    (cached by the caller); without it one is computed."""
    approx = not exact and w.size > EXACT_PREVIEW_MAX
    m: TensorMetrics
    if approx:
        s = stats() if stats is not None else compute_stats(w, name)
        m = histogram_metrics(s, lo, hi, fmt)
    else:
        m = exact_metrics(w, compute_qparams(lo, hi, fmt), fmt)
    return ColumnData(name, preview_label(fmt, lo, hi), m, preview=True, approximate=approx)


def preview_activation(
    name: str, stats: TensorStats, fmt: NumberFormat, lo: float, hi: float
) -> ColumnData:
    """Metrics of a dragged activation range, from its calibration histogram."""
    m = histogram_metrics(stats, lo, hi, fmt)
    return ColumnData(name, preview_label(fmt, lo, hi), m, preview=True)


class LayerPlots:
    """Builds `LayerData` and memoises what is costly (see the module docstring).

    Arrays and statistics are keyed by identity and kept alive in the cache, so an id() in a
    key can never be reused by another object while the entry lives.
    """

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._cache: OrderedDict[tuple, tuple[object, object]] = OrderedDict()
        # While deferring: the parts asked for and not cached, by key (else None).
        self._pending: dict[tuple, Pending] | None = None
        # Parts whose build failed on a worker, by key: what their panel says instead.
        self._failed: OrderedDict[tuple, str] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()
        self._failed.clear()

    def memo(self, key: tuple, source: object, build: Callable[[], _T]) -> _T:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[1]  # type: ignore[return-value]  # stored by this method for key
        value = build()
        self._store(key, source, value)
        return value

    def lazy(self, key: tuple, source: object, build: Callable[[], _T], what: str) -> _T | None:
        """`memo`, except that while deferring a part not cached yet is not built here: it
        is noted as pending (`what` names it) and None stands for it."""
        hit = self._cache.get(key)
        if hit is not None or self._pending is None:
            return self.memo(key, source, build)
        if key not in self._pending and key not in self._failed:
            self._pending[key] = Pending(
                key, what, build, lambda value: self._store(key, source, value),
                lambda exc: self._fail(key, failed_text(what, exc)),
            )
        return None

    def missing(self, key: tuple) -> str:
        """What the panel of a part `lazy` returned None for says: why it failed, or
        "computing…"."""
        return self._failed.get(key, COMPUTING)

    def _fail(self, key: tuple, text: str) -> bool:
        self._failed[key] = text
        while len(self._failed) > self._entries:
            self._failed.popitem(last=False)
        return True  # the view draws again and says why

    def _store(self, key: tuple, source: object, value: object) -> bool:
        self._cache[key] = (source, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return True

    @contextmanager
    def _deferring(self, on: bool) -> Iterator[dict[tuple, Pending]]:
        pending: dict[tuple, Pending] = {}
        self._pending = pending if on else None
        try:
            yield pending
        finally:
            self._pending = None

    def weight_stats(self, name: str, w: np.ndarray) -> TensorStats:
        """The weight's statistics (2048-bin histogram, exact min/max): the one pass over its
        values that the histogram, the error curve and markers of a large weight, and the
        previews of a dragged band all draw from."""
        return self.memo(("weight stats", name, id(w)), w, lambda: compute_stats(w, name))

    def _lazy_weight_stats(self, name: str, w: np.ndarray) -> TensorStats | None:
        return self.lazy(("weight stats", name, id(w)), w, lambda: compute_stats(w, name),
                         f"the histogram of {name}")

    # ------------------------------------------------------------------ assembly
    def layer_data(
        self,
        weight: TensorResult | None,
        weight_values: np.ndarray | None,
        activation: TensorResult | None,
        activation_stats: TensorStats | None,
        weight_ranges: MethodRanges,
        activation_ranges: MethodRanges,
        *,
        weight_missing: str = "this layer has no weight",
        activation_missing: str = "not calibrated",
        pinned_weight: TensorResult | None = None,
        pinned_activation: TensorResult | None = None,
        weight_before: Before | None = None,
        activation_before: Before | None = None,
        weight_stats: TensorStats | None = None,
        weight_stats_waiting: bool = False,
        defer: bool = False,
    ) -> LayerData:
        """`pinned_*`: the same tensors under a configuration pinned for comparison ("A");
        `*_before`: the same tensors without their transforms (faint overlays).
        `weight_stats`: the weight's statistics when the caller holds them (else computed
        here once per weight and kept; `weight_stats_waiting`: they are on their way, draw
        the weight without them for now). `defer`: leave the parts not cached yet to a
        worker (`LayerData.pending`, see the module docstring)."""
        with self._deferring(defer) as pending:
            data = self._layer_data(
                weight, weight_values, activation, activation_stats, weight_ranges,
                activation_ranges, weight_missing, activation_missing, pinned_weight,
                pinned_activation, weight_before, activation_before, weight_stats,
                weight_stats_waiting,
            )
        return replace(data, pending=tuple(pending.values())) if pending else data

    def _layer_data(
        self,
        weight: TensorResult | None,
        weight_values: np.ndarray | None,
        activation: TensorResult | None,
        activation_stats: TensorStats | None,
        weight_ranges: MethodRanges,
        activation_ranges: MethodRanges,
        weight_missing: str,
        activation_missing: str,
        pinned_weight: TensorResult | None,
        pinned_activation: TensorResult | None,
        weight_before: Before | None,
        activation_before: Before | None,
        weight_stats: TensorStats | None,
        weight_stats_waiting: bool,
    ) -> LayerData:
        wpanel = None
        if weight is not None and weight_values is not None:
            stats = weight_stats
            if stats is None and not weight_stats_waiting:
                stats = self._lazy_weight_stats(weight.name, weight_values)
            wpanel = self._weight_panel(weight, weight_values, stats, weight_ranges)
            if pinned_weight is not None:
                wpanel = replace(
                    wpanel, pinned_band=pinned_weight.metrics.envelope,
                    column=weight_column(weight, pinned_weight),
                )
            wpanel = self._with_weight_before(wpanel, weight_before)
        apanel = None
        if activation is not None and activation_stats is not None:
            apanel = self._activation_panel(activation, activation_stats, activation_ranges)
            if pinned_activation is not None:
                apanel = replace(
                    apanel, pinned_band=pinned_activation.metrics.envelope,
                    column=replace(apanel.column, pinned=_pinned(pinned_activation)),
                )
            before_col = before_column(activation, activation_before)
            if before_col is not None and activation_before is not None:
                bstats, bres = activation_before.stats, activation_before.result
                bchannels = None
                if bstats is not None and bstats is not activation_stats:
                    key = ("act channels before", bres.name, id(bstats), bres.config.fmt)
                    bchannels = self.lazy(key, bstats, lambda: activation_channels(
                        bstats, bres.qparams, bres.config.fmt, clip=bres.metrics.envelope),
                        f"the input channels of {bres.name} before its transforms")
                apanel = replace(
                    apanel, column=replace(apanel.column, before=before_col),
                    before_stats=bstats if bstats is not activation_stats else None,
                    before_band=bres.metrics.envelope, before_channels=bchannels,
                )
        return LayerData(wpanel, apanel, weight_missing, activation_missing)

    def _with_weight_before(self, panel: WeightPanel, before: Before | None) -> WeightPanel:
        column = before_column(panel.result, before)
        if column is None:
            return panel
        panel = replace(panel, column=replace(panel.column, before=column))
        if before is None or before.values is None or before.values is panel.values:
            return panel
        bstats = self._lazy_weight_stats(before.result.name, before.values)
        if bstats is None:
            return panel
        edges, counts = self.memo(("hist", panel.result.name, id(bstats)), bstats,
                                  lambda: weight_histogram(bstats))
        return replace(panel, before_edges=edges, before_counts=counts,
                       before_band=before.result.metrics.envelope)

    def _weight_panel(
        self, r: TensorResult, w: np.ndarray, stats: TensorStats | None, ranges: MethodRanges
    ) -> WeightPanel:
        edges = counts = None
        if stats is not None:
            edges, counts = self.memo(("hist", r.name, id(stats)), stats,
                                      lambda: weight_histogram(stats))
        band = r.metrics.envelope
        gran = r.config.granularity
        per_tensor = isinstance(gran, PerTensor)
        note = scales_text = ""
        if not per_tensor:
            n = int(np.asarray(r.qparams.scale).size)
            note = (
                f"{gran.label}: the band is the envelope of {n} {_group_word(r)} ranges (each "
                f"shown in the channel view). Dragging it sets one per-tensor Manual range."
            )
            scales = np.asarray(r.qparams.scale, dtype=np.float64)
            scales_text = (
                f"{scales.size} scales {fmt_num(scales.min())} … {fmt_num(scales.max())}"
            )
        channels, missing = self._channels(r, w, band)
        if stats is None:  # the histogram and the curve wait for (or lack) the statistics
            curve, hist_missing = None, self.missing(("weight stats", r.name, id(w)))
            curve_missing = hist_missing
        else:
            curve, curve_missing = self._weight_curve(r, w, stats, ranges)
            hist_missing = ""
        return WeightPanel(
            r, w, stats, edges, counts, band, per_tensor, note, scales_text, channels, missing,
            curve, weight_column(r), histogram_missing=hist_missing, curve_missing=curve_missing,
        )

    def _channels(
        self, r: TensorResult, w: np.ndarray, clip: tuple[float, float]
    ) -> tuple[ChannelData | None, str]:
        axis = r.layer.channel_axis
        if axis is None or w.ndim < 1:
            return None, "this weight has no output-channel axis"
        qp = r.qparams
        # Per-group SQNR fake-quantizes the whole weight: reuse it while the qparams stand.
        key = (
            "channels", r.name, id(w), r.config.fmt, r.config.granularity, clip,
            hash(np.asarray(qp.scale).tobytes()), hash(np.asarray(qp.zero_point).tobytes()),
        )
        build = lambda: channel_data(  # noqa: E731  # built here or on a worker
            w, qp, r.config.fmt, axis, r.layer.reduction_axis,
            r.config.granularity.kind, r.channel_metrics, clip,
        )
        # From the analysis's own per-channel numbers it costs nothing; fake-quantizing the
        # weight (per-tensor exact, per-group) is a pass over its values.
        cheap = r.channel_metrics is not None and r.config.granularity.kind is not (
            GranularityKind.PER_GROUP
        )
        if cheap:
            return self.memo(key, w, build), ""
        data = self.lazy(key, w, build, f"the channels of {r.name}")
        return data, self.missing(key) if data is None else ""

    def _weight_curve(
        self, r: TensorResult, w: np.ndarray, stats: TensorStats, ranges: MethodRanges
    ) -> tuple[CurveData | None, str]:
        """The curve with its markers, or None and what its panel says instead."""
        fmt = r.config.fmt
        lo, _hi = r.metrics.envelope
        fixed_lo = 0.0 if fmt.symmetric else lo
        # Keyed by the statistics too: a large weight's come from its stored WeightStats.
        key = ("curve", "weight", r.name, id(w), id(stats), fmt, fixed_lo)
        base = self.lazy(key, (w, stats), lambda: weight_curve(w, fmt, fixed_lo, stats),
                         f"the error curve of {r.name}")
        mkey = ("markers", "weight", r.name, id(w), id(stats), fmt, _ranges_key(ranges))
        markers = self.lazy(mkey, (w, stats), lambda: weight_markers(w, fmt, ranges, stats),
                            f"the method markers of {r.name}")
        if base is None:
            return None, self.missing(key)
        if markers is None:
            markers = {}
            base = replace(base, note=f"{base.note}; {self._markers_missing(mkey)}")
        label = f"current ({method_label(r.config.spec)})"
        if r.config.granularity.kind is GranularityKind.PER_TENSOR:
            return replace(base, markers=markers, current=marker_of(r.metrics),
                           current_label=label), ""
        # Per-channel / per-group has no single clip on this axis: show its SQNR as a level
        # the per-tensor curve can be compared with.
        level = Marker(float("nan"), float(r.metrics.sqnr_db), float(r.metrics.mse))
        return replace(
            base, markers=markers, current=None, current_level=level,
            current_label=(
                f"current ({r.config.granularity.label}, {method_label(r.config.spec)})"
            ),
        ), ""

    def _markers_missing(self, key: tuple) -> str:
        text = self.missing(key)
        return f"method markers {COMPUTING}" if text == COMPUTING else text

    def _activation_panel(
        self, r: TensorResult, s: TensorStats, ranges: MethodRanges
    ) -> ActivationPanel:
        notes = []
        if s.dominated_by_extremes:
            notes.append(
                f"{s.n_extreme} extreme values (|x| ≥ 1e30, e.g. mask fills) are left out of "
                f"the histogram; MinMax would be ruined by them."
            )
        fmt = r.config.fmt
        band = r.metrics.envelope
        fixed_lo = 0.0 if fmt.symmetric else band[0]
        key = ("curve", "activation", r.name, id(s), fmt, fixed_lo)
        base = self.lazy(key, s, lambda: activation_curve(s, fmt, fixed_lo),
                         f"the error curve of {r.name}")
        mkey = ("markers", "activation", r.name, id(s), fmt, _ranges_key(ranges))
        markers = self.lazy(mkey, s, lambda: activation_markers(s, fmt, ranges),
                            f"the method markers of {r.name}")
        curve, curve_missing = None, self.missing(key)
        if base is not None:
            curve_missing = ""
            if markers is None:
                markers = {}
                base = replace(base, note=f"{base.note}; {self._markers_missing(mkey)}")
            curve = replace(
                base, markers=markers, current=marker_of(r.metrics),
                current_label=f"current ({method_label(r.config.spec)})",
            )
        column = ColumnData(r.name, r.config.label, r.metrics, layer=r.layer.name)
        qp = r.qparams
        ckey = ("act channels", r.name, id(s), fmt, band,
                hash(np.asarray(qp.scale).tobytes()), hash(np.asarray(qp.zero_point).tobytes()))
        channels = self.lazy(ckey, s, lambda: activation_channels(s, qp, fmt, clip=band),
                             f"the input channels of {r.name}")
        # None also when the statistics hold no channels (the view says so).
        waiting = (self._pending is not None and ckey in self._pending) or ckey in self._failed
        return ActivationPanel(r, s, band, " ".join(notes), curve, column, channels=channels,
                               channels_missing=self.missing(ckey) if waiting else "",
                               curve_missing=curve_missing)


def _ranges_key(ranges: MethodRanges) -> tuple:
    return tuple(sorted((m.value, v) for m, v in ranges.items()))
