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

from qviz.core.stats.channel_stats import narrowest_count_type
from qviz.core.stats.histogram import EXTREME_THRESHOLD, Histogram, HistogramRows
from qviz.core.stats.kernels import TensorBins, bin_channels, channel_extents
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
        ctype = narrowest_count_type(top)
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
        """Inverse of :meth:`to_arrays`. Raises KeyError/ValueError/TypeError when damaged
        or when a value is out of its domain."""
        axis = meta.get("channel_axis")
        shape = tuple(int(d) for d in meta["shape"])
        _check_arrays(shape, None if axis is None else int(axis), meta, arrays)
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


def _check_arrays(
    shape: tuple[int, ...], axis: int | None, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """A stored weight's figures in their domains: sizes that agree with the shape, finite
    ordered bounds, non-negative counts and sums of squares."""
    if any(d < 0 for d in shape) or (axis is not None and not 0 <= axis < len(shape)):
        raise ValueError(f"shape {list(shape)} / channel axis {axis} do not fit")
    n = 1 if axis is None else shape[axis]
    for key in ("row_lo", "row_hi", "channel_min", "channel_max", "channel_sumsq"):
        a = arrays[key]
        if a.dtype.kind != "f" or a.shape != (n,) or not np.isfinite(a).all():
            raise ValueError(f"{key} must be {n} finite numbers")
    counts = arrays["row_counts"]
    if counts.dtype.kind not in "iu" or counts.ndim != 2 or counts.shape[0] != n:
        raise ValueError(f"row_counts must be {n} rows of integer counts")
    tcounts = arrays["tensor_counts"]
    if tcounts.dtype.kind not in "iuf" or tcounts.ndim != 1 or not np.isfinite(tcounts).all():
        raise ValueError("tensor_counts must be one row of counts")
    if (counts < 0).any() or (tcounts < 0).any() or (arrays["channel_sumsq"] < 0).any():
        raise ValueError("counts and sums of squares must not be negative")
    if not (arrays["row_lo"] < arrays["row_hi"]).all():
        raise ValueError("every channel's histogram range must have lo < hi")
    if not (arrays["channel_min"] <= arrays["channel_max"]).all():
        raise ValueError("a channel's min is above its max")
    bounds = [float(meta[k]) for k in ("tensor_lo", "tensor_hi", "min", "max")]
    if not all(math.isfinite(b) for b in bounds) or not bounds[0] < bounds[1]:
        raise ValueError("the tensor's histogram range must be finite with lo < hi")


def _window(vmin: np.ndarray, vmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's histogram range: its exact [min, max], or ``c ± |c|/256`` (``±1`` for
    0) for a constant channel, as :meth:`HistogramRows.from_values` does."""
    const = vmax <= vmin
    half = np.where(vmin != 0.0, np.abs(vmin) / 256.0, 1.0)
    lo = np.where(const, vmin - half, vmin)
    hi = np.where(const, vmin + half, vmax)
    return lo, hi


# Channels per chunk when they are the last axis (a MatMul weight): a chunk is a strided
# view of whole rows of this many channels, so no transposed copy is made and the counts of
# one chunk (channels x bins, 64 KB) stay in the first-level cache while they are
# incremented (on the 1 B decoder's weights 4.2 ns per value, against 4.7 with 256).
_CHANNELS_LAST_GROUP = 64


def _chunks(x3: np.ndarray) -> tuple[list[tuple[slice, slice]], int]:
    """Chunks (over P, over C) of the (P, C, Q) view of about ``_CHUNK`` values each, and
    the axis of a chunk's 2-D form (see :func:`_block`) that per-channel figures reduce."""
    p, c, q = x3.shape
    if q == 1 and p > 1:  # channels last: rows of a group of channels
        width = min(c, _CHANNELS_LAST_GROUP)
        rows = max(1, _CHUNK // width)
        return [
            (slice(i, min(p, i + rows)), slice(j, min(c, j + width)))
            for j in range(0, c, width)
            for i in range(0, p, rows)
        ], 0
    step = max(1, _CHUNK // max(p * q, 1))  # channels first: whole channels
    return [(slice(0, p), slice(j, min(c, j + step))) for j in range(0, c, step)], 1


def _block(x3: np.ndarray, ps: slice, cs: slice, along: int) -> np.ndarray:
    """A chunk as a 2-D array: (rows, channels) when ``along`` is 0, else (channels, values).
    Views where the layout allows (no copy); float32 values are read as they are."""
    if along == 0:
        return x3[ps, cs, 0]
    block = x3[ps, cs, :]
    if block.shape[0] == 1:
        return block[0]
    return np.moveaxis(block, 1, 0).reshape(block.shape[1], -1)


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
    chunks, along = _chunks(x3)

    def per_channel(values: np.ndarray) -> np.ndarray:
        """A per-channel (C',) array laid out to broadcast against a chunk."""
        return values[None, :] if along == 0 else values[:, None]

    if x3.dtype == np.float32:
        return _compiled(arr, x3, name, axis, bins, chunks, along)
    # Pass 1: exact per-channel min, max and sum of squares (float64 sums).
    cmin = np.full(n_channels, np.inf)
    cmax = np.full(n_channels, -np.inf)
    sumsq = np.zeros(n_channels)
    spec = "pc,pc->c" if along == 0 else "cv,cv->c"
    for ps, cs in chunks:
        block = _block(x3, ps, cs, along)
        np.minimum(cmin[cs], block.min(axis=along), out=cmin[cs])
        np.maximum(cmax[cs], block.max(axis=along), out=cmax[cs])
        sumsq[cs] += np.einsum(spec, block, block, dtype=np.float64)
    if not (np.isfinite(cmin).all() and np.isfinite(cmax).all()):
        return None
    tmin, tmax = float(cmin.min()), float(cmax.max())
    if max(abs(tmin), abs(tmax)) >= EXTREME_THRESHOLD:
        return None

    # Pass 2: every channel's histogram and the tensor's. Work arrays are allocated once:
    # faulting in fresh memory for every chunk costs more than the arithmetic.
    lo, hi = _window(cmin, cmax)
    inv = (bins / (hi - lo)).astype(np.float32)
    lo32 = lo.astype(np.float32)
    t_lo, t_hi = _window(np.array([tmin]), np.array([tmax]))
    t_lo32 = np.float32(t_lo[0])
    t_inv = np.float32(TENSOR_BINS / (t_hi[0] - t_lo[0]))
    row_counts = np.zeros((n_channels, bins), dtype=np.int64)
    tensor_counts = np.zeros(TENSOR_BINS, dtype=np.int64)
    biggest = max(_block(x3, ps, cs, along).size for ps, cs in chunks[:2])
    work = np.empty(biggest, dtype=np.float32)
    index = np.empty(biggest, dtype=np.intp)
    for ps, cs in chunks:
        block = _block(x3, ps, cs, along)
        n = cs.stop - cs.start
        scaled = work[: block.size].reshape(block.shape)
        idx = index[: block.size].reshape(block.shape)
        np.subtract(block, per_channel(lo32[cs]), out=scaled, casting="unsafe")
        scaled *= per_channel(inv[cs])
        np.copyto(idx, scaled, casting="unsafe")
        np.clip(idx, 0, bins - 1, out=idx)
        idx += per_channel(np.arange(n, dtype=np.intp) * bins)
        row_counts[cs] += np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins)
        np.subtract(block, t_lo32, out=scaled, casting="unsafe")
        scaled *= t_inv
        np.copyto(idx, scaled, casting="unsafe")
        np.clip(idx, 0, TENSOR_BINS - 1, out=idx)
        tensor_counts += np.bincount(idx.ravel(), minlength=TENSOR_BINS)
    return _finish(arr, x3, name, axis, row_counts, tensor_counts, cmin, cmax, sumsq)


def _compiled(
    arr: np.ndarray, x3: np.ndarray, name: str, axis: int | None, bins: int,
    chunks: list[tuple[slice, slice]], along: int,
) -> WeightStats | None:
    """`compute_weight_stats` of a float32 weight in two compiled passes per chunk
    (`qviz.core.stats.kernels`): the same float32 bin arithmetic as the NumPy passes, so the
    same counts; sums of squares accumulate in float64."""
    n_channels = x3.shape[1]

    def view(ps: slice, cs: slice) -> np.ndarray:  # a chunk as (outer, channels, inner)
        block = _block(x3, ps, cs, along)
        return block[:, :, None] if along == 0 else block[None, :, :]

    if x3.flags.c_contiguous:
        # The whole tensor in one call: contiguous rows need no copy, and the per-channel
        # extremes of channels-last rows are vectorised across the row.
        found = channel_extents(x3)
        if found is None:
            return None  # NaN or Inf: left to the exact analysis
        cmin, cmax = found[0].astype(np.float64), found[1].astype(np.float64)
    else:
        cmin = np.full(n_channels, np.inf)
        cmax = np.full(n_channels, -np.inf)
        for ps, cs in chunks:
            found = channel_extents(view(ps, cs))
            if found is None:
                return None  # NaN or Inf: left to the exact analysis
            np.minimum(cmin[cs], found[0], out=cmin[cs])
            np.maximum(cmax[cs], found[1], out=cmax[cs])
    tmin, tmax = float(cmin.min()), float(cmax.max())
    if max(abs(tmin), abs(tmax)) >= EXTREME_THRESHOLD:
        return None
    lo, hi = _window(cmin, cmax)
    inv = (bins / (hi - lo)).astype(np.float32)
    t_lo, t_hi = _window(np.array([tmin]), np.array([tmax]))
    tensor = TensorBins(
        float(np.float32(t_lo[0])), float(np.float32(TENSOR_BINS / (t_hi[0] - t_lo[0]))),
        np.zeros(TENSOR_BINS), np.zeros(256), stride=0,  # no exponent counts wanted
    )
    lo32 = lo.astype(np.float32)
    hist = np.zeros((n_channels, bins))
    sums = np.zeros(n_channels)
    sumsq = np.zeros(n_channels)
    for ps, cs in chunks:
        bin_channels(view(ps, cs), lo32[cs], inv[cs], hist[cs], sums[cs], sumsq[cs], tensor)
    return _finish(arr, x3, name, axis, hist, tensor.counts, cmin, cmax, sumsq)


def _finish(
    arr: np.ndarray, x3: np.ndarray, name: str, axis: int | None, counts: np.ndarray,
    tensor_counts: np.ndarray, cmin: np.ndarray, cmax: np.ndarray, sumsq: np.ndarray,
) -> WeightStats:
    bins = counts.shape[1]
    lo, hi = _window(cmin, cmax)
    tmin, tmax = float(cmin.min()), float(cmax.max())
    t_lo, t_hi = _window(np.array([tmin]), np.array([tmax]))
    const = cmax <= cmin  # a constant channel sits in the middle of its window
    if const.any():
        counts[const] = 0
        counts[const, bins // 2] = x3.shape[0] * x3.shape[2]
    if tmax <= tmin:
        tensor_counts[:] = 0
        tensor_counts[TENSOR_BINS // 2] = arr.size
    tensor = TensorStats(
        name=name,
        histogram=Histogram(tensor_counts, float(t_lo[0]), float(t_hi[0])),
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
        rows=HistogramRows(counts, lo, hi),  # float64 counts (HistogramRows keeps a copy)
        channel_min=cmin,
        channel_max=cmax,
        channel_sumsq=sumsq,
        tensor=tensor,
    )
