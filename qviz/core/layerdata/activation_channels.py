"""Per-input-channel ranges and errors of an activation: what the activation channel view
draws and ``qviz report --json`` lists.

For each channel along the activation's channel axis (the contraction axis of the layer
reading it): its exact range, mean and RMS, and — where the statistics hold per-channel
histograms — its SQNR under the tensor's one per-tensor scale. A channel is *loud* when its
largest magnitude exceeds ``factor`` times the median channel's: a per-tensor scale set by it
rounds every other channel coarsely, the case SmoothQuant is for. Pure functions of the
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.tensor_stats import TensorStats

__all__ = ["LOUD_FACTOR", "ActivationChannels", "activation_channels", "loud_channels"]

#: A channel louder than this many times the median channel is flagged.
LOUD_FACTOR = 4.0
_SAMPLES_PER_BIN = 4


def loud_channels(absmax: np.ndarray, factor: float = LOUD_FACTOR) -> np.ndarray:
    """Indices of the channels whose |max| exceeds ``factor`` x the median channel's."""
    a = np.asarray(absmax, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(0, dtype=np.intp)
    median = float(np.median(a[finite]))
    if median <= 0.0:
        return np.flatnonzero(finite & (a > 0))
    return np.flatnonzero(finite & (a > factor * median))


@dataclass(frozen=True, eq=False)
class ActivationChannels:
    """One entry per channel (arrays of length C); ``sqnr_db`` and the moments are None
    when the statistics predate per-channel moments."""

    axis: int
    mins: np.ndarray
    maxs: np.ndarray
    absmax: np.ndarray
    loud: np.ndarray  # indices
    factor: float
    median_absmax: float
    means: np.ndarray | None = None
    rms: np.ndarray | None = None
    sqnr_db: np.ndarray | None = None
    clip: tuple[float, float] | None = None  # the per-tensor range the channels share

    @property
    def channels(self) -> int:
        return int(self.mins.size)


def activation_channels(
    stats: TensorStats,
    qparams: QParams | None = None,
    fmt: NumberFormat | None = None,
    factor: float = LOUD_FACTOR,
    clip: tuple[float, float] | None = None,
) -> ActivationChannels | None:
    """The channels of `stats` (None without per-channel min/max); with the tensor's
    `qparams` and `fmt`, each channel's SQNR under that one scale."""
    if stats.channel_min is None or stats.channel_max is None or stats.channel_axis is None:
        return None
    seen = np.isfinite(stats.channel_min) & np.isfinite(stats.channel_max)
    mins = np.where(seen, stats.channel_min, np.nan)
    maxs = np.where(seen, stats.channel_max, np.nan)
    absmax = np.maximum(np.abs(mins), np.abs(maxs))
    finite = absmax[np.isfinite(absmax)]
    median = float(np.median(finite)) if finite.size else 0.0
    means = rms = sqnr = None
    m = stats.moments
    if m is not None:
        means, rms = m.mean, np.sqrt(m.mean_sq)
        if qparams is not None and fmt is not None and m.has_histograms:
            points, weights = m.rows().sample_points(_SAMPLES_PER_BIN)
            err = fake_quantize(points, qparams, fmt).astype(np.float64) - points
            noise = (weights * err * err).sum(axis=1)
            signal = (weights * points * points).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                sqnr = np.where(noise > 0, 10.0 * np.log10(signal / noise), np.inf)
            sqnr = np.where((signal <= 0) & (noise > 0), -np.inf, sqnr)
    return ActivationChannels(
        axis=stats.channel_axis, mins=mins, maxs=maxs, absmax=absmax,
        loud=loud_channels(absmax, factor), factor=factor, median_absmax=median,
        means=means, rms=rms, sqnr_db=sqnr, clip=clip,
    )
