"""Layers whose integer kernel is slower than float here are left float by default at export.

An export measures each layer anyway (`qviz.core.runtime.speed_check`). A layer whose
*kernel* is the problem (`SlowCause.SLOW_KERNEL`: a thin convolution, a tiny matrix, where
ORT's integer kernel loses to its float one on this CPU) gains nothing from being quantized
but size, so by default (`SlowLayers.FLOAT`) it is exported float — unless the user set that
layer's precision explicitly: a per-layer entry of the configuration (a config file's
per-tensor override, a per-layer change in the app, a per-layer choice of the mixed search,
whose `--objective smallest` is how size is asked for). The configuration's defaults are not
explicit. A model quantized elsewhere (imported) is exported as it came. Layers slower for
another reason (not fused, Q/DQ overhead, layout changes) have other fixes and are only
reported. Nor is a layer whose input the layer before it produces in integer (a fused
output) left float: its input would no longer be quantized, and that layer would unfuse.

The decision reads one profile and is deterministic given it: a kernel counts as slower only
beyond the `NOISE` margin, on both its whole quantized time and its kernel time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.fusion import FusionReport, fusion_report
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.runtime.slowdown import NOISE, SlowCause, explain_slow_layers, float_cost_bytes
from qviz.core.runtime.speed import SpeedProfile
from qviz.core.runtime.speed_check import keep_float
from qviz.core.text import fmt_bytes

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.calibration.config import QuantConfig

__all__ = ["FloatedLayer", "SlowLayers", "explicit_layers", "leave_slow_layers_float"]


class SlowLayers(Enum):
    """What an export does with a layer whose integer kernel is slower than float here."""

    FLOAT = "float"
    QUANTIZE = "quantize"


@dataclass(frozen=True)
class FloatedLayer:
    """A layer exported float because its integer kernel was slower here."""

    layer: str
    kernel: str
    kernel_ms: float
    float_ms: float
    float_bytes: int

    @property
    def text(self) -> str:
        """One line: which layer, its integer vs float ms, what float costs, how to undo
        (in the command line's words)."""
        return self.line("--slow-layers quantize")

    def line(self, keep_integer: str) -> str:
        """:attr:`text` with `keep_integer` naming how to keep the layer integer."""
        return (
            f"{self.layer} left float: its integer kernel {self.kernel} takes "
            f"{self.kernel_ms:.3g} ms vs {self.float_ms:.3g} ms float here; float costs "
            f"{fmt_bytes(self.float_bytes)} more to store (keep it integer with "
            f"{keep_integer}, or set this layer's precision explicitly)"
        )


def explicit_layers(results: Sequence[TensorResult], config: QuantConfig) -> frozenset[str]:
    """Layers the configuration sets per layer: one of their tensors has an override."""
    return frozenset(r.layer.name for r in results if r.name in config.overrides)


def leave_slow_layers_float(
    model: LoadedModel,
    results: Sequence[TensorResult],
    config: QuantConfig,
    measure: Callable[[QdqModel], SpeedProfile],
    *,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    qdq: QdqModel | None = None,
    fusion: FusionReport | None = None,
) -> tuple[list[TensorResult], tuple[FloatedLayer, ...]]:
    """`results` without the layers whose integer kernel is slower than float in one
    measured profile of `qdq` (built from `results` if not given), except the layers set
    explicitly; with one `FloatedLayer` per layer left float. When every layer is slower,
    `results` as they are: float is then the answer, and the speed check says so."""
    if model.imported is not None:
        return list(results), ()  # a model quantized elsewhere is exported as it came
    qdq = qdq if qdq is not None else build_qdq(model, results)
    speed = measure(qdq)
    fusion = fusion if fusion is not None else fusion_report(qdq, precision)
    bits: Mapping[str, int] = {
        p.layer.name: p.weight.fmt.bits for p in qdq.layers if p.weight is not None
    }
    keep = set(explicit_layers(results, config))
    # A layer whose input is the fused output of the layer before it stays integer: left
    # float, its input would no longer be quantized, and the layer before would lose its
    # fusion (seen on the demo: a slow last Gemm left float made the Gemm before it unfused
    # and the model slower).
    fused = set(fusion.fused)
    keep |= {
        p.output.layer
        for p in qdq.layers
        if p.output is not None and p.layer.name in fused and p.output.layer != p.layer.name
    }
    by_name = {layer.name: layer for layer in model.layers}
    floated: list[FloatedLayer] = []
    for slow in explain_slow_layers(speed, fusion, model.layers, bits):
        x = speed.layer(slow.layer)
        if slow.cause is not SlowCause.SLOW_KERNEL or slow.layer in keep or x is None:
            continue
        if x.kernel_ms <= x.float_ms * (1 + NOISE):
            continue  # the kernel itself is within the noise: not a kernel decision
        layer = by_name.get(slow.layer)
        cost = 0 if layer is None else float_cost_bytes(layer, bits.get(slow.layer, 8))
        floated.append(FloatedLayer(slow.layer, x.kernel, x.kernel_ms, x.float_ms, cost))
    kept = keep_float(results, [f.layer for f in floated])
    if not kept:
        return list(results), ()
    return kept, tuple(floated)
