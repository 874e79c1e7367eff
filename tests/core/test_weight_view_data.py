"""A weight's histograms in the layer view come from one statistics pass over its values."""

from __future__ import annotations

import numpy as np
import pytest

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.weights import analyze_weight
from qviz.core.layerdata import curves, layer
from qviz.core.layerdata.curves import EXACT_MARKERS_MAX, weight_curve, weight_markers
from qviz.core.layerdata.layer import (
    MAX_WEIGHT_BINS,
    MIN_WEIGHT_BINS,
    LayerPlots,
    weight_histogram,
)
from qviz.core.model.layers import Layer
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import NumberFormat, PerTensor
from qviz.core.stats.tensor_stats import compute_stats

INT8 = NumberFormat.parse("int8")


@pytest.mark.parametrize("n", [50, 9216, 400_000])
def test_the_display_histogram_is_the_values_histogram(n: int) -> None:
    """Merged from the 2048-bin statistics, each bin holds exactly the values np.histogram
    puts there (same edges), for ~2·√n bins within [64, 512]."""
    w = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.05
    edges, counts = weight_histogram(compute_stats(w))
    assert MIN_WEIGHT_BINS <= counts.size <= MAX_WEIGHT_BINS
    target = np.clip(2 * np.sqrt(n), MIN_WEIGHT_BINS, MAX_WEIGHT_BINS)
    assert abs(np.log2(counts.size / target)) <= 0.5  # the nearest power of two
    assert edges[0] <= w.min() and edges[-1] >= w.max()
    expected, _ = np.histogram(w.astype(np.float64), bins=edges)
    assert counts.sum() == n
    # Values are binned in float32: one within its rounding of an edge may land on either
    # side. Every other value is where np.histogram puts it.
    tol = 1e-6 * (edges[-1] - edges[0])
    near = _near_edges(w, edges, tol)
    assert np.abs(counts - expected).sum() <= 2 * int(near.sum())


def _near_edges(w: np.ndarray, edges: np.ndarray, tol: float) -> np.ndarray:
    i = np.clip(np.searchsorted(edges, w.astype(np.float64)), 1, edges.size - 1)
    return np.minimum(np.abs(w - edges[i - 1]), np.abs(w - edges[i])) <= tol


def _weight_result(w: np.ndarray) -> TensorResult:
    a = analyze_weight(w, 0, 1, MethodSpec(Method.MINMAX), PerTensor(), INT8)
    lay = Layer("big", "big", "MatMul", "big.weight", tuple(w.shape), 0, 1, ("x",), 0, w.size)
    return TensorResult("big.weight", lay, TensorKind.WEIGHT, TensorConfig(fmt=INT8),
                        a.qparams, a.metrics, a.channel_metrics)


def test_a_large_weight_is_read_once_for_its_histogram_curve_and_markers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((EXACT_MARKERS_MAX // 512 + 8, 512)) * 0.02).astype(np.float32)
    assert w.size > EXACT_MARKERS_MAX  # the curve and markers come from a histogram
    result = _weight_result(w)
    passes: list[int] = []
    real = compute_stats

    def counted(x: object, *args: object, **kwargs: object) -> object:
        passes.append(np.asarray(x).size)
        return real(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(layer, "compute_stats", counted)
    monkeypatch.setattr(curves, "compute_stats", counted)
    plots = LayerPlots()
    ranges = {Method.MINMAX: (float(w.min()), float(w.max())), Method.PERCENTILE: (-0.05, 0.05)}
    data = plots.layer_data(result, w, None, None, ranges, {})
    assert data.weight is not None
    assert passes == [w.size]  # one statistics pass for everything drawn
    # The previews of a dragged band read the same statistics.
    assert plots.weight_stats(result.name, w) is plots.weight_stats(result.name, w)
    assert passes == [w.size]
    # Another method redraws from what is kept: no pass at all.
    plots.layer_data(result, w, None, None, ranges, {})
    assert passes == [w.size]
    # Statistics the caller already holds (the document's cache) mean no pass here.
    fresh = LayerPlots()
    held = real(w, "big.weight")
    passes.clear()
    fresh.layer_data(result, w, None, None, ranges, {}, weight_stats=held)
    assert passes == []
    np.testing.assert_array_equal(
        fresh.layer_data(result, w, None, None, ranges, {}, weight_stats=held).weight.counts,  # type: ignore[union-attr]
        data.weight.counts,
    )


def test_curve_and_markers_from_given_statistics_match_their_own_pass() -> None:
    w = (np.random.default_rng(1).standard_normal(EXACT_MARKERS_MAX + 1000) * 0.1).astype(
        np.float32)
    stats = compute_stats(w)
    mine = weight_curve(w, INT8, 0.0, stats)
    own = weight_curve(w, INT8, 0.0)
    np.testing.assert_array_equal(mine.sqnr_db, own.sqnr_db)
    ranges = {Method.MINMAX: (float(w.min()), float(w.max()))}
    assert weight_markers(w, INT8, ranges, stats) == weight_markers(w, INT8, ranges)
