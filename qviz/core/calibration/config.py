"""Quantization configuration: what the user chose for each tensor.

A configuration is defaults for weights and for activations plus per-tensor overrides, so
"apply to all layers" is a change of default and "this layer only" is an override. Mixed
precision is simply a configuration in which some tensors have `quantize=False`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import (
    FormatKind,
    Granularity,
    GranularityKind,
    NumberFormat,
    PerAxis,
    PerTensor,
)


@dataclass(frozen=True)
class TensorConfig:
    """How one tensor is quantized."""

    spec: MethodSpec = MethodSpec()
    granularity: Granularity = PerTensor()
    fmt: NumberFormat = NumberFormat()
    quantize: bool = True

    @property
    def label(self) -> str:
        if not self.quantize:
            return "float"
        return f"{self.fmt.label}, {self.granularity.label}, {method_label(self.spec)}"


def method_label(spec: MethodSpec) -> str:
    if spec.method is Method.PERCENTILE:
        return f"percentile {spec.percentile:g}"
    if spec.method is Method.MANUAL and spec.manual_range is not None:
        lo, hi = spec.manual_range
        return f"manual [{lo:.4g}, {hi:.4g}]"
    return spec.method.value


def _frozen(mapping: Mapping[str, TensorConfig] | None) -> Mapping[str, TensorConfig]:
    return MappingProxyType(dict(mapping or {}))


DEFAULT_WEIGHTS = TensorConfig(
    spec=MethodSpec(Method.MINMAX),
    granularity=PerAxis(),
    fmt=NumberFormat(),
)
# uint8 asymmetric activations with int8 symmetric weights: ONNX Runtime's default pairing,
# which its integer kernels are built for (and which keeps all 256 codes for ReLU outputs).
# MSE: on the real models tried, the best method or within half a point of it; entropy was the
# worst on most and clips outlier channels.
DEFAULT_ACTIVATIONS = TensorConfig(
    spec=MethodSpec(Method.MSE),
    granularity=PerTensor(),
    fmt=NumberFormat(signed=False, symmetric=False),
)


@dataclass(frozen=True)
class QuantConfig:
    """Defaults for each kind of tensor, and overrides by tensor name."""

    weights: TensorConfig = DEFAULT_WEIGHTS
    activations: TensorConfig = DEFAULT_ACTIVATIONS
    overrides: Mapping[str, TensorConfig] = field(default_factory=lambda: _frozen(None))

    def __post_init__(self) -> None:
        # Keep the mapping read-only so a config can be shared between threads safely.
        object.__setattr__(self, "overrides", _frozen(self.overrides))

    def __hash__(self) -> int:
        return hash((self.weights, self.activations, tuple(sorted(self.overrides.items()))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantConfig):
            return NotImplemented
        return (
            self.weights == other.weights
            and self.activations == other.activations
            and dict(self.overrides) == dict(other.overrides)
        )

    def default_for(self, kind: TensorKind) -> TensorConfig:
        return self.weights if kind is TensorKind.WEIGHT else self.activations

    def for_tensor(self, name: str, kind: TensorKind) -> TensorConfig:
        return self.overrides.get(name, self.default_for(kind))

    def with_override(self, name: str, cfg: TensorConfig) -> QuantConfig:
        return replace(self, overrides={**self.overrides, name: cfg})

    def without_override(self, name: str) -> QuantConfig:
        rest = {k: v for k, v in self.overrides.items() if k != name}
        return replace(self, overrides=rest)

    def with_default(self, kind: TensorKind, cfg: TensorConfig) -> QuantConfig:
        if kind is TensorKind.WEIGHT:
            return replace(self, weights=cfg)
        return replace(self, activations=cfg)


def granularity_supported(kind: TensorKind) -> Sequence[GranularityKind]:
    """Activations are quantized per tensor: ONNX Runtime's INT8 kernels take one scale."""
    if kind is TensorKind.ACTIVATION:
        return (GranularityKind.PER_TENSOR,)
    return tuple(GranularityKind)


def format_supported(kind: TensorKind) -> Sequence[FormatKind]:
    """NF4 is a weight-only codebook format."""
    if kind is TensorKind.ACTIVATION:
        return tuple(k for k in FormatKind if k is not FormatKind.NF4)
    return tuple(FormatKind)
