"""What a layer may be in a mixed-precision search, and the configuration an assignment makes.

A layer is its weight and the input activation(s) it owns (`quant_tensors`); a `Precision`
gives both a format (or keeps both float). `assignment_config` turns "this layer at that
precision" into a plain `QuantConfig` the rest of qviz applies as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from qviz.core.calibration.analysis import quant_tensors
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.errors import QvizError
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.quant.formats import FormatKind, NumberFormat

__all__ = [
    "Objective",
    "Precision",
    "assignment_config",
    "layers_owning_tensors",
    "parse_precisions",
]

_FLOAT_BITS = 32


@dataclass(frozen=True)
class Precision:
    """What one layer may be: a weight format and an activation format, or float (both None).

    ``name`` is what the user wrote (``int4``, ``int8``, ``float``, ``int4/int4``...).
    Quantization methods, granularity and symmetry come from the base configuration; only the
    formats change.
    """

    name: str
    weight: NumberFormat | None
    activation: NumberFormat | None
    #: ``imported``: the layer keeps the base configuration's own settings (a quantized
    #: model's imported pairs): the search then decides which pairs to keep, change or drop.
    keeps_base: bool = False

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.activation is None and not self.keeps_base

    @property
    def cost(self) -> tuple[int, int]:
        """Sort key from cheapest to dearest: weight bits (they dominate size), then
        activation bits; float counts as 32, the imported settings as just below float
        (they are what is being repaired, whatever their widths)."""
        if self.keeps_base:
            return (_FLOAT_BITS - 1, _FLOAT_BITS - 1)
        w = _FLOAT_BITS if self.weight is None else self.weight.bits
        a = _FLOAT_BITS if self.activation is None else self.activation.bits
        return (w, a)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``float``; ``imported`` (the base configuration's own settings); or a weight format
        (``int4``, ``int8``, ``uint8``, ``nf4``, ``fp8_e4m3fn``...) with int8 activations; or
        ``WEIGHT/ACTIVATION`` (``int4/int4``); or ``a16w8`` (int8 weights, int16 activations).
        QvizError for anything else."""
        key = str(text).strip().lower()
        if key in ("float", "fp32", "float32", "f32"):
            return cls("float", None, None)
        if key == "imported":
            return cls("imported", None, None, keeps_base=True)
        if key in ("a16w8", "w8a16", "int8/int16"):
            # 16-bit activations with int8 weights: where outlier channels defeat 8 bits.
            return cls("a16w8", NumberFormat(), NumberFormat(bits=16))
        w_text, _, a_text = key.partition("/")
        weight = NumberFormat.parse(w_text)
        activation = NumberFormat.parse(a_text) if a_text else NumberFormat()
        if activation.weight_only:
            raise QvizError(
                f"precision {text!r}: {activation.spec.upper()} is a weight-only format"
            )
        return cls(key, weight, activation)

    def tensor_config(self, base: TensorConfig, kind: TensorKind) -> TensorConfig:
        """`base` (method, granularity, symmetry) at this precision's format for `kind`."""
        if self.keeps_base:
            return base
        fmt = self.weight if kind is TensorKind.WEIGHT else self.activation
        if fmt is None:
            return replace(base, quantize=False)
        if fmt.kind is FormatKind.INT:
            fmt = replace(fmt, symmetric=base.fmt.symmetric, pow2_scale=base.fmt.pow2_scale)
        return replace(base, fmt=fmt, quantize=True)


def parse_precisions(text: str | Sequence[str]) -> tuple[Precision, ...]:
    """``"int4,int8,float"`` (or a list) as precisions sorted from cheapest to dearest.
    QvizError for an unknown name, a repeat, or no quantized precision at all."""
    items = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text)
    items = [i for i in items if i]
    if not items:
        raise QvizError("no precision allowed: give e.g. int4,int8,float")
    precisions = [Precision.parse(i) for i in items]
    seen: dict[tuple[Any, Any, bool], str] = {}
    for p in precisions:
        key = (p.weight, p.activation, p.keeps_base)
        if key in seen:
            raise QvizError(f"precision {p.name!r} is given twice (as {seen[key]!r})")
        seen[key] = p.name
    if all(p.is_float for p in precisions):
        raise QvizError("allow at least one quantized precision besides float")
    return tuple(sorted(precisions, key=lambda p: p.cost))


class Objective(Enum):
    """What "cheapest" means."""

    SIZE = "size"  # smallest model (initializer bytes as stored)
    FLOAT_LAYERS = "float-layers"  # fewest layers kept in float, then smallest
    FASTEST = "fastest"  # fastest measured on this machine (per-layer timings, then end to end)

    @property
    def label(self) -> str:
        return {
            Objective.SIZE: "smallest",
            Objective.FLOAT_LAYERS: "fewest float layers",
            Objective.FASTEST: "fastest",
        }[self]


def layers_owning_tensors(
    model: LoadedModel,
) -> dict[str, tuple[Layer, list[tuple[str, TensorKind]]]]:
    """Each layer with the tensors it owns (weight, activations it reads first), depth order."""
    owned: dict[str, tuple[Layer, list[tuple[str, TensorKind]]]] = {}
    for t in quant_tensors(model):
        owned.setdefault(t.layer.name, (t.layer, []))[1].append((t.name, t.kind))
    return dict(sorted(owned.items(), key=lambda kv: kv[1][0].depth))


def assignment_config(
    model: LoadedModel,
    base: QuantConfig,
    assignment: Mapping[str, Precision],
    default: Precision,
) -> QuantConfig:
    """The QuantConfig giving each layer its precision: defaults at `default`, overrides for
    the tensors of layers at another one (base overrides are replaced, not merged)."""
    weights = default.tensor_config(base.weights, TensorKind.WEIGHT)
    activations = default.tensor_config(base.activations, TensorKind.ACTIVATION)
    # Keeping the base's own settings keeps its overrides too (an imported model's pairs).
    overrides: dict[str, TensorConfig] = dict(base.overrides) if default.keeps_base else {}
    for name, (_layer, tensors) in layers_owning_tensors(model).items():
        p = assignment.get(name, default)
        if p == default:
            continue
        for tensor, kind in tensors:
            if p.keeps_base:
                base_cfg = base.for_tensor(tensor, kind)
            else:
                base_cfg = base.weights if kind is TensorKind.WEIGHT else base.activations
            overrides[tensor] = p.tensor_config(base_cfg, kind)
    return QuantConfig(weights=weights, activations=activations, overrides=overrides)
