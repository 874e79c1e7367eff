"""When a few loud channels cost an activation most of its precision, say that SmoothQuant is
the remedy.

Transformers' residual streams carry a handful of channels 20-100 times louder than the rest
(Dettmers et al. 2022, Xiao et al. 2023): one per-tensor 8-bit scale sized for them leaves the
other channels a few levels, and the layer's output error comes from there. The figures that
show it are already in the report (the activation's SQNR and its per-channel ranges); a user
reading a table of 200 tensors should not have to connect them. SmoothQuant moves the loudness
into the weights of the layers reading the activation, which take it in their per-channel
scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.analysis import TensorResult
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import PerTensor
from qviz.core.stats.collect import CalibrationStats

__all__ = ["ADVICE_RATIO", "OutlierActivation", "outlier_activations", "smoothquant_advice"]

#: A channel this many times louder (largest magnitude) than the median channel marks an
#: activation whose 8-bit scale is set by outliers. The channel view marks channels from 3x,
#: which many convolutional activations have without losing much; the outliers SmoothQuant
#: was made for are an order of magnitude beyond the rest.
ADVICE_RATIO = 10.0


@dataclass(frozen=True)
class OutlierActivation:
    """An activation read by a layer with a weight, quantized per tensor without a channel
    rescaling, whose loudest channel is ``ratio`` times its median channel."""

    name: str
    ratio: float
    sqnr_db: float


def _loudness(stats: CalibrationStats, name: str) -> float | None:
    """The loudest channel's largest magnitude over the median channel's (None: no
    per-channel ranges, or a silent median channel)."""
    t = stats.tensors.get(name)
    if t is None or t.channel_min is None or t.channel_max is None:
        return None
    absmax = np.maximum(np.abs(t.channel_min), np.abs(t.channel_max))
    absmax = absmax[np.isfinite(absmax)]
    if absmax.size < 8:  # too few channels for a median to mean "the rest"
        return None
    median = float(np.median(absmax))
    return float(absmax.max()) / median if median > 0 else None


def outlier_activations(
    stats: CalibrationStats, results: Sequence[TensorResult]
) -> list[OutlierActivation]:
    """The activations SmoothQuant is for, loudest first (see :data:`ADVICE_RATIO`)."""
    found: dict[str, OutlierActivation] = {}
    for r in results:
        if (r.kind is not TensorKind.ACTIVATION or r.name in found or r.layer.weight is None
                or not r.config.quantize or r.config.transforms.rescales_channels
                or not isinstance(r.config.granularity, PerTensor)):
            continue
        ratio = _loudness(stats, r.name)
        if ratio is not None and ratio >= ADVICE_RATIO:
            found[r.name] = OutlierActivation(r.name, ratio, float(r.metrics.sqnr_db))
    return sorted(found.values(), key=lambda a: -a.ratio)


def smoothquant_advice(
    stats: CalibrationStats, results: Sequence[TensorResult]
) -> str | None:
    """One line naming the activations with outlier channels and the option that helps, or
    None when there are none (or every one is rescaled already)."""
    found = outlier_activations(stats, results)
    if not found:
        return None
    worst = min(found, key=lambda a: a.sqnr_db)
    n = len(found)
    return (
        f"{n} activation{'s' if n != 1 else ''} read by weighted layers "
        f"{'have' if n != 1 else 'has'} outlier channels, up to {found[0].ratio:.0f}x the "
        f"median channel, which set the 8-bit scale (worst: {worst.name}, SQNR "
        f"{worst.sqnr_db:.1f} dB): --smoothquant auto moves them into the weights of the "
        "layers reading them"
    )
