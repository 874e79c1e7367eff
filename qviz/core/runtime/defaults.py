"""Default settings that hold on this machine: what a new session quantizes with.

Activations default to MSE (uint8, asymmetric): on every real model tried it was the best
method or within half a point of it, where entropy was the worst on most and clips outlier
channels badly. Weights default to int8 symmetric per channel — except where ONNX Runtime's
U8S8 int8 kernels can saturate (x86 with AVX2 but no VNNI): there the same kernels run 7-bit
weights exactly (ORT's reduce_range), so native results match the simulation. The reason is
returned in one line for the user to read; `QVIZ_U8S8_SATURATES` or an explicit choice of
bits overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qviz.core.calibration.config import QuantConfig
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.cpu import u8s8_may_saturate

#: Weights when the int8 kernels may saturate: fused like int8, never saturating.
SAFE_WEIGHT_BITS = 7


@dataclass(frozen=True)
class Defaults:
    config: QuantConfig
    note: str | None  # why they differ from the usual ones on this machine (None: they don't)


def recommended_defaults() -> Defaults:
    """The configuration a new session starts from on this machine."""
    base = QuantConfig()
    if not u8s8_may_saturate():
        return Defaults(base, None)
    weights = replace(base.weights, fmt=NumberFormat.parse(f"int{SAFE_WEIGHT_BITS}"))
    return Defaults(
        replace(base, weights=weights),
        f"Weights default to int{SAFE_WEIGHT_BITS}: this CPU's int8 kernels (AVX2 without "
        f"VNNI) can saturate with 8-bit weights, and {SAFE_WEIGHT_BITS}-bit weights run in the "
        "same integer kernels exactly, so native results match the simulation.",
    )
