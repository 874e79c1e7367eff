"""The per-channel scales: SmoothQuant's (alpha given, or the alpha minimizing the estimated
output error) and cross-layer equalization's.

An activation ``X`` read by layers with weights ``W_i`` is rescaled to ``X / s`` and each
``W_i``'s input channel ``c`` to ``s_c W_i[c]``:

* SmoothQuant (Xiao et al. 2023): ``s_c = max|X_c|^α / max_i max|W_i[c]|^(1-α)``, moving
  the activation's loud channels into the weights;
* equalization (Nagel et al. 2019, data-free quantization): for a pair ``W_1 → X → W_2``,
  ``s_c = sqrt(r1_c / r2_c)`` with ``r1_c`` the range of ``W_1``'s output channel ``c`` and
  ``r2_c`` that of ``W_2``'s input channel ``c``, so both become ``sqrt(r1_c r2_c)``.

"auto" picks, per activation, the alpha on a 0.05 grid whose estimated error at the outputs
of the layers reading ``X`` is smallest. The estimate sums two terms, each from the
statistics alone: the activation's rounding and clipping error per channel (each channel's
histogram quantized with the per-tensor scale the tensor's method picks for ``X / s``),
weighted by the squared norm of that channel's row of ``s W_i``; and the weights' rounding
error per input channel (``s W_i`` quantized as configured), weighted by the channel's mean
square ``E[(X_c / s_c)²]``. Cross terms are left out: rounding errors of different elements
are nearly uncorrelated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.config import TensorConfig
from qviz.core.quant.formats import FormatKind
from qviz.core.stats.channel_stats import rescaled_histogram
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.transforms.activation_error import channel_errors
from qviz.core.transforms.weight_error import scaled_weight_terms

__all__ = [
    "ALPHA_GRID",
    "AlphaSearch",
    "equalization_scales",
    "rescaled",
    "scale_tensor_stats",
    "scales_from_absmax",
    "search_alpha",
    "smoothquant_scales",
    "weight_absmax",
]

ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))
# The search scores every 0.1 first, then the 0.05 neighbours of the best.
_COARSE = ALPHA_GRID[::2]
# Bins of the rebuilt histogram the error estimate picks ranges on (the analysis uses the
# tensor's own count, 2048; the estimate's ranking of alphas does not need them).
_ESTIMATE_BINS: int | None = None  # None: the tensor's own bin count
# SmoothQuant's reference code clamps both maxima at 1e-5 so a silent channel gets a finite s.
_FLOOR = 1e-5
# Values rescaled at once by `rescaled` (its float64 temporaries stay near 32 MB).
_RESCALE_VALUES = 1 << 22


def channel_absmax(stats: TensorStats) -> np.ndarray:
    assert stats.channel_min is not None and stats.channel_max is not None
    return np.maximum(np.abs(stats.channel_min), np.abs(stats.channel_max))


def smoothquant_scales(
    act_absmax: np.ndarray, weight_rows: Sequence[np.ndarray], alpha: float
) -> np.ndarray:
    """``s_c = a_c^α / w_c^(1-α)`` with ``w_c`` the largest |weight| of input channel ``c``
    over every layer reading the activation (``weight_rows``: (channels, ...) each)."""
    return scales_from_absmax(act_absmax, weight_absmax(weight_rows), alpha)


def weight_absmax(weight_rows: Sequence[np.ndarray]) -> np.ndarray:
    """The largest |weight| of each input channel over every layer reading the activation
    (``weight_rows``: (channels, ...) each), as float32 values."""
    return np.max([np.max(np.abs(r), axis=1) for r in weight_rows], axis=0)


def scales_from_absmax(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`smoothquant_scales` from the extremes (computed once for every alpha)."""
    a = np.maximum(np.asarray(act_absmax, dtype=np.float64), _FLOOR)
    w = np.maximum(w_absmax, _FLOOR)
    s = a**alpha / w ** (1.0 - alpha)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def equalization_scales(
    producer_rows: np.ndarray, consumer_rows: Sequence[np.ndarray]
) -> np.ndarray:
    """``s_c = sqrt(r1_c / r2_c)``; channels where either range is 0 keep ``s_c = 1``."""
    r1 = np.abs(producer_rows).max(axis=1).astype(np.float64)
    r2 = np.max([np.abs(r).max(axis=1) for r in consumer_rows], axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    return np.where(np.isfinite(s) & (s > 0) & (r1 > 0) & (r2 > 0), s, 1.0)


def rescaled(w: np.ndarray, axis: int, s: np.ndarray, *, divide: bool = False) -> np.ndarray:
    """``w`` with its channels along ``axis`` times ``s`` (divided by with ``divide``), in
    float64 and stored as float32, slice by slice so that no float64 copy of the whole weight
    is made (a large weight read memory-mapped is read once)."""
    arr = np.asarray(w)
    out = np.empty(arr.shape, dtype=np.float32)
    shape = [1] * arr.ndim
    shape[axis] = s.size
    factor = np.asarray(s, dtype=np.float64).reshape(shape)
    step = max(1, _RESCALE_VALUES // max(arr[0].size, 1))
    for start in range(0, arr.shape[0], step):
        part = slice(start, start + step)
        f = factor[part] if axis == 0 else factor
        x = arr[part].astype(np.float64)
        out[part] = x / f if divide else x * f
    return out


def scale_tensor_stats(stats: TensorStats, s: np.ndarray, bins: int | None = None) -> TensorStats:
    """The statistics of ``X / s`` (``s`` per channel, positive) from those of ``X``: exact
    per-channel extrema and moments, and the tensor histogram rebuilt from the channels'."""
    moments = stats.moments
    assert moments is not None and stats.channel_min is not None and stats.channel_max is not None
    s = np.asarray(s, dtype=np.float64)
    cmin, cmax = stats.channel_min / s, stats.channel_max / s
    seen = np.isfinite(cmin) & np.isfinite(cmax)
    empty = stats.count == 0 or not seen.any()
    return TensorStats(
        name=stats.name,
        histogram=rescaled_histogram(moments, s, bins or stats.histogram.bins),
        min=0.0 if empty else float(cmin[seen].min()),
        max=0.0 if empty else float(cmax[seen].max()),
        count=stats.count,
        n_extreme=stats.n_extreme,
        n_nonfinite=stats.n_nonfinite,
        channel_axis=stats.channel_axis,
        channel_min=cmin,
        channel_max=cmax,
        shapes_vary=stats.shapes_vary,
        moments=moments.scaled(s),
    )


@dataclass(frozen=True, eq=False)
class AlphaSearch:
    """The estimated output error (mean squared error per output element, summed over the
    layers reading the activation) at the alphas scored (every 0.1, then the 0.05 neighbours
    of the best: at most 13 of :data:`ALPHA_GRID`), and the best alpha."""

    alphas: np.ndarray
    errors: np.ndarray
    best: float


def _activation_error(stats: TensorStats, s: np.ndarray, cfg: TensorConfig) -> np.ndarray:
    """Mean squared quantization error of each channel of ``X / s`` under the per-tensor
    scale ``cfg`` picks for it (0 when the activation is kept float)."""
    if not cfg.quantize or cfg.fmt.kind is FormatKind.NF4:
        return np.zeros(s.size)
    return channel_errors(scale_tensor_stats(stats, s, _ESTIMATE_BINS), cfg)


@dataclass(frozen=True)
class ConsumerInput:
    """What the alpha search needs of one layer reading the activation."""

    weight: np.ndarray  # current value (before this scaling)
    axis: int  # input-channel axis
    config: TensorConfig
    layer_axes: tuple[int | None, int | None]  # (output-channel, reduction) axes
    outputs: int  # output elements per input row (normalizes the error)


def estimate_error(
    stats: TensorStats, act_cfg: TensorConfig, consumers: Sequence[ConsumerInput], s: np.ndarray
) -> float:
    """The estimated output error of rescaling by ``s`` (see the module docstring)."""
    assert stats.moments is not None
    act_err = _activation_error(stats, s, act_cfg)
    mean_sq = stats.moments.mean_sq / (s * s)
    total = 0.0
    for c in consumers:
        terms = scaled_weight_terms(c.weight, c.axis, s, c.config, c.layer_axes)
        total += float((act_err * terms.row_norms).sum() + (mean_sq * terms.errors).sum()) \
            / max(c.outputs, 1)
    return total


def search_alpha(stats: TensorStats, act_cfg: TensorConfig,
                 consumers: Sequence[ConsumerInput]) -> AlphaSearch:
    """The alpha of :data:`ALPHA_GRID` with the smallest estimated output error."""
    absmax = channel_absmax(stats)
    w_absmax = weight_absmax(
        [np.moveaxis(c.weight, c.axis, 0).reshape(absmax.size, -1) for c in consumers])
    scored: dict[float, float] = {}

    def score(alpha: float) -> None:
        if alpha not in scored:
            s = scales_from_absmax(absmax, w_absmax, alpha)
            scored[alpha] = estimate_error(stats, act_cfg, consumers, s)

    for alpha in _COARSE:
        score(alpha)
    best = min(scored, key=lambda a: (scored[a], a))
    for alpha in (round(best - 0.05, 2), round(best + 0.05, 2)):
        if 0.0 <= alpha <= 1.0:
            score(alpha)
    alphas = np.array(sorted(scored))
    errors = np.array([scored[a] for a in alphas])
    finite = np.isfinite(errors)
    chosen = float(alphas[finite][np.argmin(errors[finite])]) if finite.any() else 0.5
    return AlphaSearch(alphas, errors, chosen)
