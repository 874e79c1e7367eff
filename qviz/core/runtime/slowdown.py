"""Why a quantized layer runs slower than float, said plainly, and what would fix it.

From a `SpeedProfile` (where each layer's time goes) and the `FusionReport` (which layers ORT
fused, and why not), each quantized layer that lost time gets one cause, in this order:

* **not fused** — ORT left it in float: the fusion report's reason (an input or output not
  Q/DQ'd, a format with no integer kernel, a layout ORT does not fuse) and its fix; the Q/DQ
  nodes then cost time on every run (its weights dequantized on every run among them);
* **Q/DQ overhead** — fused, but the QuantizeLinear/DequantizeLinear nodes ORT kept for it
  (its input quantized on every run because the layer before outputs float...) cost more
  than the integer kernel saves;
* **layout** — fused, but the layout changes ORT adds around it (NCHW ↔ NHWC Transposes for
  QLinearConv) cost more than it saves;
* **slow kernel** — the integer kernel itself is slower than ORT's float kernel for this
  layer here (a thin convolution, a tiny matrix): keep it float.

A layer counts as slower when its quantized time exceeds its float time by more than
`NOISE` (a fraction): per-layer medians on a shared machine move by a few percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from qviz.core.jsonnum import json_number as _num
from qviz.core.model.layers import Layer
from qviz.core.runtime.fusion import KEEP_FLOAT, FusionReport
from qviz.core.runtime.speed import LayerSpeed, SpeedProfile
from qviz.core.text import fmt_bytes

__all__ = ["NOISE", "SlowCause", "SlowLayer", "explain_slow_layers", "float_cost_bytes"]

#: A layer is slower when quantized ms > float ms x (1 + NOISE).
NOISE = 0.05


class SlowCause(Enum):
    NOT_FUSED = "not fused"
    QDQ_OVERHEAD = "Q/DQ overhead"
    LAYOUT = "layout changes"
    SLOW_KERNEL = "slow integer kernel"


@dataclass(frozen=True)
class SlowLayer:
    """One quantized layer slower than float: by how much, why, and what would fix it."""

    layer: str
    float_ms: float
    quantized_ms: float
    cause: SlowCause
    reason: str
    fix: str

    @property
    def lost_ms(self) -> float:
        return self.quantized_ms - self.float_ms

    @property
    def text(self) -> str:
        """One line: "features.0: 0.06 ms vs 0.02 ms float — <reason>; fix: <fix>"."""
        return (
            f"{self.layer}: {self.quantized_ms:.3g} ms vs {self.float_ms:.3g} ms float — "
            f"{self.reason}; fix: {self.fix}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "float_ms": _num(self.float_ms),
            "quantized_ms": _num(self.quantized_ms),
            "lost_ms": _num(self.lost_ms),
            "cause": self.cause.value,
            "reason": self.reason,
            "fix": self.fix,
        }


def float_cost_bytes(layer: Layer, weight_bits: int) -> int:
    """How many bytes keeping `layer`'s weights float costs over `weight_bits` storage."""
    return max(0, layer.param_count * 4 - (layer.param_count * weight_bits + 7) // 8)


def _keep_float(layer: Layer | None, weight_bits: int | None) -> str:
    if layer is None or weight_bits is None or layer.param_count == 0:
        return KEEP_FLOAT
    return f"{KEEP_FLOAT}; {fmt_bytes(float_cost_bytes(layer, weight_bits))} more to store"


def _explain(
    x: LayerSpeed, fusion: FusionReport | None, layer: Layer | None, bits: int | None
) -> SlowLayer:
    if fusion is not None and x.name in fusion.unfused:
        reason = f"ORT left it in float ({fusion.unfused[x.name]})"
        if x.qdq_ms > 0:
            reason += f"; its Q/DQ nodes cost {x.qdq_ms:.3g} ms per run"
        if x.weight_dequantized:
            reason += ", its weights dequantized on every run among them"
        fix = fusion.fixes.get(x.name, KEEP_FLOAT)
        return SlowLayer(x.name, x.float_ms, x.quantized_ms, SlowCause.NOT_FUSED, reason, fix)
    if not x.kernel or x.kernel == x.float_kernel:
        reason = f"it runs in float ({x.kernel or 'no kernel seen'}) with Q/DQ around it"
        if x.weight_dequantized:
            reason += ", its weights dequantized on every run"
        return SlowLayer(x.name, x.float_ms, x.quantized_ms, SlowCause.NOT_FUSED, reason,
                         _keep_float(layer, bits))
    extras = []
    if x.qdq_ms > 0:
        extras.append(f"Q/DQ {x.qdq_ms:.3g} ms")
    if x.layout_ms > 0:
        extras.append(f"layout changes {x.layout_ms:.3g} ms")
    if x.kernel_ms >= x.float_ms:
        reason = (
            f"its integer kernel {x.kernel} is slower here than float "
            f"{x.float_kernel or 'ORT'} ({x.kernel_ms:.3g} vs {x.float_ms:.3g} ms)"
        )
        if extras:
            reason += f", before its {' and '.join(extras)}"
        return SlowLayer(x.name, x.float_ms, x.quantized_ms, SlowCause.SLOW_KERNEL, reason,
                         _keep_float(layer, bits))
    kernel_gain = x.float_ms - x.kernel_ms
    if x.qdq_ms >= x.layout_ms:
        reason = (
            f"{x.kernel} saves {kernel_gain:.3g} ms but the Q/DQ ORT runs for it "
            f"({', '.join(x.qdq_nodes[:3]) or 'QuantizeLinear'}) costs {x.qdq_ms:.3g} ms: its "
            "input arrives in float and is quantized on every run"
        )
        fix = (
            "let int8 values flow into it (quantize the layer before it too, with its output "
            "Q/DQ'd), or " + _keep_float(layer, bits)
        )
        return SlowLayer(x.name, x.float_ms, x.quantized_ms, SlowCause.QDQ_OVERHEAD, reason, fix)
    reason = (
        f"ORT changes the layout around {x.kernel} (Transposes, {x.layout_ms:.3g} ms per "
        f"run) and that costs more than the kernel saves ({kernel_gain:.3g} ms)"
    )
    fix = (
        "quantize the neighbouring layers too, so the layout changes once for the whole "
        "chain, or " + _keep_float(layer, bits)
    )
    return SlowLayer(x.name, x.float_ms, x.quantized_ms, SlowCause.LAYOUT, reason, fix)


def explain_slow_layers(
    speed: SpeedProfile,
    fusion: FusionReport | None = None,
    layers: Sequence[Layer] = (),
    weight_bits: Mapping[str, int] | None = None,
) -> tuple[SlowLayer, ...]:
    """Each quantized layer slower than float (beyond `NOISE`), the most time lost first,
    with its cause and fix. `layers` and `weight_bits` (layer name → its weights' bits) let
    the fix say what keeping the layer float costs in bytes."""
    by_name = {layer.name: layer for layer in layers}
    bits = weight_bits or {}
    out = [
        _explain(x, fusion, by_name.get(x.name), bits.get(x.name))
        for x in speed.layers
        if x.quantized and x.quantized_ms > x.float_ms * (1 + NOISE)
    ]
    return tuple(sorted(out, key=lambda s: -s.lost_ms))
