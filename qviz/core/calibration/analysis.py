"""From statistics and a configuration to per-tensor quantization parameters and metrics.

Everything here is a pure function of the stored statistics (activations) or the exact weight
tensor, so the GUI can call `analyze_tensor` on every click without running the model.
Activations are quantized per tensor: that is what ONNX Runtime's INT8 kernels accept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.imported_analysis import imported_activation, imported_weight
from qviz.core.calibration.methods import Method, choose_range
from qviz.core.calibration.metrics import TensorMetrics, histogram_metrics
from qviz.core.calibration.weight_cache import uses_stats, weight_stats
from qviz.core.calibration.weight_groups import analyze_weight_groups
from qviz.core.calibration.weights import ChannelMetrics, analyze_weight
from qviz.core.calibration.weights_from_stats import analyze_weight_stats, handles
from qviz.core.errors import QvizError
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.quant.formats import PerGroup
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.stats.collect import CalibrationStats
from qviz.core.transforms.weight_transforms import AppliedWeight, apply_weight_transforms


class TensorKey(NamedTuple):
    """Names one quantizable tensor: a name can be both a weight and an activation in odd
    graphs, so the kind is part of the key."""

    name: str
    kind: TensorKind


@dataclass(frozen=True)
class QuantTensor:
    """One tensor qviz can quantize: a layer's weight or an activation feeding it."""

    name: str
    kind: TensorKind
    layer: Layer

    @property
    def key(self) -> TensorKey:
        return TensorKey(self.name, self.kind)


@dataclass(frozen=True)
class TensorResult:
    name: str
    layer: Layer
    kind: TensorKind
    config: TensorConfig
    qparams: QParams
    metrics: TensorMetrics
    channel_metrics: ChannelMetrics | None = None
    #: GPTQ's rounded values and the corrected bias, when the weight's settings ask for them.
    applied: AppliedWeight | None = None
    #: What the result depends on beyond its own settings: the channel rescalings of other
    #: tensors' settings that touch it (`TransformPlan.context`; "" for none).
    context: str = ""


def quant_tensors(model: LoadedModel) -> Iterator[QuantTensor]:
    """Each quantizable tensor once, in graph order.

    An activation feeding several layers is listed with its first consumer.
    """
    seen: set[str] = set()
    for layer in model.layers:
        for act in layer.activations:
            if act not in seen:
                seen.add(act)
                yield QuantTensor(act, TensorKind.ACTIVATION, layer)
        if layer.weight is not None and layer.weight not in seen:
            seen.add(layer.weight)
            yield QuantTensor(layer.weight, TensorKind.WEIGHT, layer)


def check_stats_match(model: LoadedModel, stats: CalibrationStats) -> None:
    """Statistics from another model would silently give wrong answers: refuse them."""
    if stats.model_sha256 != model.sha256:
        raise QvizError(
            f"the statistics were collected on a different model file "
            f"({stats.model_source}, sha256 {stats.model_sha256[:12]}…), not {model.source}"
        )


def analyze_tensor(
    model: LoadedModel, stats: CalibrationStats | None, tensor: QuantTensor, cfg: TensorConfig
) -> TensorResult:
    """Quantization parameters and error metrics of one tensor under `cfg` (weights need no
    statistics; an activation without them is a QvizError).

    An imported setting is analysed exactly against the model's own scales
    (``imported_analysis``); a large weight (``weight_cache.uses_stats``) per tensor or per
    channel from its statistics (``weights_from_stats``), any other from its values
    (``weights``)."""
    imported = cfg.spec.method is Method.IMPORTED
    if tensor.kind is TensorKind.WEIGHT:
        layer = tensor.layer
        large = not imported and uses_stats(layer)
        ws = weight_stats(model, layer, stats) if large else None
        if imported:
            analysis = imported_weight(
                model.weight(tensor.name), layer.channel_axis, cfg.spec, cfg.fmt
            )
        elif ws is not None and handles(ws, cfg.granularity):
            analysis = analyze_weight_stats(ws, cfg.spec, cfg.granularity, cfg.fmt)
        elif (
            large
            and isinstance(cfg.granularity, PerGroup)
            and layer.channel_axis is not None
            and layer.reduction_axis is not None
        ):
            analysis = analyze_weight_groups(
                model.weight(tensor.name),
                layer.channel_axis,
                layer.reduction_axis,
                cfg.spec,
                cfg.granularity,
                cfg.fmt,
            )
        else:
            analysis = analyze_weight(
                model.weight(tensor.name),
                layer.channel_axis,
                layer.reduction_axis,
                cfg.spec,
                cfg.granularity,
                cfg.fmt,
            )
        if not imported and cfg.transforms.changes_weight:  # GPTQ, bias correction
            metrics, channels, applied = apply_weight_transforms(
                model, stats, layer, model.weight(tensor.name), analysis, cfg
            )
            return TensorResult(tensor.name, layer, tensor.kind, cfg, analysis.qparams,
                                metrics, channels, applied)
        return TensorResult(
            tensor.name, layer, tensor.kind, cfg, analysis.qparams, analysis.metrics,
            analysis.channel_metrics,
        )
    try:
        if stats is None:
            raise KeyError(tensor.name)
        tstats = stats.tensors[tensor.name]
    except KeyError:
        raise QvizError(f"no calibration statistics for activation '{tensor.name}'") from None
    if cfg.fmt.weight_only:
        raise QvizError(
            f"{cfg.fmt.spec.upper()} is a weight-only format; activations need an integer or "
            "FP8 format"
        )
    if imported:
        qparams, metrics = imported_activation(tstats, cfg.spec, cfg.fmt)
        return TensorResult(tensor.name, tensor.layer, tensor.kind, cfg, qparams, metrics)
    lo, hi = choose_range(tstats, cfg.spec, cfg.fmt)
    qparams = compute_qparams(lo, hi, cfg.fmt)
    metrics = histogram_metrics(tstats, lo, hi, cfg.fmt)
    return TensorResult(tensor.name, tensor.layer, tensor.kind, cfg, qparams, metrics)


def analyze(
    model: LoadedModel,
    stats: CalibrationStats | None,
    config: QuantConfig,
    known: Mapping[TensorKey, TensorResult] | None = None,
) -> list[TensorResult]:
    """Every quantizable tensor that `config` quantizes, in graph order. Results in `known`
    that were computed for the same settings are reused (the app's document passes what it
    has already measured, so an evaluation analyses only what is missing)."""
    results = []
    known = known or {}
    for tensor in quant_tensors(model):
        cfg = config.for_tensor(tensor.name, tensor.kind)
        if not cfg.quantize:
            continue
        done = known.get(tensor.key)
        if done is not None and done.config == cfg:
            results.append(done)
        else:
            results.append(analyze_tensor(model, stats, tensor, cfg))
    return results
