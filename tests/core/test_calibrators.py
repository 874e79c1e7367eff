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

from qviz.core.calibrators import (
    Method,
    MethodSpec,
    choose_range,
    entropy_levels,
    kl_divergence_curve,
)
from qviz.core.errors import QvizError
from qviz.core.formats import NumberFormat
from qviz.core.histogram import Histogram
from qviz.core.qparams import compute_qparams
from qviz.core.quantize import fake_quantize
from qviz.core.stats import TensorStats, TensorStatsAccumulator, compute_stats

INT8 = NumberFormat.parse("int8")
INT8_ASYM = NumberFormat.parse("int8", symmetric=False)
UINT8_ASYM = NumberFormat.parse("uint8", symmetric=False)
INT4 = NumberFormat.parse("int4")
E4M3 = NumberFormat.parse("fp8_e4m3fn")

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


@pytest.mark.parametrize("kind", ["gauss", "laplace"])
@pytest.mark.parametrize("fmt", [INT8, INT4], ids=["int8", "int4"])
def test_entropy_threshold_matches_brute_force_search(kind: str, fmt: NumberFormat) -> None:
    x = _data(kind, 50_000)
    amax = float(np.abs(x).max())
    # 0 on a bin edge, so the |x| histogram the method folds is exactly np.histogram(|x|).
    counts, _ = np.histogram(x, bins=512, range=(-amax, amax))
    stats = TensorStats("t", Histogram(counts, -amax, amax), float(x.min()), float(x.max()), x.size)
    lo, hi = choose_range(stats, MethodSpec(Method.ENTROPY), fmt)
    abs_counts, edges = np.histogram(np.abs(x), bins=256, range=(0, amax))
    levels = entropy_levels(fmt, one_sided=False)
    kls = [_brute_force_kl(abs_counts, levels, i) for i in range(levels, 257)]
    best = levels + len(kls) - 1 - int(np.argmin(kls[::-1]))
    expected = min(edges[best], float(x.max()))
    assert hi == pytest.approx(expected, rel=1e-9)
    assert lo == pytest.approx(max(-edges[best], float(x.min())), rel=1e-9)


def test_entropy_is_close_to_onnxruntime_entropy_calibration() -> None:
    # Not the same algorithm (ORT merges a two-sided histogram into 128 bins, TensorRT's
    # |x| histogram into one level per int8 step), but the thresholds must be close.
    x = _data("gauss")
    (ort_lo, ort_hi), _ = _ort_collector("entropy", False, 0.0, [x])
    lo, hi = choose_range(compute_stats(x), MethodSpec(Method.ENTROPY), INT8)
    assert hi == pytest.approx(ort_hi, rel=0.1)
    assert lo == pytest.approx(ort_lo, rel=0.1)


def test_entropy_on_relu_output_ignores_the_zero_spike() -> None:
    x = np.maximum(_data("gauss"), 0.0)  # half the values are exactly 0
    lo, hi = choose_range(compute_stats(x), MethodSpec(Method.ENTROPY), INT8)
    assert lo == 0.0
    assert 2.5 < hi <= float(x.max())


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
    spec = MethodSpec(method, manual_range=(-1.0, 1.0))
    empty = TensorStatsAccumulator("e").finish()
    constant = compute_stats(np.full(100, 3.0))
    if method is Method.MANUAL:
        assert choose_range(empty, spec, INT8) == (-1.0, 1.0)
        return
    assert choose_range(empty, spec, INT8) == (0.0, 0.0)
    lo, hi = choose_range(constant, spec, INT8_ASYM)
    assert lo == hi == 3.0
