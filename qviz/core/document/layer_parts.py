"""The document's layer view: what it draws for the selection, now or part by part.

A part of `Document` kept apart by concern (like the transforms and the A/B comparison).
`layer_data()` measures the selected layer's weight and activation and assembles everything
the layer view draws (`qviz.core.layerdata.layer`). A large weight is drawn from the
statistics it was analysed from (its `WeightStats`' tensor histogram: no pass over its
values). With `defer=True` (the app, on a model holding a weight of `DEFER_MIN_VALUES` values
or more) what is not cached yet — the error curves, the method ranges and markers, a pass over
a weight without kept statistics, fake-quantized channels, the input channels, the evaluation
data's range and the convergence — comes back as `LayerData.pending` instead of being
computed now; a worker builds those parts and hands
them to `accept_parts`, which stores them, and `parts_ready` announces them (`events.parts`):
the view draws again, from the caches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from qviz.core.calibration.analysis import QuantTensor, TensorKey, TensorResult
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method
from qviz.core.calibration.weight_cache import kept_weight_stats, uses_stats, weight_stats
from qviz.core.document.events import DocumentEvents
from qviz.core.document.markers import MethodRanges
from qviz.core.document.represent import EvaluationStats, with_evaluation_view
from qviz.core.document.tensors import TensorIndex
from qviz.core.layerdata.before import Before
from qviz.core.layerdata.deferred import DEFER_MIN_VALUES, ComputedPart, Pending
from qviz.core.layerdata.layer import LayerData, LayerPlots
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.transforms.plan import TransformPlan

__all__ = ["LayerParts"]

Ranges = dict[Method, tuple[float, float]]


class LayerParts:
    """Provided to `Document` (see the module docstring)."""

    events: DocumentEvents
    model: LoadedModel | None
    stats: CalibrationStats | None
    selection: TensorKey | None
    eval_stats: EvaluationStats
    _index: TensorIndex
    _plots: LayerPlots
    _markers: MethodRanges
    _largest: tuple[LoadedModel, int] | None = None  # the model's largest weight (values)
    # Large weights whose statistics failed on a worker (id of the model, weight): cleared
    # with the model.
    _stats_failed: set[tuple[int, str]]

    # Provided by the document and its other parts.
    def visible_keys(self) -> list[TensorKey]:
        raise NotImplementedError

    def analyze(self, key: TensorKey) -> TensorResult | None:
        raise NotImplementedError

    def error(self, key: TensorKey) -> str | None:
        raise NotImplementedError

    def can_analyze(self, key: TensorKey) -> bool:
        raise NotImplementedError

    def config_for(self, key: TensorKey) -> TensorConfig:
        raise NotImplementedError

    def element_count(self, key: TensorKey) -> float:
        raise NotImplementedError

    def measured_on(self, key: TensorKey) -> tuple[np.ndarray | None, TensorStats | None]:
        raise NotImplementedError

    def transform_plan(self) -> TransformPlan:
        raise NotImplementedError

    def planned_tensor(self, plan: TransformPlan, key: TensorKey) -> QuantTensor:
        raise NotImplementedError

    def pinned_result(self, key: TensorKey) -> TensorResult | None:
        raise NotImplementedError

    def before(self, key: TensorKey) -> Before | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the view's data
    def layer_data(self, *, defer: bool = False) -> LayerData | None:
        """What the layer view draws for the selection (measuring what it needs now);
        `defer`: in a large model, leave what is not cached to a worker (see the module
        docstring)."""
        if self.model is None or self.selection is None or self.selection not in self._index:
            return None
        defer = defer and self.layer_is_large()
        pending: list[Pending] | None = [] if defer else None
        weight = activation = None
        weight_values = act_stats = held = None
        waiting = False  # for a large weight's statistics (read or computed by a worker)
        w_ranges: Ranges = {}
        a_ranges: Ranges = {}
        w_missing, a_missing = "this layer has no weight", "not calibrated"
        for key in self.visible_keys():
            result = self.analyze(key)
            error = self.error(key)
            if key.kind is TensorKind.WEIGHT:
                weight = result
                w_missing = error or w_missing
                if result is not None:
                    weight_values = self.measured_on(key)[0]
                    held, waiting = self.weight_view_stats(key, pending)
                    w_ranges = self.method_ranges(key, pending)
            else:
                activation = result
                if self.stats is not None:
                    act_stats = self.measured_on(key)[1]
                    a_missing = error or "no activation statistics for this layer"
                if result is not None:
                    a_ranges = self.method_ranges(key, pending)
        pinned = {k.kind: self.pinned_result(k) for k in self.visible_keys()}
        before = {k.kind: self.before(k) for k in self.visible_keys()}  # faint overlays
        data = self._plots.layer_data(
            weight, weight_values, activation, act_stats, w_ranges, a_ranges,
            weight_missing=w_missing, activation_missing=a_missing,
            pinned_weight=pinned.get(TensorKind.WEIGHT),
            pinned_activation=pinned.get(TensorKind.ACTIVATION),
            weight_before=before.get(TensorKind.WEIGHT),
            activation_before=before.get(TensorKind.ACTIVATION),
            weight_stats=held, weight_stats_waiting=waiting, defer=defer,
        )
        if pending:
            data = replace(data, pending=(*pending, *data.pending))
        if data.activation is None or data.activation.result.context:
            return data  # a rescaled activation is not comparable with the evaluation data's
        key = TensorKey(data.activation.result.name, TensorKind.ACTIVATION)
        cfg = self.config_for(key)
        more: list[Pending] | None = [] if defer else None
        found = self.eval_stats.compare(key, cfg, self.stats, data.activation.result,
                                        eval_alone=True, defer=more)
        points = self.eval_stats.convergence(key, cfg, self.stats, more)
        data = with_evaluation_view(data, self.eval_stats.stats, found, points)
        return replace(data, pending=(*data.pending, *more)) if more else data

    def layer_is_large(self) -> bool:
        """Whether the layer view is drawn part by part: the model holds a weight of
        `DEFER_MIN_VALUES` values or more (then every layer's slow parts, an activation's
        searches too, are worth a worker: together they take longer than a frame)."""
        model = self.model
        if model is None:
            return False
        if self._largest is None or self._largest[0] is not model:
            sizes = [math.prod(int(d) for d in layer.weight_shape) for layer in model.layers
                     if layer.weight is not None and layer.weight_shape]
            self._largest = (model, max(sizes, default=0))
        return self._largest[1] >= DEFER_MIN_VALUES

    def weight_view_stats(
        self, key: TensorKey, defer: list[Pending] | None = None
    ) -> tuple[TensorStats | None, bool]:
        """The statistics a large weight is analysed from (its `WeightStats`' tensor
        histogram): the layer view draws its histogram and error curve from them, without
        reading the weight. (None, False) for a smaller weight, or one statistics cannot
        describe (the view computes its own). `defer`: when they are not kept yet (read
        from the statistics file or computed), add that to this list and return (None,
        True) rather than wait."""
        if self.model is None or key.kind is not TensorKind.WEIGHT:
            return None, False
        plan = self.transform_plan()
        layer = self.planned_tensor(plan, key).layer
        if layer.weight != key.name or not uses_stats(layer):
            return None, False
        found, ws = kept_weight_stats(plan.model, layer)
        if not found and defer is not None:
            model, stats = plan.model, plan.stats
            # weight_stats keeps what it reads or computes: that is the part's store.
            if (id(model), key.name) in self._stats_failed:
                # Read or computed, they failed: the view takes its own pass (the histogram
                # and curve say why if that fails too).
                return None, False
            failed = (id(model), key.name)

            def on_error(_exc: Exception) -> bool:
                self._stats_failed.add(failed)
                return True  # the view draws again, from a pass of its own

            defer.append(Pending(
                ("weight statistics", id(model), key.name), f"the statistics of {key.name}",
                lambda: weight_stats(model, layer, stats), lambda _: True, on_error,
            ))
            return None, True
        if not found:
            ws = weight_stats(plan.model, layer, plan.stats)
        return (None if ws is None else ws.tensor), False

    def method_ranges(
        self, key: TensorKey, defer: list[Pending] | None = None
    ) -> Ranges:
        """Where each automatic method would put the tensor's clip range (the markers);
        `defer`: add the search to this list rather than search now (none returned then)."""
        if key not in self._index or not self.can_analyze(key) or self.model is None:
            return {}
        plan = self.transform_plan()  # the markers follow the transformed tensor
        return self._markers.ranges(
            plan.model, plan.stats, self.planned_tensor(plan, key), self.config_for(key),
            self.element_count(key), defer,
        )

    def accept_parts(self, parts: Iterable[ComputedPart]) -> int:
        """Parts of the view a worker computed: each is stored where the view reads it,
        unless its inputs were replaced meanwhile; a part whose build failed stores what
        stands for it (its `on_error`: the panel says why it is missing). Returns how many
        were stored; `parts_ready` then announces them."""
        return sum(1 for part in parts if _store(part))

    def parts_ready(self) -> None:
        """Announce the parts stored (`events.parts`): the layer view draws again."""
        self.events.parts.emit()


def _store(part: ComputedPart) -> bool:
    if part.error is None:
        return part.pending.store(part.value)
    return part.pending.on_error is not None and part.pending.on_error(part.error)
