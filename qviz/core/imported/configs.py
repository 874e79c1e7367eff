"""The imported quantization as a configuration, and qviz's own choice beside it.

`imported_config` is the configuration an imported model opens with: every tensor an imported
pair quantizes gets ``Method.IMPORTED`` with the pair's exact parameters (and its format and
granularity), every other tensor stays float. `own_choice_config` quantizes the same tensors
the same way (format, granularity) but lets qviz's default methods choose the ranges: the two
side by side (A/B) show what the imported calibration costs or gains, tensor by tensor and end
to end.
"""

from __future__ import annotations

from dataclasses import replace

from qviz.core.calibration.analysis import TensorKey, quant_tensors
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.errors import QvizError
from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import Granularity, PerAxis, PerGroup, PerTensor

__all__ = [
    "granularity_of",
    "imported_config",
    "imported_tensor_config",
    "own_choice_config",
    "pair_of",
    "restricted_to_imported",
    "with_imported_params",
]


def pair_of(model: LoadedModel, name: str, kind: TensorKind) -> ImportedPair | None:
    """The imported pair quantizing tensor `name` (None when the model is not imported or the
    import left it float)."""
    if model.imported is None:
        return None
    pkind = PairKind.WEIGHT if kind is TensorKind.WEIGHT else PairKind.ACTIVATION
    return model.imported.pair(name, pkind)


def granularity_of(pair: ImportedPair, layer: Layer) -> Granularity:
    qp = pair.params.qparams
    if qp.block_size is not None:
        return PerGroup(qp.block_size)
    if qp.axis is None:
        return PerTensor()
    return PerAxis(None if qp.axis == layer.channel_axis else qp.axis)


def imported_tensor_config(
    model: LoadedModel, key: TensorKey, layer: Layer | None = None
) -> TensorConfig | None:
    """The imported setting of one tensor (owned by `layer`, found when not given), or None
    when the import leaves it float."""
    pair = pair_of(model, key.name, key.kind)
    if pair is None or pair.fmt is None:
        return None
    if layer is None:
        layer = next(t.layer for t in quant_tensors(model) if t.key == key)
    return TensorConfig(
        MethodSpec(Method.IMPORTED, imported=pair.params), granularity_of(pair, layer), pair.fmt
    )


def imported_config(model: LoadedModel) -> QuantConfig:
    """The configuration an imported model opens with (see the module docstring)."""
    if model.imported is None:
        raise QvizError(f"{model.source} was not imported from a quantized model")
    base = QuantConfig()
    overrides: dict[str, TensorConfig] = {}
    for t in quant_tensors(model):
        cfg = imported_tensor_config(model, t.key, t.layer)
        overrides[t.name] = (
            cfg if cfg is not None else replace(base.default_for(t.kind), quantize=False)
        )
    return QuantConfig(base.weights, base.activations, overrides)


def own_choice_config(model: LoadedModel, base: QuantConfig | None = None) -> QuantConfig:
    """The same tensors in the same formats and granularities, ranges chosen by qviz's
    default methods (those of `base`, qviz's defaults when None)."""
    base = base or QuantConfig()
    imported = imported_config(model)
    overrides: dict[str, TensorConfig] = {}
    for t in quant_tensors(model):
        cfg = imported.for_tensor(t.name, t.kind)
        if cfg.spec.method is Method.IMPORTED:
            spec = base.default_for(t.kind).spec
            cfg = replace(cfg, spec=spec)
        overrides[t.name] = cfg
    return QuantConfig(base.weights, base.activations, overrides)


def with_imported_params(config: QuantConfig, model: LoadedModel) -> QuantConfig:
    """`config` with each IMPORTED setting carrying the model's own pair (codes included):
    a configuration read from a file records the parameters, not the weights' codes."""
    if model.imported is None:
        return config
    kinds = {t.name: t.kind for t in quant_tensors(model)}

    def fix(name: str, cfg: TensorConfig) -> TensorConfig:
        if cfg.spec.method is not Method.IMPORTED or name not in kinds:
            return cfg
        pair = pair_of(model, name, kinds[name])
        if pair is None:
            return cfg
        if cfg.spec.imported is not None and cfg.spec.imported != pair.params:
            return cfg  # parameters of its own (not this model's pair): kept as they are
        return replace(cfg, spec=MethodSpec(Method.IMPORTED, imported=pair.params))

    return QuantConfig(
        config.weights,
        config.activations,
        {name: fix(name, cfg) for name, cfg in config.overrides.items()},
    )


def restricted_to_imported(config: QuantConfig, model: LoadedModel) -> QuantConfig:
    """`config` quantizing only the tensors the import quantizes (qviz's settings applied to
    the same pairs, the rest kept float as imported)."""
    if model.imported is None:
        return config
    overrides = dict(config.overrides)
    for t in quant_tensors(model):
        if pair_of(model, t.name, t.kind) is None:
            overrides[t.name] = replace(config.for_tensor(t.name, t.kind), quantize=False)
    return QuantConfig(config.weights, config.activations, overrides)
