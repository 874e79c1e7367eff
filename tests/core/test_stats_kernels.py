"""The compiled binning loops give exactly the counts of the NumPy arithmetic they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qviz.core.stats.kernels import (
    bin_channels,
    bin_values,
    channel_extents,
    count_exponents,
    spread_rows,
)

_FLOATS = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)


def _reference_bins(x: np.ndarray, lo: np.ndarray, inv: np.ndarray, bins: int) -> np.ndarray:
    """The NumPy binning calibration used before: float32 subtract, scale, clip, truncate."""
    scaled = np.subtract(x, lo.astype(np.float32), dtype=np.float32)
    scaled *= inv.astype(np.float32)
    np.clip(scaled, 0, bins - 1, out=scaled)
    return scaled.astype(np.intp)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40), elements=_FLOATS),
    st.integers(1, 6).map(lambda k: 2 * k),
)
def test_bin_values_counts_as_numpy(x: np.ndarray, bins: int) -> None:
    lo, hi = float(x.min()), float(x.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = np.zeros(bins)
    bin_values(x, lo, 1.0 / width, counts)
    index = _reference_bins(x.reshape(-1), np.array(lo), np.array(1.0 / width), bins)
    np.testing.assert_array_equal(counts, np.bincount(index, minlength=bins))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, max_side=12),
               elements=_FLOATS),
    st.integers(1, 4).map(lambda k: 2 * k),
)
def test_bin_channels_counts_and_sums_as_numpy(x3: np.ndarray, bins: int) -> None:
    channels = x3.shape[1]
    lo = x3.min(axis=(0, 2)).astype(np.float64) - 0.5
    inv = bins / (x3.max(axis=(0, 2)).astype(np.float64) + 0.5 - lo)
    hist, sums, squares = np.zeros((channels, bins)), np.zeros(channels), np.zeros(channels)
    bin_channels(x3, lo, inv, hist, sums, squares)
    index = _reference_bins(x3, lo.reshape(1, -1, 1), inv.reshape(1, -1, 1), bins)
    expected = np.zeros((channels, bins))
    for c in range(channels):
        expected[c] = np.bincount(index[:, c, :].reshape(-1), minlength=bins)
    np.testing.assert_array_equal(hist, expected)
    x64 = x3.astype(np.float64)
    np.testing.assert_allclose(sums, x64.sum(axis=(0, 2)), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(squares, np.square(x64).sum(axis=(0, 2)), rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, max_side=12),
                  elements=_FLOATS))
def test_channel_extents_are_min_and_max(x3: np.ndarray) -> None:
    found = channel_extents(x3)
    assert found is not None
    np.testing.assert_array_equal(found[0], x3.min(axis=(0, 2)))
    np.testing.assert_array_equal(found[1], x3.max(axis=(0, 2)))


def test_channel_extents_refuse_nan_and_infinity() -> None:
    x3 = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for bad in (np.nan, np.inf, -np.inf):
        for inner in (4, 1):
            y = x3.reshape(2, 3, -1)[:, :, :inner].copy()
            y[1, 2, -1] = bad
            assert channel_extents(y) is None


def test_count_exponents_as_numpy() -> None:
    x = np.array([0.0, 1.0, 1.5, 2.0, 0.25, -3.0, 1e-40, 7.0, 1e30], dtype=np.float32)
    found = np.zeros(256)
    count_exponents(x, 2, found)
    expected = np.bincount((x[::2].view(np.int32) >> 23) & 0xFF, minlength=256)
    np.testing.assert_array_equal(found, expected)


def _cdf_reference(counts, lo_c, hi_c, lo, hi, bins):  # type: ignore[no-untyped-def]
    """The NumPy formula the kernel replaced: summed piecewise-linear CDFs at the edges."""
    edges = np.linspace(lo, hi, bins + 1)
    n_rows, n_bins = counts.shape
    cum = np.zeros((n_rows, n_bins + 1))
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    width = (hi_c - lo_c) / n_bins
    u = (edges[None, :] - lo_c[:, None]) / width[:, None]
    k = np.clip(np.floor(u), 0, n_bins - 1).astype(np.intp)
    frac = np.clip(u - k, 0.0, 1.0)
    rows = np.arange(n_rows)[:, None]
    total = (cum[rows, k] + frac * counts[rows, k]).sum(0)
    out = np.maximum(np.diff(total), 0.0)
    out[0] += max(total[0], 0.0)
    return out


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(1, 8).map(lambda k: 2 * k), st.integers(1, 300),
       st.integers(0, 2**31))
def test_spread_rows_is_the_summed_cdf(rows: int, n_bins: int, bins: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, (rows, n_bins)).astype(np.float64)
    lo_c = rng.normal(0, 3, rows)
    hi_c = lo_c + rng.uniform(1e-3, 10, rows)
    lo, hi = float(lo_c.min()), float(hi_c.max())
    np.testing.assert_allclose(spread_rows(counts, lo_c, hi_c, lo, hi, bins),
                               _cdf_reference(counts, lo_c, hi_c, lo, hi, bins),
                               rtol=1e-9, atol=1e-9)
