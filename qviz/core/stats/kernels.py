"""Compiled inner loops of calibration: binning a batch into histograms in one pass.

Calibration folds every activation of every batch into a tensor histogram, per-channel
histograms and per-channel sums. In NumPy each of those is several passes over the batch with
float and int64 temporaries (subtract, scale, clip, cast, bincount, square, sum): about 30 ns
per value, twice ONNX Runtime's own time on a transformer. These loops do the same arithmetic
without temporaries, in two passes: the per-channel ranges (which the histograms' ranges
must cover before anything is binned), then everything else (numba, compiled once and cached
on disk).

The bin of a value is computed exactly as the NumPy code did: ``(v - lo) * inv`` in float32,
clipped to ``[0, last]``, truncated — so every count is the same. Sums run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

__all__ = [
    "TensorBins",
    "bin_channels",
    "bin_values",
    "channel_extents",
    "count_exponents",
    "spread_rows",
]


@dataclass(frozen=True, eq=False)
class TensorBins:
    """A tensor histogram to fill in the same pass as the per-channel ones: bin ``clip((v -
    lo) * inv, 0, bins - 1)`` (float32) of ``counts``; every ``stride``-th value is counted by
    its float32 exponent into ``exponents`` (256 bins; none with ``stride`` 0)."""

    lo: float
    inv: float
    counts: np.ndarray
    exponents: np.ndarray
    stride: int


# Sub-histograms of the tensor histogram: neighbouring values usually fall in the same bin, and
# incrementing one counter back to back stalls on the previous store; spreading the
# increments over 8 copies lets them overlap.
_LANES = 8
# Values per call: the loops count in int32.
_MAX_COUNT = 1 << 30


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _bin_values(values: Any, lo: Any, inv: Any, last: Any, counts: Any) -> None:  # pragma: no cover
    lanes = np.zeros((_LANES, counts.size), dtype=np.int32)
    zero = np.float32(0.0)
    for i in range(values.size):
        t = (values[i] - lo) * inv
        t = min(max(t, zero), last)
        lanes[i & (_LANES - 1), np.intp(t)] += 1
    for k in range(_LANES):
        for b in range(counts.size):
            counts[b] += lanes[k, b]


def bin_values(values: np.ndarray, lo: float, inv: float, counts: np.ndarray) -> None:
    """Add float32 `values` (any shape) into `counts` (float64 (bins,) from `lo`, `inv` = 1 /
    bin width, both taken as float32): bin ``clip((v - lo) * inv, 0, bins - 1)``, truncated."""
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    args = (np.float32(lo), np.float32(inv), np.float32(counts.size - 1), counts)
    for start in range(0, v.size, _MAX_COUNT):  # int32 counters in the loop
        _bin_values(v[start : start + _MAX_COUNT], *args)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _count_exponents(bits: Any, stride: int, exponents: Any) -> None:  # pragma: no cover
    seen = np.zeros(exponents.size, dtype=np.int64)
    for i in range(0, bits.size, stride):
        seen[(bits[i] >> 23) & 0xFF] += 1
    for b in range(exponents.size):
        exponents[b] += seen[b]


def count_exponents(values: np.ndarray, stride: int, exponents: np.ndarray) -> None:
    """Add every `stride`-th of float32 `values` (1-D, contiguous) into `exponents` (float64,
    256 bins) by its float32 binary exponent (bits 23-30 of its pattern)."""
    _count_exponents(values.view(np.int32), stride, exponents)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _bin_channels(
    x3: Any, lo: Any, inv: Any, last: Any, hist: Any, sums: Any, squares: Any,
    t_lo: Any, t_inv: Any, t_last: Any, t_counts: Any, stride: int, exponents: Any,
    start: int,
) -> None:  # pragma: no cover - compiled
    outer, channels, inner = x3.shape
    bins = hist.shape[1]
    counts = np.zeros(channels * bins, dtype=np.int32)
    tensor = t_counts.size > 0
    t_bins = max(1, t_counts.size)
    lanes = np.zeros((_LANES, t_bins), dtype=np.int32)
    seen = np.zeros(256, dtype=np.int64)
    bits = x3.view(np.int32)
    zero = np.float32(0.0)
    if inner == 1:
        # Channels last: a row at a time, the arithmetic over contiguous channels (vectorised)
        # apart from the scattered increments.
        index = np.empty(channels, dtype=np.intp)
        t_index = np.empty(channels, dtype=np.intp)
        for o in range(outer):
            for c in range(channels):
                v = x3[o, c, 0]
                w = np.float64(v)
                sums[c] += w
                squares[c] += w * w
                u = (v - lo[c]) * inv[c]
                u = min(max(u, zero), last)
                index[c] = c * bins + np.intp(u)
                t = (v - t_lo) * t_inv
                t = min(max(t, zero), t_last)
                t_index[c] = np.intp(t)
            for c in range(channels):
                counts[index[c]] += 1
            if tensor:
                for c in range(channels):
                    lanes[c & (_LANES - 1), t_index[c]] += 1
                if stride > 0:
                    flat = start + o * channels
                    for c in range((stride - flat % stride) % stride, channels, stride):
                        seen[(bits[o, c, 0] >> 23) & 0xFF] += 1
    else:
        for o in range(outer):
            for c in range(channels):
                s = 0.0
                q = 0.0
                for i in range(inner):
                    w = np.float64(x3[o, c, i])
                    s += w
                    q += w * w
                sums[c] += s
                squares[c] += q
                base = c * bins
                lo_c = lo[c]
                inv_c = inv[c]
                for i in range(inner):
                    v = x3[o, c, i]
                    u = (v - lo_c) * inv_c
                    u = min(max(u, zero), last)
                    counts[base + np.intp(u)] += 1
                if tensor:
                    for i in range(inner):
                        t = (x3[o, c, i] - t_lo) * t_inv
                        t = min(max(t, zero), t_last)
                        lanes[i & (_LANES - 1), np.intp(t)] += 1
                    if stride > 0:
                        flat = start + (o * channels + c) * inner
                        for i in range((stride - flat % stride) % stride, inner, stride):
                            seen[(bits[o, c, i] >> 23) & 0xFF] += 1
    for c in range(channels):
        for b in range(bins):
            hist[c, b] += counts[c * bins + b]
    if tensor:
        for k in range(_LANES):
            for b in range(t_counts.size):
                t_counts[b] += lanes[k, b]
        for b in range(256):
            exponents[b] += seen[b]


def bin_channels(
    x3: np.ndarray, lo: np.ndarray, inv: np.ndarray, hist: np.ndarray, sums: np.ndarray,
    squares: np.ndarray, tensor: TensorBins | None = None,
) -> None:
    """For float32 `x3` (outer, channels, inner): add each channel's values into its row of
    `hist` (float64 (channels, bins); bin ``clip((v - lo[c]) * inv[c], 0, bins - 1)`` in
    float32, truncated) and their sum and sum of squares into `sums`, `squares` (float64).
    With `tensor`, the same pass also bins every value into the tensor's histogram and counts
    every `tensor.stride`-th value's exponent (as `bin_values` and `count_exponents`)."""
    x = np.ascontiguousarray(x3, dtype=np.float32)
    if tensor is None:
        t_args = (np.float32(0), np.float32(0), np.float32(0), np.zeros(0), 0, np.zeros(256))
    else:
        t_args = (
            np.float32(tensor.lo), np.float32(tensor.inv),
            np.float32(tensor.counts.size - 1), tensor.counts, tensor.stride,
            tensor.exponents,
        )
    args = (
        np.ascontiguousarray(lo, dtype=np.float32),
        np.ascontiguousarray(inv, dtype=np.float32),
        np.float32(hist.shape[1] - 1),
        hist,
        sums,
        squares,
        *t_args,
    )
    row = x.shape[1] * x.shape[2]
    step = max(1, _MAX_COUNT // max(1, row))
    for start in range(0, x.shape[0], step):  # int32 counters in the loop
        _bin_channels(x[start : start + step], *args, start * row)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _channel_extents(x3: Any, low: Any, high: Any) -> bool:  # pragma: no cover - compiled
    outer, channels, inner = x3.shape
    # v * 0 is NaN exactly for NaN and ±Inf: summed per channel, it says whether the batch
    # is clean without a branch in the loop (which would keep it from being vectorised).
    poison = np.zeros(channels, dtype=np.float32)
    zero = np.float32(0.0)
    for c in range(channels):
        low[c] = x3[0, c, 0]
        high[c] = x3[0, c, 0]
    if inner == 1:
        for o in range(outer):
            for c in range(channels):
                v = x3[o, c, 0]
                low[c] = v if v < low[c] else low[c]
                high[c] = v if v > high[c] else high[c]
                poison[c] += v * zero
    else:
        for o in range(outer):
            for c in range(channels):
                lo_c = low[c]
                hi_c = high[c]
                p = zero
                for i in range(inner):
                    v = x3[o, c, i]
                    lo_c = v if v < lo_c else lo_c
                    hi_c = v if v > hi_c else hi_c
                    p += v * zero
                low[c] = lo_c
                high[c] = hi_c
                poison[c] += p
    return bool(np.isnan(poison).any())


def channel_extents(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (min, max) of float32 `x3` (outer, channels, inner, not empty) in one
    pass; None when it holds a NaN or an infinity (the caller takes the careful path)."""
    x = np.ascontiguousarray(x3, dtype=np.float32)
    low = np.empty(x.shape[1], dtype=np.float32)
    high = np.empty(x.shape[1], dtype=np.float32)
    return None if _channel_extents(x, low, high) else (low, high)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _spread_rows(
    counts: Any, lo: Any, hi: Any, t_lo: float, t_width: float, out: Any
) -> None:  # pragma: no cover - compiled
    rows, n_bins = counts.shape
    last = out.size - 1
    for r in range(rows):
        u0 = (lo[r] - t_lo) / t_width  # the row's range in target-bin units
        step = (hi[r] - lo[r]) / t_width / n_bins
        for b in range(n_bins):
            c = counts[r, b]
            if c == 0.0:
                continue
            a = u0 + b * step
            e = a + step
            first = min(max(int(np.floor(a)), 0), last)
            if e <= a:
                out[first] += c
                continue
            end = min(max(int(np.floor(e)), 0), last)
            for k in range(first, end + 1):
                # The end bins also take what lies beyond them (rounding at the range's ends).
                left = -np.inf if k == 0 else float(k)
                right = np.inf if k == last else k + 1.0
                overlap = min(e, right) - max(a, left)
                if overlap > 0.0:
                    out[k] += c * overlap / (e - a)


def spread_rows(
    counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, t_lo: float, t_hi: float, bins: int
) -> np.ndarray:
    """The histogram (`bins` equal bins over [t_lo, t_hi]) of rows of histograms (`counts`
    (rows, n), row r over [lo[r], hi[r]]), each bin's count spread uniformly over its extent
    and shared among the target bins it overlaps; what falls outside goes to the end bins."""
    out = np.zeros(bins)
    _spread_rows(
        np.ascontiguousarray(counts, dtype=np.float64), np.ascontiguousarray(lo, np.float64),
        np.ascontiguousarray(hi, np.float64), float(t_lo), (float(t_hi) - float(t_lo)) / bins,
        out,
    )
    return out
