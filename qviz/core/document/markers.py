"""Where each automatic method would put a tensor's clip range: the error curve's markers.

Cached per tensor, method and format: Entropy and MSE search the histogram, and the markers
are redrawn on every click. Weights above `MAX_MARKER_WEIGHT` values get none (each method is
a pass over the whole tensor).
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
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import PerTensor
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats

MAX_MARKER_WEIGHT = 4_000_000
MARKER_METHODS = (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)

RangeKey = tuple[TensorKey, MethodSpec, str, bool, bool]


class MethodRanges:
    """The per-tensor range of every automatic method, cached until the statistics change."""

    def __init__(self) -> None:
        self._ranges: dict[RangeKey, tuple[float, float]] = {}
        # The last weight's range statistics, with the model they were read from: every
        # method's range comes from one pass over its values.
        self._weight: tuple[LoadedModel, str, TensorStats] | None = None

    def clear(self) -> None:
        self._ranges.clear()
        self._weight = None

    def ranges(
        self,
        model: LoadedModel,
        stats: CalibrationStats | None,
        tensor: QuantTensor,
        cfg: TensorConfig,
        element_count: float,
    ) -> dict[Method, tuple[float, float]]:
        out: dict[Method, tuple[float, float]] = {}
        key = tensor.key
        if key.kind is TensorKind.ACTIVATION and (
            stats is None or key.name not in stats.tensors or cfg.fmt.weight_only
        ):
            return out
        if key.kind is TensorKind.WEIGHT and element_count > MAX_MARKER_WEIGHT:
            return out
        fmt = cfg.fmt
        for method in MARKER_METHODS:
            spec = MethodSpec.of(method, cfg.spec.percentile)
            ckey = (key, spec, fmt.spec, fmt.symmetric, fmt.pow2_scale)
            if ckey not in self._ranges:
                try:
                    self._ranges[ckey] = self._method_range(model, stats, tensor, spec, cfg)
                except QvizError:
                    continue
            out[method] = self._ranges[ckey]
        return out


    def _method_range(
        self,
        model: LoadedModel,
        stats: CalibrationStats | None,
        tensor: QuantTensor,
        spec: MethodSpec,
        cfg: TensorConfig,
    ) -> tuple[float, float]:
        if tensor.kind is TensorKind.ACTIVATION:
            assert stats is not None
            lo, hi = choose_range(stats.tensors[tensor.name], spec, cfg.fmt)
            return float(lo), float(hi)
        if uses_stats(tensor.layer):  # a large weight: from its stored statistics
            result = analyze_tensor(model, stats, tensor, TensorConfig(spec, PerTensor(),
                                                                       cfg.fmt))
            return result.metrics.envelope
        held = self._weight
        if held is None or held[0] is not model or held[1] != tensor.name:
            held = (model, tensor.name,
                    range_stats(model.weight(tensor.name), tensor.layer.channel_axis))
            self._weight = held
        # As analysing the method would report it: the range its scale covers.
        low, high = scale_range(compute_qparams(*per_tensor_range(held[2], spec, cfg.fmt),
                                                cfg.fmt), cfg.fmt)
        return float(np.min(low)), float(np.max(high))
