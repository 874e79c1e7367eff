"""What calibration keeps about one activation tensor, and the streaming accumulator behind it.

A :class:`TensorStats` is everything the methods and metrics need (histogram, exact min/max,
per-channel min/max, counts of extreme and non-finite values), so a clip range can be
recomputed for any method or format without re-running the model. It converts to and from
JSON-able metadata plus named numpy arrays for the stats file; never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.stats.channel_stats import (
    DEFAULT_CHANNEL_BINS,
    ChannelMoments,
    ChannelMomentsAccumulator,
    as_3d,
)
from qviz.core.stats.histogram import (
    EXPONENT_BINS,
    EXTREME_THRESHOLD,
    Histogram,
    HistogramAccumulator,
    exponent_bin_upper,
)
from qviz.core.stats.kernels import TensorBins, channel_extents

__all__ = [
    "DOMINANCE_RATIO",
    "EXTREME_THRESHOLD",
    "TensorStats",
    "TensorStatsAccumulator",
    "compute_stats",
]

DOMINANCE_RATIO = 1e6
"""``max|x|`` beyond this multiple of the 99.99th percentile magnitude ruins MinMax scales."""
_DOMINANCE_QUANTILE = 0.9999


@dataclass(frozen=True, eq=False)
class TensorStats:
    """Calibration statistics of one tensor (see docs/architecture.md, "Statistics").

    ``histogram`` holds the finite values with ``|x| < EXTREME_THRESHOLD``; ``min``/``max`` are
    exact over all finite values, extremes included (0.0 when ``count`` is 0).
    ``channel_min``/``channel_max`` (float64, one per index of ``channel_axis``) are exact too;
    a channel that never saw a finite value holds +inf/-inf.

    ``exponent_counts`` (an addition to the documented fields, optional so older files still
    load) counts the finite values by float32 exponent of ``|x|`` (256 bins, see
    :attr:`HistogramAccumulator.exponent_counts`); it makes :attr:`dominated_by_extremes`
    exact to a factor of two where the linear histogram's resolution is too coarse.

    ``moments`` (schema 2 of the stats file; None in older files) holds per-channel counts,
    means, mean squares and small histograms along ``channel_axis``: what the transforms
    (SmoothQuant, equalization, bias correction) and the activation channel view read.
    """

    name: str
    histogram: Histogram
    min: float
    max: float
    count: int
    n_extreme: int = 0
    n_nonfinite: int = 0
    channel_axis: int | None = None
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None
    shapes_vary: bool = False
    exponent_counts: np.ndarray | None = None
    moments: ChannelMoments | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "min", float(self.min))
        object.__setattr__(self, "max", float(self.max))
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "n_extreme", int(self.n_extreme))
        object.__setattr__(self, "n_nonfinite", int(self.n_nonfinite))
        object.__setattr__(self, "shapes_vary", bool(self.shapes_vary))
        if (self.channel_min is None) != (self.channel_max is None):
            raise ValueError("channel_min and channel_max must both be given or both be None")
        for field_name in ("channel_min", "channel_max", "exponent_counts"):
            value = getattr(self, field_name)
            if value is not None:
                arr = np.array(value, dtype=np.float64).reshape(-1)
                arr.setflags(write=False)
                object.__setattr__(self, field_name, arr)
        if self.channel_min is not None:
            assert self.channel_max is not None
            if self.channel_min.shape != self.channel_max.shape:
                raise ValueError("channel_min and channel_max differ in length")
        if self.exponent_counts is not None and self.exponent_counts.size != EXPONENT_BINS:
            raise ValueError(f"exponent_counts must have {EXPONENT_BINS} bins")
        if self.moments is not None and (
            self.channel_min is None or self.moments.channels != self.channel_min.size
        ):
            raise ValueError("per-channel moments need per-channel min/max of the same length")

    @property
    def abs_max(self) -> float:
        """Largest finite magnitude seen, extremes included."""
        return max(abs(self.min), abs(self.max))

    def abs_quantile(self, q: float) -> float:
        """Magnitude below which a fraction ``q`` of the histogram's values lie."""
        amax = min(self.abs_max, max(abs(self.histogram.lo), abs(self.histogram.hi)))
        return self.histogram.abs_histogram(amax).quantile(q)

    @property
    def dominated_by_extremes(self) -> bool:
        """True when no MinMax scale can be useful: extreme values (mask fills) were seen,
        or ``max|x|`` exceeds ``DOMINANCE_RATIO`` times the 99.99th percentile magnitude.

        The percentile comes from ``exponent_counts`` when present (upper edge of its
        exponent bin, so the test errs towards "not dominated"), otherwise from the linear
        histogram. A tensor that is at least 99.99% zeros is not flagged: zeros are exact in
        every format, so the large values set a scale that loses nothing.
        """
        if self.n_extreme > 0:
            return True
        if self.count == 0:
            return False
        if self.exponent_counts is not None and self.exponent_counts.sum() > 0:
            cum = np.cumsum(self.exponent_counts)
            index = int(np.searchsorted(cum, _DOMINANCE_QUANTILE * cum[-1], side="left"))
            if index == 0:  # the quantile is among zeros and subnormals
                return False
            p = float(exponent_bin_upper(index))
        else:
            p = self.abs_quantile(_DOMINANCE_QUANTILE)
            if p <= 0.0:
                return False
        return self.abs_max > DOMINANCE_RATIO * p

    # ------------------------------------------------------------------ stats-file helpers
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and named arrays (keys are plain identifiers) for a stats file."""
        meta: dict[str, Any] = {
            "name": self.name,
            "lo": self.histogram.lo,
            "hi": self.histogram.hi,
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "n_extreme": self.n_extreme,
            "n_nonfinite": self.n_nonfinite,
            "channel_axis": self.channel_axis,
            "shapes_vary": self.shapes_vary,
        }
        arrays: dict[str, np.ndarray] = {"counts": np.asarray(self.histogram.counts)}
        if self.channel_min is not None and self.channel_max is not None:
            arrays["channel_min"] = np.asarray(self.channel_min)
            arrays["channel_max"] = np.asarray(self.channel_max)
        if self.exponent_counts is not None:
            arrays["exponent_counts"] = np.asarray(self.exponent_counts)
        if self.moments is not None:
            arrays.update(self.moments.to_arrays())
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TensorStats:
        """Inverse of :meth:`to_arrays`. Raises KeyError/ValueError/TypeError when damaged."""
        axis = meta.get("channel_axis")
        return cls(
            name=str(meta["name"]),
            histogram=Histogram(np.asarray(arrays["counts"]), float(meta["lo"]), float(meta["hi"])),
            min=float(meta["min"]),
            max=float(meta["max"]),
            count=int(meta["count"]),
            n_extreme=int(meta.get("n_extreme", 0)),
            n_nonfinite=int(meta.get("n_nonfinite", 0)),
            channel_axis=None if axis is None else int(axis),
            channel_min=arrays.get("channel_min"),
            channel_max=arrays.get("channel_max"),
            shapes_vary=bool(meta.get("shapes_vary", False)),
            exponent_counts=arrays.get("exponent_counts"),
            moments=ChannelMoments.from_arrays(arrays),
        )


class TensorStatsAccumulator:
    """Folds batches of one tensor into :class:`TensorStats`; memory is independent of the
    number of batches (``bins`` + 256 floats + two floats per channel).

    ``channel_axis`` (may be negative) names the axis per-channel min/max are taken along.
    If that axis's size changes between updates, or a batch has too few dimensions, the
    per-channel statistics are dropped and the reason is added to :attr:`notes`.
    ``shapes_vary`` becomes true when a batch's shape differs from the first one's outside
    ``batch_axis`` (default 0: a short last batch is not a shape change; ``None`` compares
    whole shapes). ``channel_bins`` is the per-channel histogram size of :attr:`TensorStats.moments`
    (0: moments without histograms; None: no moments at all).
    """

    def __init__(
        self,
        name: str,
        bins: int = 2048,
        channel_axis: int | None = None,
        *,
        batch_axis: int | None = 0,
        channel_bins: int | None = DEFAULT_CHANNEL_BINS,
    ) -> None:
        self.name = name
        self._hist = HistogramAccumulator(bins)
        self._channel_axis = channel_axis
        self._batch_axis = batch_axis
        self._cmin: np.ndarray | None = None
        self._cmax: np.ndarray | None = None
        self._channels_dropped = channel_axis is None
        self._resolved_axis: int | None = None
        self._shape: tuple[int, ...] | None = None
        self._shapes_vary = False
        self._notes: list[str] = []
        self._moments = None if channel_bins is None else ChannelMomentsAccumulator(channel_bins)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._notes)

    @property
    def nbytes(self) -> int:
        held = self._hist.nbytes
        if self._cmin is not None and self._cmax is not None:
            held += self._cmin.nbytes + self._cmax.nbytes
        if self._moments is not None:
            held += self._moments.nbytes
        return held

    def update(self, x: ArrayLike) -> None:
        """Fold one batch (any shape) into the statistics."""
        a = np.asarray(x)
        self._track_shape(a.shape)
        if a.size == 0:
            return
        if self._fast_update(a):
            return
        nonfinite_before = self._hist.n_nonfinite
        extreme_before = self._hist.n_extreme
        self._hist.update(a)
        if not self._channels_dropped:
            has_nonfinite = self._hist.n_nonfinite > nonfinite_before
            clean = not has_nonfinite and self._hist.n_extreme == extreme_before
            self._update_channels(a, has_nonfinite=has_nonfinite, clean=clean)

    def finish(self) -> TensorStats:
        """The statistics so far (the accumulator stays usable)."""
        hist = self._hist
        empty = hist.count == 0
        channel_ok = not self._channels_dropped and self._cmin is not None
        return TensorStats(
            name=self.name,
            histogram=hist.snapshot(),
            min=0.0 if empty else hist.min,
            max=0.0 if empty else hist.max,
            count=hist.count,
            n_extreme=hist.n_extreme,
            n_nonfinite=hist.n_nonfinite,
            channel_axis=self._resolved_axis if channel_ok else None,
            channel_min=self._cmin.copy() if channel_ok and self._cmin is not None else None,
            channel_max=self._cmax.copy() if channel_ok and self._cmax is not None else None,
            shapes_vary=self._shapes_vary,
            exponent_counts=hist.exponent_counts,
            moments=self._moments.finish() if channel_ok and self._moments is not None else None,
        )

    # ------------------------------------------------------------------ internals
    def _fast_update(self, a: np.ndarray) -> bool:
        """A float32 batch with per-channel statistics: its channel ranges in one compiled
        pass give the tensor's range too, so the histogram skips its own min/max passes.
        False (nothing done) when the batch needs the careful path: NaN, Inf, extremes, a
        channel axis that does not fit."""
        if a.dtype != np.float32 or self._channels_dropped or self._channel_axis is None:
            return False
        axis, _ = self._channel_fit(a)
        if axis is None:
            return False  # the careful path drops the channels and says why
        x3 = as_3d(np.ascontiguousarray(a), axis)
        extents = channel_extents(x3)
        if extents is None:
            return False
        bmin, bmax = extents
        lo, hi = float(bmin.min()), float(bmax.max())
        if not (-EXTREME_THRESHOLD < lo and hi < EXTREME_THRESHOLD):
            return False  # Inf or mask fills
        tensor = None
        if self._moments is not None and self._moments.takes_tensor_bins(a.dtype):
            # The tensor histogram is filled in the per-channel pass: one pass, not two.
            tensor = self._hist.fold_clean(x3.reshape(-1), lo, hi)
        else:
            self._hist.update(a, extent=(lo, hi))
        self._update_channels(a, has_nonfinite=False, clean=True, extent=extents, tensor=tensor)
        return True

    def _channel_fit(self, a: np.ndarray) -> tuple[int | None, str]:
        """The batch's channel axis (non-negative), or None and why the per-channel
        statistics cannot take this batch."""
        assert self._channel_axis is not None
        if not -a.ndim <= self._channel_axis < a.ndim:
            return None, (
                f"channel axis {self._channel_axis} does not exist in a batch of shape {a.shape}"
            )
        axis = self._channel_axis % a.ndim
        if self._resolved_axis is not None and axis != self._resolved_axis:
            return None, f"batches of different rank ({a.shape})"
        n_channels = a.shape[axis]
        if self._cmin is not None and n_channels != self._cmin.size:
            return None, f"the channel axis changed size from {self._cmin.size} to {n_channels}"
        return axis, ""

    def _track_shape(self, shape: tuple[int, ...]) -> None:
        key = list(shape)
        if self._batch_axis is not None and -len(key) <= self._batch_axis < len(key):
            key[self._batch_axis] = -1
        if self._shape is None:
            self._shape = tuple(key)
        elif tuple(key) != self._shape:
            self._shapes_vary = True

    def _drop_channels(self, why: str) -> None:
        self._channels_dropped = True
        self._cmin = self._cmax = None
        self._moments = None
        self._notes.append(f"{self.name}: per-channel statistics dropped ({why})")

    def _update_channels(
        self, a: np.ndarray, *, has_nonfinite: bool, clean: bool,
        extent: tuple[np.ndarray, np.ndarray] | None = None,
        tensor: TensorBins | None = None,
    ) -> None:
        axis, why = self._channel_fit(a)
        if axis is None:
            self._drop_channels(why)
            return
        others = tuple(d for d in range(a.ndim) if d != axis)
        if extent is not None:
            bmin, bmax = extent
        elif has_nonfinite:
            finite = np.isfinite(a)
            bmin = np.where(finite, a, np.inf).min(axis=others)
            bmax = np.where(finite, a, -np.inf).max(axis=others)
        else:
            bmin, bmax = a.min(axis=others), a.max(axis=others)
        bmin = np.asarray(bmin, dtype=np.float64)
        bmax = np.asarray(bmax, dtype=np.float64)
        if self._cmin is None or self._cmax is None:
            self._cmin, self._cmax, self._resolved_axis = bmin, bmax, axis
        else:
            np.minimum(self._cmin, bmin, out=self._cmin)
            np.maximum(self._cmax, bmax, out=self._cmax)
        if self._moments is not None:
            self._moments.update(a, axis, clean=clean, extent=(bmin, bmax), tensor=tensor)


def compute_stats(
    x: ArrayLike,
    name: str = "",
    bins: int = 2048,
    channel_axis: int | None = None,
    channel_bins: int | None = None,
) -> TensorStats:
    """:class:`TensorStats` of one whole tensor (a weight, or a test array), in one update
    (per-channel moments only when ``channel_bins`` is given)."""
    acc = TensorStatsAccumulator(
        name, bins=bins, channel_axis=channel_axis, batch_axis=None, channel_bins=channel_bins
    )
    acc.update(x)
    return acc.finish()
