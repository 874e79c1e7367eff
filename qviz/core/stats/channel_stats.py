"""Per-channel activation statistics: moments and a small histogram per input channel.

Transforms that rescale an activation's channels (SmoothQuant, cross-layer equalization) need
more than the per-tensor histogram: how loud each channel is (``absmax``, from the exact
per-channel min/max that :class:`~qviz.core.stats.tensor_stats.TensorStats` already keeps),
its mean (bias correction) and mean square (the error a channel's rounding adds at a layer's
output), and a small histogram per channel, from which the per-tensor histogram of the
*rescaled* tensor ``x / s`` is rebuilt exactly up to bin resolution (:func:`rescaled_histogram`)
without running the model again.

Memory is ``channels x (bins + 3)`` float64 per tensor, whatever the number of samples. Each
channel's histogram starts at the channel's exact range in the first batch and grows by merging
bin pairs (the bin width doubles), as :class:`~qviz.core.stats.histogram.HistogramAccumulator`
does for a whole tensor, so no count is ever split. Values with ``|x| >= EXTREME_THRESHOLD``
(mask fills) and non-finite values are left out, as from the tensor's histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.stats.histogram import EXTREME_THRESHOLD, Histogram, HistogramRows
from qviz.core.stats.kernels import TensorBins, bin_channels, spread_rows

__all__ = [
    "DEFAULT_CHANNEL_BINS",
    "ChannelMoments",
    "ChannelMomentsAccumulator",
    "rescaled_histogram",
]

DEFAULT_CHANNEL_BINS = 64
"""Histogram bins per channel: fine enough that rebuilding a rescaled tensor's histogram
changes its SQNR estimate by a fraction of a dB (tested), small enough for wide layers."""


@dataclass(frozen=True, eq=False)
class ChannelMoments:
    """Per channel (arrays of length C, float64): ``count`` of values (finite, not extreme),
    their ``mean`` and ``mean_sq`` (mean of x²), and a histogram of ``bins`` equal bins over
    ``[hist_lo[c], hist_hi[c]]`` (``hist_counts`` (C, bins); None when not collected).

    A channel that never saw a value has count 0, mean and mean_sq 0 and an empty histogram.
    """

    count: np.ndarray
    mean: np.ndarray
    mean_sq: np.ndarray
    hist_counts: np.ndarray | None = None
    hist_lo: np.ndarray | None = None
    hist_hi: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("count", "mean", "mean_sq", "hist_lo", "hist_hi"):
            value = getattr(self, name)
            if value is not None:
                arr = np.array(value, dtype=np.float64).reshape(-1)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        n = self.count.size
        if self.mean.size != n or self.mean_sq.size != n:
            raise ValueError("count, mean and mean_sq must have one value per channel")
        hist = (self.hist_counts, self.hist_lo, self.hist_hi)
        if any(h is None for h in hist) != all(h is None for h in hist):
            raise ValueError("per-channel histograms need counts, lo and hi together")
        if self.hist_counts is not None:
            counts = np.array(self.hist_counts, dtype=np.float64)
            assert self.hist_lo is not None and self.hist_hi is not None
            if counts.ndim != 2 or counts.shape[0] != n or self.hist_lo.size != n:
                raise ValueError("per-channel histograms must be (channels, bins)")
            if not (self.hist_hi > self.hist_lo).all():
                raise ValueError("per-channel histogram ranges need lo < hi")
            counts.setflags(write=False)
            object.__setattr__(self, "hist_counts", counts)

    @property
    def channels(self) -> int:
        return int(self.count.size)

    @property
    def has_histograms(self) -> bool:
        return self.hist_counts is not None

    def rows(self) -> HistogramRows:
        """The per-channel histograms as one :class:`HistogramRows` (C rows)."""
        if self.hist_counts is None or self.hist_lo is None or self.hist_hi is None:
            raise ValueError("these statistics hold no per-channel histograms")
        return HistogramRows(self.hist_counts, self.hist_lo, self.hist_hi)

    def scaled(self, s: np.ndarray) -> ChannelMoments:
        """The moments of ``x / s`` (``s`` > 0, one per channel): exact."""
        s = _positive(s, self.channels)
        lo = hi = None
        if self.hist_lo is not None and self.hist_hi is not None:
            lo, hi = self.hist_lo / s, self.hist_hi / s
        return ChannelMoments(
            self.count, self.mean / s, self.mean_sq / (s * s), self.hist_counts, lo, hi
        )

    # ------------------------------------------------------------------ stats-file helpers
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "channel_count": np.asarray(self.count),
            "channel_mean": np.asarray(self.mean),
            "channel_mean_sq": np.asarray(self.mean_sq),
        }
        if self.hist_counts is not None:
            assert self.hist_lo is not None and self.hist_hi is not None
            arrays["channel_hist"] = compact_counts(self.hist_counts)
            arrays["channel_hist_lo"] = np.asarray(self.hist_lo)
            arrays["channel_hist_hi"] = np.asarray(self.hist_hi)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ChannelMoments | None:
        """Inverse of :meth:`to_arrays`; None when the arrays hold no moments (older files)."""
        if "channel_mean" not in arrays:
            return None
        return cls(
            arrays["channel_count"],
            arrays["channel_mean"],
            arrays["channel_mean_sq"],
            arrays.get("channel_hist"),
            arrays.get("channel_hist_lo"),
            arrays.get("channel_hist_hi"),
        )


def narrowest_count_type(top: float) -> type[np.unsignedinteger]:
    """The narrowest unsigned integer type holding whole counts up to `top` (how statistics
    files store histogram counts)."""
    return (np.uint8 if top < 2**8 else np.uint16 if top < 2**16
            else np.uint32 if top < 2**32 else np.uint64)


def compact_counts(counts: np.ndarray) -> np.ndarray:
    """Whole, non-negative counts in the narrowest unsigned type that holds them, other counts
    as they are: a channel's histogram over a few thousand samples fits in 16 bits, a quarter
    of the float64 that a statistics file would otherwise deflate (0.4 s of a 4 GB model's
    1.3 s save). Reading converts them back to float64."""
    c = np.asarray(counts)
    if c.size == 0 or c.dtype.kind not in "fiu":
        return c
    top = float(c.max())
    if float(c.min()) < 0 or top >= 2**32:
        return c
    narrow = c.astype(narrowest_count_type(top))
    return narrow if np.array_equal(narrow, c) else c  # fractional counts stay as they are


def _positive(s: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(s, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{arr.size} scales for {n} channels")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError("channel scales must be finite and positive")
    return arr


def rescaled_histogram(moments: ChannelMoments, s: np.ndarray, bins: int) -> Histogram:
    """The histogram of the whole tensor ``x / s`` (``bins`` equal bins over its range).

    Each channel's bins are taken to hold their values spread uniformly (as every histogram in
    qviz does); channel ``c``'s bin ``[a, b)`` becomes ``[a / s_c, b / s_c)`` and its count is
    shared among the target bins it overlaps in proportion to the overlap (compiled:
    `kernels.spread_rows`, channels x bins work, not channels x target bins). With ``s = 1``
    this is the tensor's histogram at the resolution of the channels' bins.
    """
    scaled = moments.scaled(s)
    assert scaled.hist_counts is not None and scaled.hist_lo is not None
    assert scaled.hist_hi is not None
    counts_all = scaled.hist_counts
    occupied = counts_all.sum(axis=1) > 0
    if not occupied.any():
        return Histogram(np.zeros(bins), 0.0, 1.0)
    lo_c, hi_c, counts = scaled.hist_lo[occupied], scaled.hist_hi[occupied], counts_all[occupied]
    lo, hi = float(lo_c.min()), float(hi_c.max())
    out = spread_rows(counts, lo_c, hi_c, lo, hi, bins)
    return Histogram(out, lo, hi)


_SLICE = 1 << 20  # values per slice of a batch


def as_3d(x: np.ndarray, axis: int) -> np.ndarray:
    """(outer, channels, inner): a view for contiguous batches, so that per-channel
    reductions run over contiguous memory instead of strided axes."""
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, x.shape[axis], -1)


class ChannelMomentsAccumulator:
    """Streams batches into :class:`ChannelMoments`; memory ``channels x (bins + 3)`` floats.

    ``bins`` = 0 keeps the moments only (no per-channel histograms).
    """

    def __init__(self, bins: int = DEFAULT_CHANNEL_BINS) -> None:
        if bins < 0 or bins % 2:
            raise ValueError(f"per-channel bins must be an even number >= 0, not {bins}")
        self._bins = int(bins)
        self._count: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._sum_sq: np.ndarray | None = None
        self._hist: np.ndarray | None = None
        self._lo: np.ndarray | None = None
        self._width: np.ndarray | None = None
        self._started: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self._count, self._sum, self._sum_sq, self._hist, self._lo, self._width)
        return sum(a.nbytes for a in arrays if a is not None)

    def update(
        self, a: np.ndarray, axis: int, *, clean: bool,
        extent: tuple[np.ndarray, np.ndarray] | None = None,
        tensor: TensorBins | None = None,
    ) -> None:
        """Fold a batch in, channels along ``axis`` (their count must not change).

        ``clean``: the caller knows every value is finite and below ``EXTREME_THRESHOLD``
        (else each value is checked). ``extent``: the batch's per-channel (min, max) when
        the caller has them (clean batches only). ``tensor``: the tensor histogram to fill in
        the same pass (a clean float32 batch with per-channel histograms only: see
        :meth:`takes_tensor_bins`).
        """
        n_channels = a.shape[axis]
        if self._count is None:
            self._count = np.zeros(n_channels)
            self._sum = np.zeros(n_channels)
            self._sum_sq = np.zeros(n_channels)
        assert self._sum is not None and self._sum_sq is not None
        x = a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
        x3 = as_3d(np.ascontiguousarray(x), axis)
        valid: np.ndarray | None = None
        if not clean:
            finite = np.isfinite(x3)
            valid = finite & (np.abs(np.where(finite, x3, 0.0)) < EXTREME_THRESHOLD)
            x3 = np.where(valid, x3, 0.0).astype(x3.dtype)
            self._count += valid.sum(axis=(0, 2))
            extent = None
        else:
            self._count += x3.shape[0] * x3.shape[2]
        # float64 accumulators; slices of the outer axis keep temporaries (squares, bin
        # indices) small whatever the batch size.
        step = max(1, _SLICE // max(1, n_channels * x3.shape[2]))
        # A clean float32 batch is summed in the same compiled pass that bins it.
        fused = valid is None and self.takes_tensor_bins(x3.dtype)
        if not fused:
            for i in range(0, x3.shape[0], step):
                part = x3[i : i + step]
                self._sum += part.sum(axis=2, dtype=np.float64).sum(axis=0)
                self._sum_sq += np.square(part).sum(axis=2, dtype=np.float64).sum(axis=0)
        if tensor is not None and not fused:
            raise ValueError("the tensor histogram is filled in the fused pass only")
        if self._bins:
            self._update_histograms(x3, valid, extent, step, fused, tensor)

    def takes_tensor_bins(self, dtype: np.dtype) -> bool:
        """Whether a clean batch of `dtype` is binned in the compiled pass that can fill the
        tensor's histogram too."""
        return self._bins > 0 and dtype == np.float32

    def finish(self) -> ChannelMoments | None:
        if self._count is None or self._sum is None or self._sum_sq is None:
            return None
        n = np.maximum(self._count, 1.0)
        mean, mean_sq = self._sum / n, self._sum_sq / n
        if self._hist is None or self._lo is None or self._width is None:
            return ChannelMoments(self._count.copy(), mean, mean_sq)
        started = self._started if self._started is not None else np.zeros(mean.size, bool)
        lo = np.where(started, self._lo, 0.0)
        hi = np.where(started, self._lo + self._bins * self._width, 1.0)
        return ChannelMoments(self._count.copy(), mean, mean_sq, self._hist.copy(), lo, hi)

    # ------------------------------------------------------------------ histograms
    def _update_histograms(
        self, x3: np.ndarray, valid: np.ndarray | None,
        extent: tuple[np.ndarray, np.ndarray] | None, step: int, fused: bool,
        tensor: TensorBins | None,
    ) -> None:
        n_channels = x3.shape[1]
        bins = self._bins
        if self._hist is None:
            self._hist = np.zeros((n_channels, bins))
            self._lo = np.zeros(n_channels)
            self._width = np.ones(n_channels)
            self._started = np.zeros(n_channels, dtype=bool)
        assert self._lo is not None and self._width is not None and self._started is not None
        has: np.ndarray
        if valid is not None:
            has = np.asarray(valid.any(axis=(0, 2)))
            vmin = np.where(valid, x3, np.inf).min(axis=2).min(axis=0)
            vmax = np.where(valid, x3, -np.inf).max(axis=2).max(axis=0)
        else:
            has = np.full(n_channels, x3.size > 0)
            if extent is not None:
                vmin, vmax = extent
            else:
                vmin, vmax = x3.min(axis=2).min(axis=0), x3.max(axis=2).max(axis=0)
        vmin = np.where(has, vmin, 0.0).astype(np.float64)
        vmax = np.where(has, vmax, 0.0).astype(np.float64)
        # Channels seen for the first time start at their exact range (a constant channel at
        # a narrow window around its value, as the tensor histogram's snapshot gives).
        new = has & ~self._started
        if new.any():
            const = vmax <= vmin
            half = np.where(vmin != 0.0, np.abs(vmin) / 256.0, 1.0)
            lo = np.where(const, vmin - half, vmin)
            hi = np.where(const, vmin + half, vmax)
            width = (hi - lo) / bins
            # Rounding can leave lo + bins * width a hair below hi: widen by one ulp.
            width = np.where(lo + bins * width < hi, np.nextafter(width, np.inf), width)
            self._lo[new], self._width[new] = lo[new], width[new]
            self._started[new] = True
        self._grow(has, vmin, vmax)
        # float32 arithmetic where the data is float32 (half the memory traffic); a value
        # within ~1e-7 of a bin edge may land in the neighbouring bin, as in the tensor's own
        # histogram.
        if fused:  # the same float32 binning, plus the sums, in one compiled pass
            assert self._sum is not None and self._sum_sq is not None
            bin_channels(
                x3, self._lo, 1.0 / self._width, self._hist, self._sum, self._sum_sq, tensor
            )
            return
        dtype = np.float32 if x3.dtype == np.float32 else np.float64
        lo_c = self._lo.astype(dtype).reshape(1, -1, 1)
        inv_c = (1.0 / self._width).astype(dtype).reshape(1, -1, 1)
        offsets = (bins * np.arange(n_channels)).reshape(1, -1, 1)
        for i in range(0, x3.shape[0], step):
            scaled = np.subtract(x3[i : i + step], lo_c, dtype=dtype)
            scaled *= inv_c
            np.clip(scaled, 0, bins - 1, out=scaled)
            index = scaled.astype(np.intp)
            index += offsets
            flat = index[valid[i : i + step]] if valid is not None else index.reshape(-1)
            counts = np.bincount(flat, minlength=n_channels * bins)
            self._hist += counts.reshape(n_channels, bins)

    def _grow(self, has: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> None:
        """Double the width of each channel whose range the batch leaves, until it fits."""
        assert self._hist is not None and self._lo is not None and self._width is not None
        bins, half = self._bins, self._bins // 2
        for _ in range(2100):  # float64 spans at most ~2^2100: the loop always ends
            hi = self._lo + bins * self._width
            need = has & ((vmin < self._lo) | (vmax > hi))
            if not need.any():
                return
            idx = np.flatnonzero(need)
            down = (self._lo[idx] - vmin[idx]) > (vmax[idx] - hi[idx])
            merged = self._hist[idx].reshape(idx.size, half, 2).sum(axis=2)
            grown = np.zeros((idx.size, bins))
            grown[down, half:] = merged[down]
            grown[~down, :half] = merged[~down]
            self._hist[idx] = grown
            self._lo[idx] = np.where(down, self._lo[idx] - bins * self._width[idx], self._lo[idx])
            self._width[idx] *= 2.0
