"""Where each automatic method would put a tensor's clip range: the error curve's markers.

Cached per tensor, method and format: Entropy and MSE search the histogram, and the markers
are redrawn on every click. Weights above `MAX_MARKER_WEIGHT` values get none (each method is
a pass over the whole tensor).
"""

from __future__ import annotations

from qviz.core.calibration.analysis import QuantTensor, TensorKey, analyze_tensor
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import PerTensor
from qviz.core.stats.collect import CalibrationStats

MAX_MARKER_WEIGHT = 4_000_000
MARKER_METHODS = (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)

RangeKey = tuple[TensorKey, MethodSpec, str, bool, bool]


class MethodRanges:
    """The per-tensor range of every automatic method, cached until the statistics change."""

    def __init__(self) -> None:
        self._ranges: dict[RangeKey, tuple[float, float]] = {}

    def clear(self) -> None:
        self._ranges.clear()

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
                    self._ranges[ckey] = _method_range(model, stats, tensor, spec, cfg)
                except QvizError:
                    continue
            out[method] = self._ranges[ckey]
        return out


def _method_range(
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
    result = analyze_tensor(model, None, tensor, TensorConfig(spec, PerTensor(), cfg.fmt))
    return result.metrics.envelope
