"""Statistics of one weight tensor, computed once, from which every setting is derived.

A weight is a constant, so everything qviz shows about it for any method, per-tensor or
per-channel granularity and format can come from a few arrays computed in one pass over its
values: exact per-channel min, max and sum of squares, a histogram per output channel (all
channels at once: one ``bincount`` over channel-offset bin indices, never a loop over
channels) and one histogram of the whole tensor. A large model's weights are then read once
(memory-mapped, in chunks of a few million values), and a change of settings costs what the
histograms cost, not what the tensor costs. They travel in the statistics file beside the
activation statistics (``stats_file``), so a model calibrated on one machine is explored on
another without reading its weights again.

Per-group granularity is the exception: a block of 32..128 values has its own scale, so its
error needs the values themselves (``qviz.core.calibration.weight_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.stats.histogram import EXTREME_THRESHOLD, Histogram, HistogramRows
from qviz.core.stats.tensor_stats import TensorStats

__all__ = ["CHANNEL_BINS", "TENSOR_BINS", "WeightStats", "compute_weight_stats"]

#: Bins of each channel's histogram. Entropy calibration searches windows from 64 bins up to
#: half of them around zero, so 256 bins leave it 65 candidates per channel.
CHANNEL_BINS = 256
#: Bins of the whole tensor's histogram (as an activation's).
TENSOR_BINS = 2048
# Values processed per chunk: bounds the float32/int32 temporaries to a few tens of MB.
_CHUNK = 1 << 22


@dataclass(frozen=True, eq=False)
class WeightStats:
    """What qviz keeps about one weight: exact per-channel ``channel_min``/``channel_max``/
    ``channel_sumsq`` (float64, C each; one "channel" for a weight without a channel axis),
    ``rows`` (a histogram per channel over its exact range, ``CHANNEL_BINS`` bins) and
    ``tensor`` (the whole tensor as :class:`TensorStats`, ``TENSOR_BINS`` bins over its exact
    range). ``memo`` keeps derived per-channel ranges (entropy, MSE) that are expensive to
    search and do not depend on what they are later combined with."""

    name: str
    shape: tuple[int, ...]
    channel_axis: int | None
    rows: HistogramRows
    channel_min: np.ndarray
    channel_max: np.ndarray
    channel_sumsq: np.ndarray
    tensor: TensorStats
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def n_channels(self) -> int:
        return int(self.channel_min.size)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def per_channel(self) -> int:
        """Values in each channel."""
        return self.size // max(self.n_channels, 1)

    def remember(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` (thread-safe enough: a race computes it twice)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    # ------------------------------------------------------------------ stats-file helpers
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and named arrays (counts stored in the narrowest unsigned
        integer type that holds them)."""
        counts = self.rows.counts
        top = float(counts.max()) if counts.size else 0.0
        ctype = np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.uint64
        meta: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "channel_axis": self.channel_axis,
            "tensor_lo": self.tensor.histogram.lo,
            "tensor_hi": self.tensor.histogram.hi,
            "min": self.tensor.min,
            "max": self.tensor.max,
        }
        arrays = {
            "row_counts": counts.astype(ctype),
            "row_lo": np.asarray(self.rows.lo),
            "row_hi": np.asarray(self.rows.hi),
            "channel_min": np.asarray(self.channel_min),
            "channel_max": np.asarray(self.channel_max),
            "channel_sumsq": np.asarray(self.channel_sumsq),
            "tensor_counts": np.asarray(self.tensor.histogram.counts),
        }
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> WeightStats:
        """Inverse of :meth:`to_arrays`. Raises KeyError/ValueError/TypeError when damaged."""
        axis = meta.get("channel_axis")
        shape = tuple(int(d) for d in meta["shape"])
        rows = HistogramRows(
            np.asarray(arrays["row_counts"], dtype=np.float64), arrays["row_lo"], arrays["row_hi"]
        )
        cmin = np.asarray(arrays["channel_min"], dtype=np.float64)
        if rows.counts.shape[0] != cmin.size:
            raise ValueError(f"weight '{meta['name']}': histogram rows and channels differ")
        tensor = TensorStats(
            name=str(meta["name"]),
            histogram=Histogram(
                np.asarray(arrays["tensor_counts"]), float(meta["tensor_lo"]),
                float(meta["tensor_hi"]),
            ),
            min=float(meta["min"]),
            max=float(meta["max"]),
            count=math.prod(shape),
            channel_axis=None if axis is None else int(axis),
            channel_min=cmin,
            channel_max=np.asarray(arrays["channel_max"], dtype=np.float64),
        )
        return cls(
            name=str(meta["name"]),
            shape=shape,
            channel_axis=None if axis is None else int(axis),
            rows=rows,
            channel_min=cmin,
            channel_max=np.asarray(arrays["channel_max"], dtype=np.float64),
            channel_sumsq=np.asarray(arrays["channel_sumsq"], dtype=np.float64),
            tensor=tensor,
        )


def _window(vmin: np.ndarray, vmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's histogram range: its exact [min, max], or ``c ± |c|/256`` (``±1`` for
    0) for a constant channel, as :meth:`HistogramRows.from_values` does."""
    const = vmax <= vmin
    half = np.where(vmin != 0.0, np.abs(vmin) / 256.0, 1.0)
    lo = np.where(const, vmin - half, vmin)
    hi = np.where(const, vmin + half, vmax)
    return lo, hi


def _blocks(x3: np.ndarray) -> list[tuple[slice, slice]]:
    """Chunks of a (P, C, Q) view, each about ``_CHUNK`` values, along P or else along C."""
    p, c, q = x3.shape
    if p > 1:
        step = max(1, _CHUNK // max(c * q, 1))
        return [(slice(i, min(p, i + step)), slice(0, c)) for i in range(0, p, step)]
    step = max(1, _CHUNK // max(q, 1))
    return [(slice(0, 1), slice(i, min(c, i + step))) for i in range(0, c, step)]


def compute_weight_stats(
    w: ArrayLike, name: str, channel_axis: int | None, *, bins: int = CHANNEL_BINS
) -> WeightStats | None:
    """The :class:`WeightStats` of weight ``w`` (any float type; memory-mapped arrays are
    read chunk by chunk), or None when it holds non-finite or extreme (``|x| >= 1e30``)
    values, which the exact analysis reports instead.

    ``channel_axis`` names the output-channel axis (None: the tensor is one row).
    """
    arr = np.asarray(w)
    if arr.size == 0:
        return None
    ndim = arr.ndim
    axis = None if channel_axis is None else channel_axis % ndim
    if axis is None:
        x3 = arr.reshape(1, 1, -1)
    else:
        p = math.prod(arr.shape[:axis])
        x3 = arr.reshape(p, arr.shape[axis], -1)
    n_channels = x3.shape[1]
    chunks = _blocks(x3)

    # Pass 1: exact per-channel min, max and sum of squares (float64 sums).
    cmin = np.full(n_channels, np.inf)
    cmax = np.full(n_channels, -np.inf)
    sumsq = np.zeros(n_channels)
    for ps, cs in chunks:
        block = np.asarray(x3[ps, cs], dtype=np.float32)
        bmin = block.min(axis=(0, 2))
        bmax = block.max(axis=(0, 2))
        if not (np.isfinite(bmin).all() and np.isfinite(bmax).all()):
            return None
        np.minimum(cmin[cs], bmin, out=cmin[cs])
        np.maximum(cmax[cs], bmax, out=cmax[cs])
        sumsq[cs] += np.einsum("pcq,pcq->c", block, block, dtype=np.float64)
    tmin, tmax = float(cmin.min()), float(cmax.max())
    if max(abs(tmin), abs(tmax)) >= EXTREME_THRESHOLD:
        return None

    # Pass 2: every channel's histogram and the tensor's, from one index computation each.
    lo, hi = _window(cmin, cmax)
    inv = (bins / (hi - lo)).astype(np.float32)
    lo32 = lo.astype(np.float32)
    t_lo, t_hi = _window(np.array([tmin]), np.array([tmax]))
    t_inv = np.float32(TENSOR_BINS / (t_hi[0] - t_lo[0]))
    row_counts = np.zeros(n_channels * bins, dtype=np.int64)
    tensor_counts = np.zeros(TENSOR_BINS, dtype=np.int64)
    offsets = (np.arange(n_channels, dtype=np.int64) * bins).astype(np.int32 if
                                                                     n_channels * bins < 2**31
                                                                     else np.int64)
    for ps, cs in chunks:
        block = np.asarray(x3[ps, cs], dtype=np.float32)
        idx = (block - lo32[cs][None, :, None]) * inv[cs][None, :, None]
        bin_idx = idx.astype(offsets.dtype)
        np.clip(bin_idx, 0, bins - 1, out=bin_idx)
        bin_idx += offsets[cs][None, :, None]
        row_counts += np.bincount(bin_idx.ravel(), minlength=n_channels * bins)
        t_idx = ((block - np.float32(t_lo[0])) * t_inv).astype(np.int32)
        np.clip(t_idx, 0, TENSOR_BINS - 1, out=t_idx)
        tensor_counts += np.bincount(t_idx.ravel(), minlength=TENSOR_BINS)
    counts = row_counts.reshape(n_channels, bins)
    const = cmax <= cmin  # a constant channel sits in the middle of its window
    if const.any():
        counts[const] = 0
        counts[const, bins // 2] = x3.shape[0] * x3.shape[2]
    if tmax <= tmin:
        tensor_counts[:] = 0
        tensor_counts[TENSOR_BINS // 2] = arr.size
    tensor = TensorStats(
        name=name,
        histogram=Histogram(tensor_counts.astype(np.float64), float(t_lo[0]), float(t_hi[0])),
        min=tmin,
        max=tmax,
        count=arr.size,
        channel_axis=axis,
        channel_min=cmin if axis is not None else None,
        channel_max=cmax if axis is not None else None,
    )
    return WeightStats(
        name=name,
        shape=tuple(int(d) for d in arr.shape),
        channel_axis=axis,
        rows=HistogramRows(counts.astype(np.float64), lo, hi),
        channel_min=cmin,
        channel_max=cmax,
        channel_sumsq=sumsq,
        tensor=tensor,
    )
