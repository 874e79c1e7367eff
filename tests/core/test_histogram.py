"""Streaming histograms and tensor statistics: growth, memory, extremes, round trips."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qviz.core.errors import QvizError
from qviz.core.stats.histogram import (
    EXTREME_THRESHOLD,
    Histogram,
    HistogramAccumulator,
    HistogramRows,
)
from qviz.core.stats.tensor_stats import TensorStats, TensorStatsAccumulator, compute_stats

RNG = np.random.default_rng(1234)


def _accumulate(batches: list[np.ndarray], bins: int = 2048) -> HistogramAccumulator:
    acc = HistogramAccumulator(bins)
    for b in batches:
        acc.update(b)
    return acc


def test_growth_keeps_every_count_in_its_place() -> None:
    # The range starts narrow and must grow both up and down over several batches.
    batches = [
        RNG.normal(0.0, 0.1, 5000),
        RNG.normal(3.0, 1.0, 5000),
        RNG.normal(-20.0, 2.0, 5000),
        RNG.uniform(-1.0, 100.0, 5000),
    ]
    acc = _accumulate(batches)
    hist = acc.snapshot()
    everything = np.concatenate(batches)
    assert hist.total == everything.size
    assert hist.lo <= everything.min() and hist.hi >= everything.max()
    # Old edges stay edges, so the merged histogram equals one made in a single pass over
    # the final edges, up to values within float rounding of an edge.
    direct, _ = np.histogram(everything, bins=hist.edges)
    assert np.abs(direct - hist.counts).sum() <= 2
    # The grown range stays tight: at most four times the data's span.
    span = everything.max() - everything.min()
    assert hist.hi - hist.lo <= 4 * span


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6), st.floats(1e-3, 1e5), st.integers(1, 300)),
        min_size=1,
        max_size=6,
    )
)
def test_growth_preserves_total_and_mass_location(specs: list[tuple[float, float, int]]) -> None:
    rng = np.random.default_rng(len(specs))
    batches = [rng.uniform(c - s, c + s, n) for c, s, n in specs]
    acc = _accumulate(batches, bins=64)
    hist = acc.snapshot()
    data = np.concatenate(batches)
    assert hist.total == data.size
    direct, _ = np.histogram(data, bins=hist.edges)
    assert np.abs(direct - hist.counts).sum() <= 2 * len(batches)
    assert acc.min == data.min() and acc.max == data.max()


def test_memory_does_not_grow_with_data() -> None:
    one = _accumulate([RNG.standard_normal(100_000)])
    four = _accumulate([RNG.standard_normal(100_000) * (1 + k) for k in range(4)])
    assert one.nbytes == four.nbytes
    assert one.snapshot().counts.shape == four.snapshot().counts.shape == (2048,)
    acc = TensorStatsAccumulator("t", channel_axis=1)
    acc.update(RNG.standard_normal((8, 16, 10)))
    before = acc.nbytes
    for _ in range(4):
        acc.update(RNG.standard_normal((8, 16, 10)) * 5)
    assert acc.nbytes == before


def test_extreme_fill_values_are_counted_not_binned() -> None:
    x = RNG.standard_normal((4, 128)).astype(np.float32)
    x[:, 64:] = np.float32(-3.4e38)  # attention-mask fill
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings anywhere
        stats = compute_stats(x)
    assert stats.n_extreme == 4 * 64
    assert stats.count == x.size
    assert stats.min == pytest.approx(-3.4e38, rel=1e-6)
    assert stats.dominated_by_extremes
    hist = stats.histogram
    assert hist.total == 4 * 64
    assert -10 < hist.lo and hist.hi < 10  # resolution kept for the real values
    assert np.isfinite(hist.counts).all()


def test_nonfinite_values_are_counted_and_skipped() -> None:
    x = np.array([1.0, np.nan, -np.inf, 2.0, np.inf, 3.0], dtype=np.float32)
    stats = compute_stats(x)
    assert (stats.n_nonfinite, stats.count, stats.min, stats.max) == (3, 3, 1.0, 3.0)
    assert stats.histogram.total == 3


def test_constant_then_spread() -> None:
    acc = HistogramAccumulator(16)
    acc.update(np.full(10, 2.5))
    snap = acc.snapshot()
    assert snap.total == 10 and np.count_nonzero(snap.counts) == 1
    assert snap.lo < 2.5 < snap.hi
    acc.update(np.array([0.0, 4.0]))
    hist = acc.snapshot()
    assert (hist.lo, hist.hi, hist.total) == (0.0, 4.0, 12.0)
    assert hist.counts[int(2.5 / hist.bin_width)] == 10


def test_all_zero_tensor_and_empty_input() -> None:
    stats = compute_stats(np.zeros((3, 3)))
    assert stats.min == stats.max == 0.0
    assert stats.histogram.total == 9
    assert not stats.dominated_by_extremes
    acc = HistogramAccumulator()
    acc.update(np.zeros(0))
    assert acc.count == 0 and acc.snapshot().total == 0
    empty = TensorStatsAccumulator("e").finish()
    assert (empty.count, empty.min, empty.max) == (0, 0.0, 0.0)


def test_integer_and_float16_inputs() -> None:
    acc = HistogramAccumulator(8)
    acc.update(np.arange(10, dtype=np.int32))
    acc.update(np.array([12.5], dtype=np.float16))
    assert acc.snapshot().total == 11 and acc.max == 12.5


def test_bins_must_be_even() -> None:
    with pytest.raises(QvizError):
        HistogramAccumulator(7)


def test_histogram_is_immutable_and_validated() -> None:
    h = Histogram(np.ones(4), -1.0, 1.0)
    with pytest.raises(ValueError):
        h.counts[0] = 5.0
    with pytest.raises(ValueError):
        Histogram(np.ones(4), 1.0, 1.0)
    assert h.bin_width == 0.5 and h.total == 4
    np.testing.assert_allclose(h.centers, [-0.75, -0.25, 0.25, 0.75])


def test_quantile_and_abs_histogram() -> None:
    x = RNG.standard_normal(200_000)
    hist = compute_stats(x).histogram
    for q in (0.001, 0.25, 0.5, 0.9, 0.999):
        assert abs(hist.quantile(q) - np.quantile(x, q)) <= hist.bin_width
    # 0 on a bin edge: folding is exact.
    sym = Histogram(np.histogram(x, bins=64, range=(-6, 6))[0], -6.0, 6.0)
    folded = sym.abs_histogram()
    direct, _ = np.histogram(np.abs(x), bins=32, range=(0, 6))
    np.testing.assert_allclose(folded.counts, direct, atol=1e-6)
    assert folded.total == pytest.approx(x.size)


def test_histogram_rows_match_numpy() -> None:
    values = RNG.standard_normal((5, 300))
    values[2] = 1.5  # constant row
    rows = HistogramRows.from_values(values, 32)
    for r in (0, 1, 3, 4):
        direct, _ = np.histogram(values[r], bins=32, range=(values[r].min(), values[r].max()))
        np.testing.assert_array_equal(rows.counts[r], direct)
    assert rows.counts[2].sum() == 300 and rows.lo[2] < 1.5 < rows.hi[2]
    padded = values.copy()
    padded[0, 200:] = np.nan
    assert HistogramRows.from_values(padded, 32).counts[0].sum() == 200


def test_sample_points_stand_for_the_bins() -> None:
    hist = Histogram(np.array([0.0, 4.0, 0.0, 2.0]), 0.0, 4.0)
    points, weights = hist.sample_points(per_bin=4)
    assert points.size == 8 and weights.sum() == 6.0
    assert ((points >= 1) & (points < 2)).sum() == 4 and ((points >= 3) & (points < 4)).sum() == 4


def test_channel_stats_and_shape_changes() -> None:
    acc = TensorStatsAccumulator("a", channel_axis=1)
    b1 = RNG.standard_normal((4, 3, 5))
    b2 = RNG.standard_normal((2, 3, 5)) * 3  # short last batch: not a shape change
    acc.update(b1)
    acc.update(b2)
    stats = acc.finish()
    both = np.concatenate([b1, b2])
    np.testing.assert_array_equal(stats.channel_min, both.min(axis=(0, 2)))
    np.testing.assert_array_equal(stats.channel_max, both.max(axis=(0, 2)))
    assert stats.channel_axis == 1 and not stats.shapes_vary
    acc.update(RNG.standard_normal((4, 3, 7)))  # sequence length changed
    assert acc.finish().shapes_vary
    acc.update(RNG.standard_normal((4, 6, 7)))  # channel count changed: dropped, noted
    stats = acc.finish()
    assert stats.channel_min is None and stats.channel_axis is None
    assert any("per-channel" in note for note in acc.notes)


def test_channel_stats_skip_nonfinite() -> None:
    x = np.array([[1.0, np.nan], [-2.0, 5.0], [np.inf, 4.0]])
    stats = compute_stats(x, channel_axis=-1)
    np.testing.assert_array_equal(stats.channel_min, [-2.0, 4.0])
    np.testing.assert_array_equal(stats.channel_max, [1.0, 5.0])


def test_dominated_by_extremes_without_mask_fills() -> None:
    x = RNG.standard_normal(100_000)
    assert not compute_stats(x).dominated_by_extremes
    x[:3] = 1e20  # below the extreme threshold, but a million times the 99.99th percentile
    stats = compute_stats(x)
    assert stats.n_extreme == 0 and stats.dominated_by_extremes
    assert EXTREME_THRESHOLD > 1e20


def test_stats_round_trip_through_json_and_arrays() -> None:
    x = RNG.standard_normal((6, 4, 3)).astype(np.float32)
    x[0, 0, 0] = np.nan
    x[1, 1, 1] = -3.4e38
    stats = compute_stats(x, name="act", channel_axis=1)
    meta, arrays = stats.to_arrays()
    meta = json.loads(json.dumps(meta))  # must be JSON-able
    back = TensorStats.from_arrays(meta, {k: np.array(v) for k, v in arrays.items()})
    for field in ("name", "min", "max", "count", "n_extreme", "n_nonfinite", "channel_axis"):
        assert getattr(back, field) == getattr(stats, field)
    np.testing.assert_array_equal(back.histogram.counts, stats.histogram.counts)
    assert (back.histogram.lo, back.histogram.hi) == (stats.histogram.lo, stats.histogram.hi)
    np.testing.assert_array_equal(back.channel_min, stats.channel_min)
    np.testing.assert_array_equal(back.exponent_counts, stats.exponent_counts)
    assert back.dominated_by_extremes == stats.dominated_by_extremes
    # Files written without the optional arrays still load.
    minimal = TensorStats.from_arrays(meta, {"counts": arrays["counts"]})
    assert minimal.channel_min is None and minimal.exponent_counts is None


def test_large_batch_is_vectorized() -> None:
    acc = TensorStatsAccumulator("big", channel_axis=1)
    acc.update(RNG.standard_normal((16, 64, 4096)).astype(np.float32))
    stats = acc.finish()
    assert stats.count == 16 * 64 * 4096 and stats.channel_min.shape == (64,)
