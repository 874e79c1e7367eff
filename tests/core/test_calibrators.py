"""Calibration methods against onnxruntime's calibrators and against brute-force searches."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization.calibrate import (
    CalibrationDataReader,
    CalibrationMethod,
    HistogramCollector,
    create_calibrator,
)
from scipy.stats import entropy as scipy_entropy

from qviz.core.calibration.methods import (
    Method,
    MethodSpec,
    choose_range,
    choose_row_ranges,
    kl_divergence_curve,
    ort_entropy_kl,
    symmetric_counts,
)
from qviz.core.demo import DEMO_DIR
from qviz.core.errors import QvizError
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.histogram import Histogram, HistogramRows
from qviz.core.stats.tensor_stats import TensorStats, TensorStatsAccumulator, compute_stats

INT8 = NumberFormat.parse("int8")
INT8_ASYM = NumberFormat.parse("int8", symmetric=False)
UINT8_ASYM = NumberFormat.parse("uint8", symmetric=False)
INT4 = NumberFormat.parse("int4")
E4M3 = NumberFormat.parse("fp8_e4m3fn")
FORMATS = (INT8, INT8_ASYM, UINT8_ASYM, INT4, E4M3)

# Sizes with no tie in the tails: (100 - p) / 200 * N is never an integer, so ORT's float
# CDF and ours cannot fall on opposite sides of an exact boundary.
N = 200_003


def _data(kind: str, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "shifted":
        return (rng.standard_normal(n) * 2.0 + 1.0).astype(np.float32)
    return rng.laplace(size=n).astype(np.float32)


def _ort_collector(method: str, symmetric: bool, percentile: float, batches) -> tuple:
    collector = HistogramCollector(
        method=method,
        symmetric=symmetric,
        num_bins=2048,
        num_quantized_bins=128,
        percentile=percentile,
        scenario="same",
    )
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress
        for b in batches:
            collector.collect({"x": [b]})
        result = collector.compute_collection_result()["x"]
    hist_edges = collector.histogram_dict["x"][1]
    return (float(result[0]), float(result[1])), float(hist_edges[1] - hist_edges[0])


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def _relu_model(path, width: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


# ---------------------------------------------------------------------- MinMax
def test_minmax_matches_onnxruntime_minmax_calibrater(tmp_path) -> None:
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 64)) * (1 + k)).astype(np.float32) for k in range(3)]
    model = tmp_path / "relu.onnx"
    _relu_model(model, 64)
    calibrater = create_calibrator(
        model,
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
    )
    calibrater.collect_data(_Reader(batches))
    ranges = calibrater.compute_data()
    for name, fn in (("x", lambda b: b), ("y", lambda b: np.maximum(b, 0))):
        acc = TensorStatsAccumulator(name)
        for b in batches:
            acc.update(fn(b))
        lo, hi = choose_range(acc.finish(), MethodSpec(Method.MINMAX), INT8)
        ort_lo, ort_hi = ranges[name].range_value
        assert (lo, hi) == (float(np.ravel(ort_lo)[0]), float(np.ravel(ort_hi)[0]))


# ---------------------------------------------------------------------- Percentile
@pytest.mark.parametrize("kind", ["gauss", "shifted", "laplace"])
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99, 99.999])
def test_percentile_matches_onnxruntime(kind: str, p: float) -> None:
    x = _data(kind)
    stats = compute_stats(x)
    ours_w = stats.histogram.bin_width
    # Symmetric format: ORT's symmetric=True rule on |x|.
    (ort_lo, ort_hi), ort_w = _ort_collector("percentile", True, p, [x])
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, p), INT8)
    assert abs(hi - ort_hi) <= ours_w + ort_w
    assert abs(lo - ort_lo) <= ours_w + ort_w
    # Asymmetric format on two-sided data: ORT's symmetric=False rule, both tails.
    (ort_lo, ort_hi), ort_w = _ort_collector("percentile", False, p, [x])
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, p), INT8_ASYM)
    assert abs(lo - ort_lo) <= ours_w + ort_w
    assert abs(hi - ort_hi) <= ours_w + ort_w


def test_percentile_matches_onnxruntime_calibrater_over_batches(tmp_path) -> None:
    # Several batches with a growing range: our bins merge, ORT's histogram grows.
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((1000, 16)) * (1 + 2 * k)).astype(np.float32) for k in range(3)]
    model = tmp_path / "relu.onnx"
    _relu_model(model, 16)
    calibrater = create_calibrator(
        model,
        op_types_to_calibrate=["Relu"],
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"symmetric": True, "num_bins": 2048, "percentile": 99.9},
    )
    with contextlib.redirect_stdout(io.StringIO()):
        calibrater.collect_data(_Reader(batches))
        ranges = calibrater.compute_data()
    acc = TensorStatsAccumulator("x")
    for b in batches:
        acc.update(b)
    stats = acc.finish()
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, 99.9), INT8)
    ort_lo, ort_hi = (float(np.ravel(v)[0]) for v in ranges["x"].range_value)
    ort_width = float(np.abs(np.concatenate(batches)).max()) / 2048
    assert abs(hi - ort_hi) <= stats.histogram.bin_width + ort_width
    assert abs(lo - ort_lo) <= stats.histogram.bin_width + ort_width


def test_percentile_on_one_sided_data_cuts_only_the_open_tail() -> None:
    x = np.maximum(_data("gauss"), 0.0)
    stats = compute_stats(x)
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, 99.9), UINT8_ASYM)
    assert lo == 0.0
    assert abs(hi - np.quantile(x, 0.999)) <= stats.histogram.bin_width
    neg = -x
    lo, hi = choose_range(compute_stats(neg), MethodSpec(Method.PERCENTILE, 99.9), INT8_ASYM)
    assert hi == 0.0 and abs(lo - np.quantile(neg, 0.001)) <= stats.histogram.bin_width


def test_percentile_100_is_minmax_and_bad_values_are_refused() -> None:
    stats = compute_stats(_data("shifted", 10_001))
    assert choose_range(stats, MethodSpec(Method.PERCENTILE, 100.0), INT8_ASYM) == (
        stats.min,
        stats.max,
    )
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(QvizError):
            MethodSpec(Method.PERCENTILE, bad)


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
    return _data(kind, n, seed)


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
    (lo, hi), _ = _ort_collector("entropy", False, 0.0, [x])
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
    _relu_model(model, batches[0].shape[1])
    calibrater = create_calibrator(
        model,
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options=extra_options,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        calibrater.collect_data(_Reader(batches))
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


# ---------------------------------------------------------------------- MSE
@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("gauss", INT4), ("laplace", INT8), ("shifted", INT8_ASYM), ("laplace", E4M3)],
    ids=["gauss-int4", "laplace-int8", "shifted-int8asym", "laplace-e4m3"],
)
def test_mse_matches_brute_force_search(kind: str, fmt: NumberFormat) -> None:
    x = _data(kind, 20_000)
    stats = compute_stats(x)
    lo, hi = choose_range(stats, MethodSpec(Method.MSE), fmt)

    def exact_mse(a: float, b: float) -> float:
        qp = compute_qparams(a, b, fmt)
        err = fake_quantize(x, qp, fmt).astype(np.float64) - x.astype(np.float64)
        return float(np.mean(err * err))

    amax = float(np.abs(x).max())
    best = np.inf
    best_clip = amax
    for c in np.linspace(amax / 400, amax, 400):  # plain Python loop over clips
        if fmt.symmetric:
            a, b = -c, c
        else:
            a, b = x.min() * c / amax, x.max() * c / amax
        err = exact_mse(a, b)
        if err <= best:
            best, best_clip = err, c
    ours = exact_mse(lo, hi)
    assert ours <= best * 1.02
    assert max(abs(lo), abs(hi)) == pytest.approx(best_clip, rel=0.05)


def test_mse_clips_heavy_tails_more_at_lower_bit_width() -> None:
    stats = compute_stats(_data("laplace", 50_000))
    _, hi8 = choose_range(stats, MethodSpec(Method.MSE), INT8)
    _, hi4 = choose_range(stats, MethodSpec(Method.MSE), INT4)
    assert hi4 < hi8 < stats.max


# ---------------------------------------------------------------------- Manual, edge cases
def test_manual_range() -> None:
    stats = compute_stats(_data("gauss", 1000))
    assert choose_range(stats, MethodSpec(Method.MANUAL, manual_range=(-1, 2)), INT8) == (-1, 2)
    for bad in (None, (2.0, 1.0), (1.0, 1.0), (0.0, float("inf"))):
        with pytest.raises(QvizError):
            choose_range(stats, MethodSpec(Method.MANUAL, manual_range=bad), INT8)


@pytest.mark.parametrize("method", [Method.PERCENTILE, Method.ENTROPY, Method.MSE])
def test_histogram_methods_ignore_mask_fills(method: Method) -> None:
    x = _data("gauss", 40_000).reshape(200, 200)
    x[:, 150:] = np.float32(-3.4e38)
    stats = compute_stats(x)
    lo, hi = choose_range(stats, MethodSpec(method), INT8)
    assert -6.0 < lo < 0.0 < hi < 6.0
    assert choose_range(stats, MethodSpec(Method.MINMAX), INT8)[0] < -1e38


@pytest.mark.parametrize("method", list(Method))
def test_empty_and_constant_tensors(method: Method) -> None:
    spec = MethodSpec.of(method, manual_range=(-1.0, 1.0))
    empty = TensorStatsAccumulator("e").finish()
    constant = compute_stats(np.full(100, 3.0))
    if method is Method.MANUAL:
        assert choose_range(empty, spec, INT8) == (-1.0, 1.0)
        return
    assert choose_range(empty, spec, INT8) == (0.0, 0.0)
    lo, hi = choose_range(constant, spec, INT8_ASYM)
    assert lo == hi == 3.0
