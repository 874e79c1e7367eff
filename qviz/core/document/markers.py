"""Where each automatic method would put a tensor's clip range: the error curve's markers.

Cached per tensor, method and format: Entropy and MSE search the histogram, and the markers
are redrawn on every click. Weights above `MAX_MARKER_WEIGHT` values get none (each method is
a pass over the whole tensor). Asked to defer (a large model in the app), the ranges not
cached yet are searched by a worker (`Pending`) and none is returned until they all are.
"""

from __future__ import annotations

import numpy as np

from qviz.core.calibration.analysis import QuantTensor, TensorKey, analyze_tensor
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import scale_range
from qviz.core.calibration.weight_cache import uses_stats
from qviz.core.calibration.weights import per_tensor_range, range_stats
from qviz.core.errors import QvizError
from qviz.core.layerdata.deferred import Pending
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import PerTensor
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats

MAX_MARKER_WEIGHT = 4_000_000
MARKER_METHODS = (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)

RangeKey = tuple[TensorKey, MethodSpec, str, bool, bool]
# A method's range, or None where the method cannot range this tensor (no marker).
Found = dict[RangeKey, tuple[float, float] | None]


class MethodRanges:
    """The per-tensor range of every automatic method, cached until the statistics change."""

    def __init__(self) -> None:
        self._ranges: Found = {}
        # The last weight's range statistics, with the model they were read from: every
        # method's range comes from one pass over its values.
        self._weight: tuple[LoadedModel, str, TensorStats] | None = None
        # Bumped by clear(): ranges searched for older statistics are not stored.
        self._generation = 0

    def clear(self) -> None:
        self._ranges.clear()
        self._weight = None
        self._generation += 1

    def ranges(
        self,
        model: LoadedModel,
        stats: CalibrationStats | None,
        tensor: QuantTensor,
        cfg: TensorConfig,
        element_count: float,
        defer: list[Pending] | None = None,
    ) -> dict[Method, tuple[float, float]]:
        """Each method's range; `defer`: a list to add the search to, instead of searching
        here, when some range is not cached (then none is returned)."""
        out: dict[Method, tuple[float, float]] = {}
        key = tensor.key
        if key.kind is TensorKind.ACTIVATION and (
            stats is None or key.name not in stats.tensors or cfg.fmt.weight_only
        ):
            return out
        if key.kind is TensorKind.WEIGHT and element_count > MAX_MARKER_WEIGHT:
            return out
        fmt = cfg.fmt
        specs = {
            method: MethodSpec.of(method, cfg.spec.percentile) for method in MARKER_METHODS
        }
        ckeys = {m: (key, spec, fmt.spec, fmt.symmetric, fmt.pow2_scale)
                 for m, spec in specs.items()}
        missing = [m for m in MARKER_METHODS if ckeys[m] not in self._ranges]
        if missing and defer is not None:
            defer.append(self._pending(model, stats, tensor, cfg,
                                       {ckeys[m]: specs[m] for m in missing}))
            return out
        for method in missing:
            try:
                found = self._method_range(model, stats, tensor, specs[method], cfg)
            except QvizError:
                found = None
            self._ranges[ckeys[method]] = found
        for method in MARKER_METHODS:
            found = self._ranges[ckeys[method]]
            if found is not None:
                out[method] = found
        return out

    def _pending(
        self, model: LoadedModel, stats: CalibrationStats | None, tensor: QuantTensor,
        cfg: TensorConfig, wanted: dict[RangeKey, MethodSpec],
    ) -> Pending:
        """The search for `wanted` as a part a worker computes (it touches no cache)."""
        generation = self._generation

        def build() -> Found:
            held = None
            if tensor.kind is TensorKind.WEIGHT and not uses_stats(tensor.layer):
                held = range_stats(model.weight(tensor.name), tensor.layer.channel_axis)
            found: Found = {}
            for ckey, spec in wanted.items():
                try:
                    found[ckey] = method_range(model, stats, tensor, spec, cfg, held)
                except QvizError:
                    found[ckey] = None
            return found

        def store(found: Found) -> bool:
            if generation != self._generation:
                return False  # searched on statistics replaced since
            self._ranges.update(found)
            return True

        # Failing, no method has a range (as when each raises a QvizError): no markers.
        return Pending(("method ranges", tensor.key, cfg.fmt.spec, *wanted),
                       f"the method ranges of {tensor.name}", build, store,
                       lambda _exc: store(dict.fromkeys(wanted)))


    def _method_range(
        self,
        model: LoadedModel,
        stats: CalibrationStats | None,
        tensor: QuantTensor,
        spec: MethodSpec,
        cfg: TensorConfig,
    ) -> tuple[float, float]:
        held = None
        if tensor.kind is TensorKind.WEIGHT and not uses_stats(tensor.layer):
            kept = self._weight
            if kept is None or kept[0] is not model or kept[1] != tensor.name:
                kept = (model, tensor.name,
                        range_stats(model.weight(tensor.name), tensor.layer.channel_axis))
                self._weight = kept
            held = kept[2]
        return method_range(model, stats, tensor, spec, cfg, held)


def method_range(
    model: LoadedModel,
    stats: CalibrationStats | None,
    tensor: QuantTensor,
    spec: MethodSpec,
    cfg: TensorConfig,
    held: TensorStats | None,
) -> tuple[float, float]:
    """Where `spec` puts `tensor`'s per-tensor range; `held`: a small weight's range
    statistics (`range_stats`, one pass over its values shared by every method)."""
    if tensor.kind is TensorKind.ACTIVATION:
        assert stats is not None
        lo, hi = choose_range(stats.tensors[tensor.name], spec, cfg.fmt)
        return float(lo), float(hi)
    if uses_stats(tensor.layer):  # a large weight: from its stored statistics
        result = analyze_tensor(model, stats, tensor, TensorConfig(spec, PerTensor(), cfg.fmt))
        return result.metrics.envelope
    assert held is not None
    # As analysing the method would report it: the range its scale covers.
    low, high = scale_range(compute_qparams(*per_tensor_range(held, spec, cfg.fmt), cfg.fmt),
                            cfg.fmt)
    return float(np.min(low)), float(np.max(high))
