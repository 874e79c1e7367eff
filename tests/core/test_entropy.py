"""The entropy method against onnxruntime's EntropyCalibrater and a loop over its windows, and
TensorRT's KL criterion (drawn by the error curve) against a brute-force computation."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    HistogramCollector,
    create_calibrator,
)
from scipy.stats import entropy as scipy_entropy

from qviz.core.calibration.entropy import ort_entropy_kl, symmetric_counts
from qviz.core.calibration.kl_curve import kl_divergence_curve
from qviz.core.calibration.methods import Method, MethodSpec, choose_range, choose_row_ranges
from qviz.core.demo import DEMO_DIR
from qviz.core.stats.histogram import Histogram, HistogramRows
from qviz.core.stats.tensor_stats import TensorStats, TensorStatsAccumulator, compute_stats
from tests.core.calibration_reference import (
    FORMATS,
    INT8,
    N,
    OrtReader,
    ort_collector,
    relu_model,
    sample_data,
)


# ---------------------------------------------------------------------- Entropy
# TensorRT's criterion (kl_divergence_curve) is what the error curve draws; the ENTROPY method
# follows onnxruntime (ort_entropy_kl).
def _brute_force_kl(hist: np.ndarray, levels: int, i: int) -> float:
    """TensorRT entropy calibration for one candidate, written as plainly as possible
    (after pytorch-quantization's _compute_amax_entropy)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    p = bins[:i].copy()
    p[-1] += bins[i:].sum()
    level_of = [(j * levels) // i for j in range(i)]
    q = np.zeros(i)
    for level in set(level_of):
        members = [j for j in range(i) if level_of[j] == level]
        nonzero = [j for j in members if bins[j] != 0]
        for j in nonzero:
            q[j] = sum(bins[j2] for j2 in members) / len(nonzero)
    if q.sum() == 0 or np.any((p > 0) & (q == 0)):
        return np.inf
    return float(scipy_entropy(p / p.sum(), q / q.sum()))


@pytest.mark.parametrize("seed", range(6))
def test_kl_curve_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, levels = 80, int(rng.integers(3, 16))
    hist = rng.integers(0, 50, n).astype(np.float64)
    hist[rng.random(n) < 0.3] = 0.0  # empty bins exercise the non-zero expansion
    ends = np.arange(1, n + 1)
    fast = kl_divergence_curve(hist, levels, ends)
    slow = np.array([_brute_force_kl(hist, levels, i) for i in ends])
    np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """onnxruntime's quant_utils.smooth_distribution (float64)."""
    zeros = p == 0
    n_zeros = int(zeros.sum())
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    return p + eps * zeros - eps * n_zeros / n_nonzeros * ~zeros


def _ort_kl_loop(hist: np.ndarray, num_quantized_bins: int = 128) -> np.ndarray:
    """onnxruntime's HistogramCollector.get_entropy_threshold transcribed loop for loop
    (float64 where it uses float32): the KL of every window i = Q/2 .. n/2."""
    num_bins = hist.size
    zero_bin_index = num_bins // 2
    kls = []
    for i in range(num_quantized_bins // 2, zero_bin_index + 1):
        start_index = zero_bin_index - i
        end_index = min(zero_bin_index + i + 1, num_bins)
        sliced = hist[start_index:end_index].astype(np.float64)
        p = sliced.copy()
        p[0] += hist[:start_index].sum()
        p[-1] += hist[end_index:].sum()
        nonzeros = (p != 0).astype(np.int64)
        quantized_bins = np.zeros(num_quantized_bins, dtype=np.int64)
        merged = sliced.size // num_quantized_bins
        for index in range(num_quantized_bins):
            quantized_bins[index] = sliced[index * merged : (index + 1) * merged].sum()
        quantized_bins[-1] += sliced[num_quantized_bins * merged :].sum()
        q = np.zeros(p.size, dtype=np.int64)  # int64, as in onnxruntime: truncates
        for index in range(num_quantized_bins):
            norm = nonzeros[index * merged : (index + 1) * merged].sum()
            if norm != 0:
                q[index * merged : (index + 1) * merged] = quantized_bins[index] / norm
        ps, qs = _smooth(p), _smooth(q.astype(np.float64))
        if ps is None or qs is None:
            kls.append(np.inf)
            continue
        kls.append(float(scipy_entropy(ps / ps.sum(), qs / qs.sum())))
    return np.array(kls)


def _ort_threshold_loop(
    hist: np.ndarray, amax: float, vmin: float, vmax: float
) -> tuple[float, float]:
    """The range of onnxruntime's entropy calibration from :func:`_ort_kl_loop`: the first
    window with the smallest KL (up to float64 rounding), intersected with [vmin, vmax]."""
    kl = _ort_kl_loop(hist)
    n = hist.size
    i = 64 + int(np.flatnonzero(kl <= kl.min() + 1e-12)[0])
    width = 2.0 * amax / n
    lo, hi = -i * width, ((i + 1) * width if i < n // 2 else amax)
    return max(lo, vmin), min(hi, vmax)


def _kind(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Test data: _data's kinds plus "demo" (the demo's normalised Fashion-MNIST input: half
    the pixels at the background value -0.8102, the rest spread up to 2.0227), "relu"
    (half exactly 0) and "sparse" (few values: many empty bins, sparse tails)."""
    rng = np.random.default_rng(seed)
    if kind == "demo":
        ink = np.minimum(-0.8102 + 2.833 * rng.beta(2.0, 3.0, n), 2.0227)
        return np.where(rng.random(n) < 0.5, -0.8102, ink).astype(np.float32)
    if kind == "relu":
        return np.maximum(rng.standard_normal(n), 0.0).astype(np.float32)
    if kind == "sparse":
        return rng.standard_t(3, max(n // 100, 10)).astype(np.float32)
    return sample_data(kind, n, seed)


@pytest.mark.parametrize("seed", range(8))
def test_ort_entropy_kl_matches_a_loop_over_the_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # 128: a single window; 256, 384: the last window's length is a multiple of 128 (no
    # remainder bins); the others always leave a remainder.
    n = [128, 130, 256, 300, 384, 514, 256, 300][seed]
    x = rng.standard_normal(int(rng.integers(50, 20_000))) * rng.uniform(0.2, 1.0)
    x += rng.uniform(-1.0, 1.0)
    amax = np.abs(x).max()
    hist = np.histogram(x, n, range=(-amax, amax))[0].astype(np.float64)
    if seed % 2:
        hist[rng.random(n) < 0.3] = 0.0  # empty bins inside the windows too
    if seed == 6:
        hist[:] = 0.0
        hist[[n // 2, n // 2 + 5]] = [10.0, 1.0]  # P = Q exactly for many windows
    fast = ort_entropy_kl(hist)
    slow = _ort_kl_loop(hist)
    np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-10, atol=1e-13)
    # Rows at once (chunked) give each row's curve.
    rows = np.stack([hist, hist[::-1], np.roll(hist, 3)])
    together = ort_entropy_kl(rows)
    for row, curve in zip(rows, together, strict=True):
        np.testing.assert_allclose(curve, ort_entropy_kl(row), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["gauss", "laplace", "demo", "relu", "sparse"])
def test_entropy_range_is_the_loop_search_on_small_histograms(kind: str) -> None:
    x = _kind(kind, 20_000, seed=1)
    amax = float(np.abs(x).max())
    counts = np.histogram(x, 300, range=(-amax, amax))[0]
    stats = TensorStats("t", Histogram(counts, -amax, amax), float(x.min()), float(x.max()), x.size)
    lo, hi = choose_range(stats, MethodSpec(Method.ENTROPY), INT8)
    assert (lo, hi) == pytest.approx(
        _ort_threshold_loop(counts, amax, float(x.min()), float(x.max())), rel=1e-12, abs=0
    )


def _ort_entropy_on(x: np.ndarray) -> tuple[tuple[float, float], tuple]:
    """onnxruntime's entropy range for ``x`` (num_bins=2048, num_quantized_bins=128) and the
    histogram it was computed from: (hist, edges, min, max, threshold)."""
    (lo, hi), _ = ort_collector("entropy", False, 0.0, [x])
    collector = HistogramCollector("entropy", False, 2048, 128, 0.0, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect({"x": [x]})
    return (lo, hi), collector.histogram_dict["x"]


@pytest.mark.parametrize("kind", ["gauss", "laplace", "shifted", "demo", "relu"])
def test_entropy_equals_onnxruntime_on_onnxruntimes_own_histogram(kind: str) -> None:
    # Same counts, same layout: the same window as onnxruntime's own code (up to the float32
    # rounding of its edges).
    x = _kind(kind, N)
    (ort_lo, ort_hi), (hist, _, vmin, vmax, threshold) = _ort_entropy_on(x)
    amax = float(threshold)
    stats = TensorStats("t", Histogram(hist, -amax, amax), float(vmin), float(vmax), x.size)
    np.testing.assert_array_equal(
        symmetric_counts(HistogramRows.from_histogram(stats.histogram), [amax], hist.size)[0],
        hist,
    )
    lo, hi = choose_range(stats, MethodSpec(Method.ENTROPY), INT8)
    assert lo == pytest.approx(ort_lo, abs=1e-6 * amax)
    assert hi == pytest.approx(ort_hi, abs=1e-6 * amax)


def _ort_entropy_calibrater(tmp_path, batches, **extra_options) -> dict:
    model = tmp_path / "relu.onnx"
    relu_model(model, batches[0].shape[1])
    calibrater = create_calibrator(
        model,
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options=extra_options,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        calibrater.collect_data(OrtReader(batches))
        ranges = calibrater.compute_data()
    return {
        name: tuple(float(np.ravel(v)[0]) for v in ranges[name].range_value) for name in ("x", "y")
    }


def _entropy_of_batches(batches, fn) -> tuple[TensorStats, tuple[float, float]]:
    acc = TensorStatsAccumulator("t")
    for b in batches:
        acc.update(fn(b))
    stats = acc.finish()
    return stats, choose_range(stats, MethodSpec(Method.ENTROPY), INT8)


@pytest.mark.parametrize("kind", ["demo", "symmetric gauss", "relu"])
def test_entropy_matches_onnxruntime_entropy_calibrater(tmp_path, kind: str) -> None:
    # A Relu model through onnxruntime's real EntropyCalibrater (num_bins=2048): its input x
    # and its output y (ReLU-like, half exactly 0), in 4 batches; the ranges agree within a
    # couple of bins. Data symmetric about 0 with the extremes in the first batch, and ReLU
    # outputs (whose [0, max] bins halve onto [-max, max]), are binned as onnxruntime bins
    # them. The demo-like input is not (qviz's bins span [-0.81, max]): its lower bound is
    # the exact minimum whatever the bins (every window that holds the background spike
    # reaches past it), and its upper bound agrees for this sample (see the next test for
    # how far a different binning can move onnxruntime's pick).
    if kind == "symmetric gauss":
        v = _kind("gauss", 32 * 3200)
        v[[0, np.argmax(np.abs(v))]] = v[[np.argmax(np.abs(v)), 0]]
        x = np.stack([v, -v], axis=1).ravel()
    else:
        x = _kind(kind, 64 * 3200)
    batches = list(x.reshape(4, -1, 64))
    ort = _ort_entropy_calibrater(tmp_path, batches, num_bins=2048)
    ours = {}
    for name, fn in (("x", lambda b: b), ("y", lambda b: np.maximum(b, 0.0))):
        stats, (lo, hi) = _entropy_of_batches(batches, fn)
        width = 2.0 * max(abs(stats.min), abs(stats.max)) / 2048
        assert abs(lo - ort[name][0]) <= 2 * width, (name, (lo, hi), ort[name])
        assert abs(hi - ort[name][1]) <= 2 * width, (name, (lo, hi), ort[name])
        ours[name] = (lo, hi)
    assert ours["y"][0] == ort["y"][0] == 0.0
    if kind == "demo":
        # The background spike keeps the lower bound at the exact minimum (TensorRT's |x|
        # search clipped the demo's input to (-0.81, 0.81) instead).
        assert ours["x"][0] == ort["x"][0] == float(x.min())
        # onnxruntime's default num_bins (128) equals num_quantized_bins: one window, the
        # whole range, so its default entropy calibration is min/max.
        default = _ort_entropy_calibrater(tmp_path, batches)
        assert default["x"] == (float(x.min()), float(x.max()))


@pytest.mark.parametrize("kind", ["laplace", "shifted"])
def test_entropy_is_near_onnxruntime_where_the_bins_differ(tmp_path, kind: str) -> None:
    # Two-sided data not symmetric about 0: qviz's bins span [min, max] (doubled when a later
    # batch reaches further), onnxruntime's [-amax, amax], so the counts fall into different
    # bins. onnxruntime's KL is jagged in the window (the remainder bins of every odd-length
    # window get Q = 0, a pattern with a period of 64 windows) and flat near its minimum, so
    # a different binning of the same values moves its pick by several percent of amax:
    # onnxruntime itself, given the same 204,800 Laplace values (seed 3) shifted by a
    # quarter of a bin, moves from 10.06 to 8.88 (9 % of amax). The range must stay
    # within about that.
    batches = list(_kind(kind, 64 * 3200).reshape(4, -1, 64))
    ort = _ort_entropy_calibrater(tmp_path, batches, num_bins=2048)
    stats, (lo, hi) = _entropy_of_batches(batches, lambda b: b)
    amax = max(abs(stats.min), abs(stats.max))
    assert abs(lo - ort["x"][0]) <= 0.1 * amax
    assert abs(hi - ort["x"][1]) <= 0.1 * amax


def test_entropy_keeps_the_demo_input_whole() -> None:
    path = DEMO_DIR / "data.npz"
    if not path.is_file():
        pytest.skip("the built-in demo is not there")
    with np.load(path) as npz:
        x = npz["input"]
    stats = compute_stats(x)
    # Half the pixels are background (-0.81): onnxruntime keeps [-0.81, 2.02], and so must
    # we (TensorRT's |x| search clipped at 0.81, 28 % of the pixels).
    assert choose_range(stats, MethodSpec(Method.ENTROPY), INT8) == (stats.min, stats.max)


def test_entropy_on_relu_output_ignores_the_zero_spike() -> None:
    x = _kind("relu", N)
    (ort_lo, ort_hi), _ = _ort_entropy_on(x)
    stats = compute_stats(x)
    lo, hi = choose_range(stats, MethodSpec(Method.ENTROPY), INT8)
    assert lo == ort_lo == 0.0
    assert 2.5 < hi < float(x.max())
    assert abs(hi - ort_hi) <= 2 * 2.0 * stats.max / 2048


def test_entropy_range_does_not_depend_on_the_format() -> None:
    # As in onnxruntime (num_quantized_bins is 128 for every type); compute_qparams then
    # symmetrises the range or not.
    stats = compute_stats(_kind("shifted", 50_000))
    ranges = {choose_range(stats, MethodSpec(Method.ENTROPY), f) for f in FORMATS}
    assert len(ranges) == 1
    lo, hi = ranges.pop()
    assert stats.min <= lo < 0.0 < hi <= stats.max
    relu = compute_stats(_kind("relu", 50_000))
    ranges = {choose_range(relu, MethodSpec(Method.ENTROPY), f) for f in FORMATS}
    assert len(ranges) == 1 and ranges.pop()[0] == 0.0


def test_entropy_rows_at_once_equal_one_at_a_time() -> None:
    # Per-channel weights: many rows (more than one chunk), each its own histogram.
    rng = np.random.default_rng(7)
    w = rng.standard_normal((25, 3000)) * rng.uniform(0.1, 2.0, (25, 1))
    w[3] = np.abs(w[3])  # one-sided row
    w[4, :100] = 40.0  # an outlier cluster
    rows = HistogramRows.from_values(w, 512)
    spec = MethodSpec(Method.ENTROPY)
    lo, hi = choose_row_ranges(rows, w.min(axis=1), w.max(axis=1), spec, INT8)
    for r in range(w.shape[0]):
        one = HistogramRows(rows.counts[r : r + 1], rows.lo[r : r + 1], rows.hi[r : r + 1])
        lo_r, hi_r = choose_row_ranges(one, w[r : r + 1].min(1), w[r : r + 1].max(1), spec, INT8)
        assert (lo[r], hi[r]) == (lo_r[0], hi_r[0])
    assert lo[3] == w[3].min() and (w.min(axis=1) <= lo).all() and (hi <= w.max(axis=1)).all()
