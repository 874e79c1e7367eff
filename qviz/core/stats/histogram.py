"""Streaming histograms: memory is a fixed number of bins, whatever the number of values.

Calibration folds every batch of every activation into a :class:`HistogramAccumulator` and
drops the batch. The accumulator's range is set by the first batch and grows by merging
adjacent bin pairs (the bin width doubles), so every new bin is an exact union of old bins: no
count is ever split or guessed, and nothing but ``bins`` numbers is kept. onnxruntime's
``HistogramCollector`` instead appends bins when the range grows (its memory grows with the
range) and PyTorch's ``HistogramObserver`` re-bins by interpolation (counts get split); range
doubling keeps memory at ``tensors x bins`` and every count exact.

Values with ``|x| >= EXTREME_THRESHOLD`` (attention-mask fills such as -3.4e38) are counted but
kept out of the histogram: one of them would stretch the range so far that every ordinary value
lands in a single bin. NaN and Inf are counted and skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.errors import QvizError
from qviz.core.stats.kernels import TensorBins, bin_values, count_exponents

__all__ = [
    "EXPONENT_BINS",
    "EXTREME_THRESHOLD",
    "Histogram",
    "HistogramAccumulator",
    "HistogramRows",
    "exponent_bin_upper",
]

EXTREME_THRESHOLD = 1e30
"""Finite values at least this large in magnitude are "extreme" (mask fills), not data."""

EXPONENT_BINS = 256
"""Bins of the magnitude histogram: one per float32 binary exponent (see
:attr:`HistogramAccumulator.exponent_counts`)."""

# Values are binned in chunks so that the float64 temporaries stay small (and in cache) even
# for a batch of hundreds of millions of values.
_CHUNK = 1 << 18
# Points (rows x points) of HistogramRows.cdf and .from_values per slice of rows.
_CDF_CHUNK = 1 << 17
EXPONENT_STRIDE = 8
# Golden-ratio offsets give each bin's sample points a different phase, so that sub-bin
# samples do not line up with a quantization grid whose step divides the bin width.
_GOLDEN = 0.6180339887498949


@dataclass(frozen=True, eq=False)
class Histogram:
    """An immutable histogram with ``len(counts)`` equal bins spanning ``[lo, hi]``.

    ``counts`` is float64 (exact for integer counts up to 2^53) and read-only; edges are
    ``np.linspace(lo, hi, n + 1)``, the convention of ``np.histogram``. ``eq=False``: arrays
    have no single truth value, so equality is identity.

    Within a bin, values are taken to be spread uniformly: :meth:`cdf`, :meth:`quantile` and
    :meth:`abs_histogram` are exact under that assumption, which is what "within one bin"
    means for every number derived from a histogram.
    """

    counts: np.ndarray
    lo: float
    hi: float

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size < 1:
            raise ValueError(f"histogram counts must be a non-empty 1-D array, not {counts.shape}")
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"histogram range must be finite with lo < hi, not [{lo}, {hi}]")
        if (counts < 0).any() or not np.isfinite(counts).all():
            raise ValueError("histogram counts must be finite and non-negative")
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    # ------------------------------------------------------------------ derived
    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        edges = self.edges
        return 0.5 * (edges[:-1] + edges[1:])

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.bins

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    # ------------------------------------------------------------------ distribution
    def cdf(self, x: ArrayLike) -> np.ndarray:
        """Count of values ``<= x`` (piecewise linear inside bins; 0 below, total above)."""
        cum = np.concatenate(([0.0], np.cumsum(self.counts)))
        return np.interp(np.asarray(x, dtype=np.float64), self.edges, cum)

    def quantile(self, q: float) -> float:
        """Smallest ``x`` with ``cdf(x) >= q * total`` (``q`` in [0, 1]).

        The same definition as onnxruntime's percentile calibration (first bin where the
        cumulative distribution reaches ``q``), refined inside that bin by linear
        interpolation instead of snapping to its lower edge.
        """
        return float(HistogramRows.from_histogram(self).quantile(q)[0])

    def abs_histogram(self, amax: float | None = None) -> Histogram:
        """Histogram of ``|x|`` over ``[0, amax]`` with (about) this histogram's bin width.

        ``amax`` defaults to ``max(|lo|, |hi|)``; callers pass the exact largest magnitude to
        drop the empty bins a grown range carries. See :meth:`HistogramRows.abs_rows`.
        """
        full = max(abs(self.lo), abs(self.hi))
        amax = full if amax is None else min(float(amax), full)
        rows = HistogramRows.from_histogram(self).abs_rows(np.array([amax]))
        return Histogram(rows.counts[0], float(rows.lo[0]), float(rows.hi[0]))

    def sample_points(self, per_bin: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Points and weights standing for the values of the occupied bins (1-D arrays); see
        :meth:`HistogramRows.sample_points`."""
        points, weights = HistogramRows.from_histogram(self).sample_points(per_bin)
        return points[0], weights[0]


@dataclass(frozen=True, eq=False)
class HistogramRows:
    """``R`` histograms of ``B`` bins each, each over its own range ``[lo[r], hi[r]]``.

    The vectorized form behind every histogram method: per-channel and per-group weight
    histograms are computed at once, and a single :class:`Histogram` is the case ``R = 1``.
    Values are taken to be spread uniformly inside each bin.
    """

    counts: np.ndarray  # (R, B) float64
    lo: np.ndarray  # (R,)
    hi: np.ndarray  # (R,), > lo

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.float64)
        lo = np.array(self.lo, dtype=np.float64).reshape(-1)
        hi = np.array(self.hi, dtype=np.float64).reshape(-1)
        if counts.ndim != 2 or counts.shape[1] < 1 or lo.shape != hi.shape:
            raise ValueError("HistogramRows needs counts (R, B) and lo, hi of length R")
        if counts.shape[0] != lo.size or not (hi > lo).all():
            raise ValueError("HistogramRows needs one range per row with lo < hi")
        for arr in (counts, lo, hi):
            arr.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def from_histogram(cls, hist: Histogram) -> HistogramRows:
        return cls(hist.counts[None, :], np.array([hist.lo]), np.array([hist.hi]))

    @classmethod
    def from_values(cls, values: np.ndarray, bins: int) -> HistogramRows:
        """One histogram per row of ``values`` (R, N) over the row's exact [min, max].

        NaN entries are ignored (they pad short rows, e.g. the last block of a per-group
        weight). A constant row gets the window ``c ± |c|/256`` (``±1`` for 0), as
        :meth:`HistogramAccumulator.snapshot` gives; an all-NaN row is empty on [0, 1].
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2:
            raise ValueError(f"values must be 2-D (rows, values), not {v.shape}")
        valid: np.ndarray | None = None  # None: no NaN anywhere (a row's min would be NaN)
        if v.shape[1] and not np.isnan(vmin := v.min(axis=1)).any():
            has, vmax = np.ones(v.shape[0], dtype=bool), v.max(axis=1)
        else:
            valid = ~np.isnan(v)
            has = np.asarray(valid.any(axis=1))
            vmin = np.where(has, np.where(valid, v, np.inf).min(axis=1), 0.0)
            vmax = np.where(has, np.where(valid, v, -np.inf).max(axis=1), 0.0)
        const = vmax <= vmin
        half = np.where(vmin != 0.0, np.abs(vmin) / 256.0, 1.0)
        lo = np.where(has, np.where(const, vmin - half, vmin), 0.0)
        hi = np.where(has, np.where(const, vmin + half, vmax), 1.0)
        width = (hi - lo) / bins
        counts = np.empty((v.shape[0], bins))
        step = max(1, _CDF_CHUNK // max(v.shape[1], 1))  # slices of rows: temporaries in cache
        for r0 in range(0, v.shape[0], step):
            r1 = min(v.shape[0], r0 + step)
            x = v[r0:r1] if valid is None else np.where(valid[r0:r1], v[r0:r1], lo[r0:r1, None])
            index = np.floor((x - lo[r0:r1, None]) / width[r0:r1, None])
            index = np.clip(index, 0, bins - 1).astype(np.intp)
            index[const[r0:r1]] = bins // 2  # a constant row sits in the middle of its window
            index += bins * np.arange(r1 - r0)[:, None]
            flat = index.ravel() if valid is None else index[valid[r0:r1]]
            counts[r0:r1] = np.bincount(flat, minlength=(r1 - r0) * bins).reshape(-1, bins)
        return cls(counts, lo, hi)

    # ------------------------------------------------------------------ derived
    @property
    def width(self) -> np.ndarray:
        return (self.hi - self.lo) / self.counts.shape[1]

    @property
    def total(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    def _cum(self) -> np.ndarray:
        # Kept once computed: a weight's rows answer many cdf/quantile questions.
        cached = self.__dict__.get("_cum_counts")
        if cached is not None:
            return cached
        cum = np.zeros((self.counts.shape[0], self.counts.shape[1] + 1))
        np.cumsum(self.counts, axis=1, out=cum[:, 1:])
        cum.setflags(write=False)
        object.__setattr__(self, "_cum_counts", cum)
        return cum

    def cdf(self, x: ArrayLike) -> np.ndarray:
        """Count of values ``<= x[r, k]`` in row ``r``; ``x`` is (R, K) or broadcasts to it."""
        xx = np.asarray(x, dtype=np.float64)
        n_rows = self.counts.shape[0]
        if xx.ndim < 2:
            xx = np.broadcast_to(xx, (n_rows, xx.size))
        step = max(1, _CDF_CHUNK // max(xx.shape[1], 1))
        width = self.width
        if xx.shape[0] != n_rows or n_rows <= step:
            return self._cdf_rows(xx, width, 0, n_rows)
        # Slices of rows keep the (rows, points) temporaries in the processor's cache.
        out = np.empty(xx.shape)
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            out[r0:r1] = self._cdf_rows(xx[r0:r1], width, r0, r1)
        return out

    def _cdf_rows(self, xx: np.ndarray, width: np.ndarray, r0: int, r1: int) -> np.ndarray:
        n_bins = self.counts.shape[1]
        u = (xx - self.lo[r0:r1, None]) / width[r0:r1, None]
        k = np.clip(np.floor(u), 0, n_bins - 1).astype(np.intp)
        frac = np.clip(u - k, 0.0, 1.0)
        cum = self._cum()
        # Flat indices: numpy's take_along_axis builds a broadcast index per call, which
        # costs more than the lookup when a weight's thousands of rows are asked often.
        rows = np.arange(r0, r0 + k.shape[0], dtype=np.intp)[:, None]
        at_cum = np.take(cum.reshape(-1), rows * (n_bins + 1) + k)
        at_count = np.take(self.counts.reshape(-1), rows * n_bins + k)
        return at_cum + frac * at_count

    def quantile(self, q: ArrayLike) -> np.ndarray:
        """Per row, the smallest ``x`` with ``cdf(x) >= q * total`` (``q`` scalar or (R,)).

        ``q = 0`` gives the low edge of the first occupied bin; an empty row gives ``lo``.
        """
        cum = self._cum()
        total = cum[:, -1]
        target = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0) * total
        target = np.broadcast_to(target, total.shape)
        n_bins = self.counts.shape[1]
        i = np.clip((cum < target[:, None]).sum(axis=1), 1, n_bins)
        rows = np.arange(cum.shape[0])
        lower, upper = cum[rows, i - 1], cum[rows, i]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(upper > lower, (target - lower) / (upper - lower), 0.0)
        x = self.lo + (i - 1 + np.clip(frac, 0.0, 1.0)) * self.width
        first = self.lo + np.argmax(self.counts > 0, axis=1) * self.width
        return np.where(target <= 0.0, np.where(total > 0, first, self.lo), x)

    def abs_rows(self, amax: ArrayLike) -> HistogramRows:
        """Histograms of ``|x|`` over ``[0, amax[r]]`` with about each row's bin width.

        All rows get the same bin count (the largest ``amax / width``, at most ``2 B``).
        Negative bins fold onto positive ones through the piecewise-linear CDF: exact when 0
        is a bin edge, otherwise a folded bin's count is split in proportion to its overlap.
        onnxruntime's symmetric percentile and TensorRT's entropy calibration both work on
        this ``|x|`` histogram. A row whose ``amax`` is 0 puts everything in its first bin.
        """
        width = self.width
        full = np.maximum(np.abs(self.lo), np.abs(self.hi))
        a = np.minimum(np.broadcast_to(np.asarray(amax, dtype=np.float64), full.shape), full)
        ratio = np.max(a / width) if a.size else 1.0
        n = int(max(1, min(2 * self.counts.shape[1], math.ceil(ratio - 1e-9))))
        zero = a <= 0.0
        top = np.where(zero, width, a)
        t = np.linspace(0.0, 1.0, n + 1)[None, :] * top[:, None]
        inside = self.cdf(t) - self.cdf(-t)  # mass within [-t, t]
        counts = np.diff(inside, axis=1)
        counts[:, 0] += inside[:, 0]  # mass exactly at 0 belongs to the first bin
        counts[:, -1] += self.total - inside[:, -1]  # beyond amax: only rounding lands here
        counts = np.maximum(counts, 0.0)
        counts[zero] = 0.0
        counts[zero, 0] = self.total[zero]
        return HistogramRows(counts, np.zeros_like(top), top)

    def sample_points(self, per_bin: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Points (R, N) and weights (R, N) standing for each row's values.

        Each bin gets ``per_bin`` points, one per equal sub-bin (stratified), each weighing
        ``count / per_bin``. Inside its sub-bin a point is shifted by a per-bin golden-ratio
        phase, so that a quantization step dividing the bin width does not see every sample
        at the same phase (which would bias rounding errors). Bins empty in every row are
        left out, so for one histogram only occupied bins cost anything. Metrics evaluate
        the real quantizer on these points.
        """
        occupied = np.flatnonzero((self.counts > 0).any(axis=0))
        if occupied.size == 0:
            return np.zeros((self.counts.shape[0], 0)), np.zeros((self.counts.shape[0], 0))
        phase = (occupied * _GOLDEN) % 1.0
        sub = (np.arange(per_bin)[None, :] + phase[:, None]) / per_bin  # (n_occ, per_bin)
        offsets = (occupied[:, None] + sub).ravel()
        points = self.lo[:, None] + offsets[None, :] * self.width[:, None]
        points = np.clip(points, self.lo[:, None], self.hi[:, None])
        weights = np.repeat(self.counts[:, occupied] / per_bin, per_bin, axis=1)
        return points, weights


def exponent_bin_upper(index: int | np.ndarray) -> np.ndarray:
    """Upper magnitude bound of exponent bin ``index``: ``2^(index - 126)``."""
    return np.ldexp(1.0, np.asarray(index, dtype=np.int64) - 126)


class HistogramAccumulator:
    """Streaming histogram of finite, non-extreme values; memory is ``bins`` floats.

    * The first batch with two distinct values sets the range to its exact ``[min, max]``
      (until then a single repeated value is held as a count, so a constant first batch does
      not fix a zero-width range).
    * A later value outside the range grows it: adjacent bin pairs are merged (the width
      doubles) and the freed half of the array extends the range up or down. The number of
      doublings and the direction of each are chosen so the new range is the smallest such
      range that covers the data; old bin edges stay edges, so no count is redistributed.
    * ``|x| >= EXTREME_THRESHOLD`` is counted in ``n_extreme`` and left out; NaN/Inf are
      counted in ``n_nonfinite`` and left out. ``min``/``max`` are exact over all finite
      values, extremes included.
    * ``exponent_counts`` is a second, fixed-size histogram (256 bins) of ``|x|`` by float32
      binary exponent, over all finite values: it resolves magnitudes the linear histogram
      cannot (a 99.99th percentile far below one linear bin) at the cost of one extra pass.

    Sums are over counts only (never squares of values), so nothing can overflow.
    """

    def __init__(self, bins: int = 2048) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer):
            raise TypeError(f"bins must be an int, not {type(bins).__name__}")
        if bins < 2 or bins % 2:
            # Range growth merges bin *pairs*: an odd count would leave a bin unpaired.
            raise QvizError(f"histogram bins must be an even number >= 2, not {bins}")
        self._bins = int(bins)
        self._counts: np.ndarray | None = None
        self._lo = 0.0
        self._width = 0.0
        # A single repeated value seen before any range exists: (value, count).
        self._point: float | None = None
        self._point_count = 0
        self._exponents = np.zeros(EXPONENT_BINS, dtype=np.float64)
        self.count = 0
        """Finite values seen (extremes included)."""
        self.n_extreme = 0
        self.n_nonfinite = 0
        self.min = math.inf
        self.max = -math.inf

    # ------------------------------------------------------------------ public
    @property
    def bins(self) -> int:
        return self._bins

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays: constant, whatever the number of values seen."""
        held = self._exponents.nbytes
        return held + (self._counts.nbytes if self._counts is not None else 0)

    @property
    def exponent_counts(self) -> np.ndarray:
        """Finite values by float32 exponent of ``|x|``: bin ``e`` holds
        ``2^(e-127) <= |x| < 2^(e-126)``; bin 0 holds zeros and subnormals, bin 255 values
        beyond float32's range. A copy."""
        return self._exponents.copy()

    def update(self, x: ArrayLike, extent: tuple[float, float] | None = None) -> None:
        """Fold the values of ``x`` (any shape, any real dtype) into the histogram.
        ``extent``: the batch's (min, max), when the caller has them (saves a pass)."""
        a = np.asarray(x)
        if a.size == 0:
            return
        if a.dtype.kind not in "f":
            if a.dtype.kind not in "biu":
                raise TypeError(f"cannot histogram values of dtype {a.dtype}")
            a = a.astype(np.float64)
        flat = a.reshape(-1)
        if extent is None:  # NaN propagates: then filter
            bmin, bmax = float(flat.min()), float(flat.max())
        else:
            bmin, bmax = float(extent[0]), float(extent[1])
        if (
            math.isfinite(bmin)
            and math.isfinite(bmax)
            and -EXTREME_THRESHOLD < bmin
            and (bmax < EXTREME_THRESHOLD)
        ):
            finite, values = flat, flat
            vmin, vmax = bmin, bmax
        else:
            mask = np.isfinite(flat)
            finite = flat[mask]
            self.n_nonfinite += int(flat.size - finite.size)
            if finite.size == 0:
                return
            bmin, bmax = float(finite.min()), float(finite.max())
            keep = np.abs(finite) < EXTREME_THRESHOLD
            values = finite[keep]
            self.n_extreme += int(finite.size - values.size)
            vmin = float(values.min()) if values.size else 0.0
            vmax = float(values.max()) if values.size else 0.0
        self.count += int(finite.size)
        self.min = min(self.min, bmin)
        self.max = max(self.max, bmax)
        self._add_exponents(finite)
        if values.size:
            self._add_values(values, vmin, vmax)

    def snapshot(self) -> Histogram:
        """The histogram so far (a copy).

        Before any two distinct values: a single repeated value ``c`` is one occupied bin in a
        narrow window ``c ± |c|/256`` (``±1`` for 0); nothing at all is zero counts on [0, 1].
        """
        if self._counts is not None:
            return Histogram(self._counts.copy(), self._lo, self._hi)
        counts = np.zeros(self._bins)
        if self._point is None:
            return Histogram(counts, 0.0, 1.0)
        c = self._point
        half = abs(c) / 256.0 if c != 0.0 else 1.0
        counts[self._bins // 2] = self._point_count
        return Histogram(counts, c - half, c + half)

    # ------------------------------------------------------------------ merging
    @classmethod
    def resume(cls, hist: Histogram) -> HistogramAccumulator:
        """An accumulator whose bins are `hist`'s (its range can grow as if it had built
        them; `qviz.core.stats.merge` uses it to line several histograms up exactly)."""
        acc = cls(hist.bins)
        acc._counts = np.array(hist.counts, dtype=np.float64)
        acc._lo, acc._width = hist.lo, hist.bin_width
        return acc

    def extend_range(self, vmin: float, vmax: float) -> None:
        """Grow the range (by the exact pair-merging doublings) until it covers
        ``[vmin, vmax]``; nothing happens when it already does."""
        if self._counts is not None and (vmin < self._lo or vmax > self._hi):
            self._grow(vmin, vmax)

    # ------------------------------------------------------------------ internals
    @property
    def _hi(self) -> float:
        return self._lo + self._bins * self._width

    def _add_exponents(self, finite: np.ndarray) -> None:
        # Every EXPONENT_STRIDE-th value: the exponent counts only feed a quantile for the
        # "dominated by extremes" flag, and a full pass cost as much as the histogram itself.
        if finite.dtype == np.float32 and finite.flags.c_contiguous:
            count_exponents(finite, EXPONENT_STRIDE, self._exponents)
            return
        sample = finite[::EXPONENT_STRIDE]
        with np.errstate(over="ignore"):  # float64 beyond float32 range -> inf: bin 255
            for start in range(0, sample.size, _CHUNK):
                chunk = np.asarray(sample[start : start + _CHUNK], dtype=np.float32)
                exps = (chunk.view(np.int32) >> 23) & 0xFF
                self._exponents += np.bincount(exps.astype(np.intp), minlength=EXPONENT_BINS)

    def _add_values(self, values: np.ndarray, vmin: float, vmax: float) -> None:
        if self._prepare(values.size, vmin, vmax):
            self._bin_into(values)

    def _prepare(self, size: int, vmin: float, vmax: float) -> bool:
        """Make the range cover [vmin, vmax] for `size` new values; False when they were
        taken as the single repeated value seen before any range (nothing to bin)."""
        if self._counts is None:
            if vmin == vmax and (self._point is None or self._point == vmin):
                self._point = vmin
                self._point_count += int(size)
                return False
            if self._point is not None:
                vmin, vmax = min(vmin, self._point), max(vmax, self._point)
            self._start(vmin, vmax)
            if self._point is not None:
                self._bin_into(np.array([self._point]), weight=float(self._point_count))
                self._point, self._point_count = None, 0
        elif vmin < self._lo or vmax > self._hi:
            self._grow(vmin, vmax)
        return True

    def fold_clean(self, flat: np.ndarray, vmin: float, vmax: float) -> TensorBins | None:
        """Take a batch whose values are all finite and ordinary (not extreme), within
        [vmin, vmax]: counted, and the range grown to cover it. Returns where its values
        are to be binned when the caller bins them itself (float32 values, binned in one pass
        with other statistics: see `kernels.bin_channels`); None when this call binned
        them already (or they are the single repeated value seen so far)."""
        self.count += int(flat.size)
        self.min = min(self.min, vmin)
        self.max = max(self.max, vmax)
        if not self._prepare(flat.size, vmin, vmax):
            self._add_exponents(flat)
            return None
        assert self._counts is not None
        width = self._width
        if flat.dtype == np.float32 and 1e-30 < width and self._bins * width < 1e30:
            return TensorBins(
                self._lo, 1.0 / width, self._counts, self._exponents, EXPONENT_STRIDE
            )
        self._add_exponents(flat)
        self._bin_into(flat)
        return None

    def _start(self, vmin: float, vmax: float) -> None:
        self._counts = np.zeros(self._bins)
        self._lo = vmin
        width = (vmax - vmin) / self._bins
        # Rounding (or underflow for subnormal spans) can leave lo + bins * width < vmax.
        while width <= 0.0 or self._lo + self._bins * width < vmax:
            width = math.nextafter(width, math.inf)
        self._width = width

    def _grow(self, vmin: float, vmax: float) -> None:
        """Double the width k times, extending down at the doublings given by the bits of m.

        After k doublings the span is 2^k * S (S = old span) and the low edge is lo - m * S for
        any integer 0 <= m < 2^k (extending down at doubling j moves it by 2^j * S). The
        smallest k, with the smallest m that covers vmin, is the tightest aligned range.
        """
        span = self._bins * self._width
        ratio_down = (self._lo - vmin) / span
        if ratio_down <= 2.0**52:
            m = max(0, math.ceil(ratio_down))
            k = 1
            while not (m <= 2**k - 1 and self._lo - m * span + math.ldexp(span, k) >= vmax):
                k += 1
            for j in range(k):
                self._double(down=bool((m >> j) & 1))
        # Float rounding of lo - m * S can leave the range a hair short, and a growth by more
        # than 2^52 spans (a subnormal first range) is not planned exactly: double greedily.
        while vmin < self._lo or vmax > self._hi:
            self._double(down=self._lo - vmin > vmax - self._hi)

    def _double(self, down: bool) -> None:
        assert self._counts is not None
        half = self._bins // 2
        merged = self._counts.reshape(half, 2).sum(axis=1)
        counts = np.zeros(self._bins)
        if down:
            counts[half:] = merged
            self._lo -= self._bins * self._width
        else:
            counts[:half] = merged
        self._width *= 2.0
        self._counts = counts

    def _bin_into(self, values: np.ndarray, weight: float | None = None) -> None:
        assert self._counts is not None
        lo, width, last = self._lo, self._width, self._bins - 1
        # float32 data is binned in float32 (half the memory traffic of float64); the index
        # can be off by one only for values within ~1e-7 relative of an edge. Spans too small
        # or too large for float32 arithmetic fall back to float64 division.
        fast = values.dtype == np.float32 and 1e-30 < width and (self._bins * width) < 1e30
        if fast and weight is None:
            bin_values(values, lo, 1.0 / width, self._counts)
            return
        for start in range(0, values.size, _CHUNK):
            if fast:
                chunk = values[start : start + _CHUNK]
                scaled = np.subtract(chunk, np.float32(lo), dtype=np.float32)
                scaled *= np.float32(1.0 / width)
                np.clip(scaled, 0, last, out=scaled)
                index = scaled.astype(np.intp)
            else:
                chunk64 = np.asarray(values[start : start + _CHUNK], dtype=np.float64)
                # Divide (not multiply by 1/width): 1/width overflows for a subnormal width.
                index = ((chunk64 - lo) / width).astype(np.intp)
                # Every value is >= lo here, so truncation is floor; the top edge goes to the
                # last bin, as np.histogram does.
                np.clip(index, 0, last, out=index)
            counts = np.bincount(index, minlength=self._bins)
            self._counts += counts if weight is None else counts * weight
