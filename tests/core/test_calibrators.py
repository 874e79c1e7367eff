"""Calibration methods (MinMax, percentile, MSE, manual) against onnxruntime's calibrators and
brute-force searches; the entropy method is in test_entropy.py."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    create_calibrator,
)

from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.errors import QvizError
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.imported_params import ImportedParams
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.tensor_stats import TensorStatsAccumulator, compute_stats
from tests.core.calibration_reference import (
    E4M3,
    INT4,
    INT8,
    INT8_ASYM,
    UINT8_ASYM,
    OrtReader,
    ort_collector,
    relu_model,
    sample_data,
)


# ---------------------------------------------------------------------- MinMax
def test_minmax_matches_onnxruntime_minmax_calibrater(tmp_path) -> None:
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 64)) * (1 + k)).astype(np.float32) for k in range(3)]
    model = tmp_path / "relu.onnx"
    relu_model(model, 64)
    calibrater = create_calibrator(
        model,
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
    )
    calibrater.collect_data(OrtReader(batches))
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
    x = sample_data(kind)
    stats = compute_stats(x)
    ours_w = stats.histogram.bin_width
    # Symmetric format: ORT's symmetric=True rule on |x|.
    (ort_lo, ort_hi), ort_w = ort_collector("percentile", True, p, [x])
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, p), INT8)
    assert abs(hi - ort_hi) <= ours_w + ort_w
    assert abs(lo - ort_lo) <= ours_w + ort_w
    # Asymmetric format on two-sided data: ORT's symmetric=False rule, both tails.
    (ort_lo, ort_hi), ort_w = ort_collector("percentile", False, p, [x])
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, p), INT8_ASYM)
    assert abs(lo - ort_lo) <= ours_w + ort_w
    assert abs(hi - ort_hi) <= ours_w + ort_w


def test_percentile_matches_onnxruntime_calibrater_over_batches(tmp_path) -> None:
    # Several batches with a growing range: our bins merge, ORT's histogram grows.
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((1000, 16)) * (1 + 2 * k)).astype(np.float32) for k in range(3)]
    model = tmp_path / "relu.onnx"
    relu_model(model, 16)
    calibrater = create_calibrator(
        model,
        op_types_to_calibrate=["Relu"],
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"symmetric": True, "num_bins": 2048, "percentile": 99.9},
    )
    with contextlib.redirect_stdout(io.StringIO()):
        calibrater.collect_data(OrtReader(batches))
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
    x = np.maximum(sample_data("gauss"), 0.0)
    stats = compute_stats(x)
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE, 99.9), UINT8_ASYM)
    assert lo == 0.0
    assert abs(hi - np.quantile(x, 0.999)) <= stats.histogram.bin_width
    neg = -x
    lo, hi = choose_range(compute_stats(neg), MethodSpec(Method.PERCENTILE, 99.9), INT8_ASYM)
    assert hi == 0.0 and abs(lo - np.quantile(neg, 0.001)) <= stats.histogram.bin_width


def test_percentile_100_is_minmax_and_bad_values_are_refused() -> None:
    stats = compute_stats(sample_data("shifted", 10_001))
    assert choose_range(stats, MethodSpec(Method.PERCENTILE, 100.0), INT8_ASYM) == (
        stats.min,
        stats.max,
    )
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(QvizError):
            MethodSpec(Method.PERCENTILE, bad)


# ---------------------------------------------------------------------- MSE
@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("gauss", INT4), ("laplace", INT8), ("shifted", INT8_ASYM), ("laplace", E4M3)],
    ids=["gauss-int4", "laplace-int8", "shifted-int8asym", "laplace-e4m3"],
)
def test_mse_matches_brute_force_search(kind: str, fmt: NumberFormat) -> None:
    x = sample_data(kind, 20_000)
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
    stats = compute_stats(sample_data("laplace", 50_000))
    _, hi8 = choose_range(stats, MethodSpec(Method.MSE), INT8)
    _, hi4 = choose_range(stats, MethodSpec(Method.MSE), INT4)
    assert hi4 < hi8 < stats.max


# ---------------------------------------------------------------------- Manual, edge cases
def test_manual_range() -> None:
    stats = compute_stats(sample_data("gauss", 1000))
    assert choose_range(stats, MethodSpec(Method.MANUAL, manual_range=(-1, 2)), INT8) == (-1, 2)
    for bad in (None, (2.0, 1.0), (1.0, 1.0), (0.0, float("inf"))):
        with pytest.raises(QvizError):
            choose_range(stats, MethodSpec(Method.MANUAL, manual_range=bad), INT8)


@pytest.mark.parametrize("method", [Method.PERCENTILE, Method.ENTROPY, Method.MSE])
def test_histogram_methods_ignore_mask_fills(method: Method) -> None:
    x = sample_data("gauss", 40_000).reshape(200, 200)
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
    if method is Method.IMPORTED:
        # The range comes with the parameters, whatever the statistics hold.
        with pytest.raises(QvizError, match="no parameters"):
            choose_range(empty, spec, INT8)
        params = ImportedParams(QParams(np.float32(0.5), np.int8(0)))
        spec = MethodSpec(Method.IMPORTED, imported=params)
        assert choose_range(empty, spec, INT8) == choose_range(constant, spec, INT8)
        assert choose_range(empty, spec, INT8) == (-63.5, 63.5)
        return
    assert choose_range(empty, spec, INT8) == (0.0, 0.0)
    lo, hi = choose_range(constant, spec, INT8_ASYM)
    assert lo == hi == 3.0
