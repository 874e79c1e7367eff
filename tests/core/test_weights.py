"""Weight analysis: granularities, methods, per-channel metrics."""

from __future__ import annotations

import numpy as np
import pytest

from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.metrics import exact_metrics
from qviz.core.calibration.weights import analyze_weight
from qviz.core.errors import QvizError
from qviz.core.quant.formats import (
    Granularity,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize

INT8 = NumberFormat.parse("int8")
INT4_ASYM = NumberFormat.parse("int4", symmetric=False)
PER_TENSOR = PerTensor()
PER_CHANNEL = PerAxis()
MINMAX = MethodSpec(Method.MINMAX)


def _conv_weight(seed: int = 0, outlier_channel: int | None = 5) -> np.ndarray:
    """A Conv weight [out=16, in=8, 3, 3]; one output channel 30 times larger."""
    w = np.random.default_rng(seed).standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.05
    if outlier_channel is not None:
        w[outlier_channel] *= 30.0
    return w


def test_per_channel_beats_per_tensor_with_an_outlier_channel() -> None:
    w = _conv_weight()
    tensor = analyze_weight(w, 0, 1, MINMAX, PER_TENSOR, INT8)
    channel = analyze_weight(w, 0, 1, MINMAX, PER_CHANNEL, INT8)
    assert channel.metrics.sqnr_db >= tensor.metrics.sqnr_db
    # The ordinary channels are the ones per-tensor ruins.
    ordinary = np.arange(16) != 5
    assert tensor.channel_metrics is not None and channel.channel_metrics is not None
    gain = channel.channel_metrics.sqnr_db - tensor.channel_metrics.sqnr_db
    assert (gain[ordinary] > 20).all()
    assert abs(gain[5]) < 0.5


def test_per_channel_minmax_is_onnxruntime_per_channel_weight_quantization() -> None:
    w = _conv_weight()
    analysis = analyze_weight(w, 0, 1, MINMAX, PER_CHANNEL, INT8)
    flat = w.reshape(16, -1)
    expected = compute_qparams(flat.min(axis=1), flat.max(axis=1), INT8, axis=0)
    np.testing.assert_array_equal(analysis.qparams.scale, expected.scale)
    np.testing.assert_array_equal(analysis.qparams.zero_point, expected.zero_point)
    assert analysis.qparams.axis == 0
    direct = exact_metrics(w, expected, INT8)
    assert analysis.metrics.sqnr_db == direct.sqnr_db


def test_channel_metrics_against_numpy() -> None:
    # Gemm with transB=0: weight [in, out], output channels on axis 1.
    w = np.random.default_rng(2).standard_normal((32, 6)).astype(np.float32)
    w[:, 2] *= 10
    analysis = analyze_weight(w, 1, 0, MINMAX, PER_TENSOR, INT8)
    cm = analysis.channel_metrics
    assert cm is not None
    xq = fake_quantize(w, analysis.qparams, INT8).astype(np.float64)
    x = w.astype(np.float64)
    expected = 10 * np.log10((x**2).sum(axis=0) / ((xq - x) ** 2).sum(axis=0))
    np.testing.assert_allclose(cm.sqnr_db, expected, rtol=1e-12)
    np.testing.assert_array_equal(cm.min, w.min(axis=0))
    np.testing.assert_array_equal(cm.max, w.max(axis=0))
    assert (cm.lo == float(analysis.metrics.lo)).all() and (
        cm.hi == float(analysis.metrics.hi)
    ).all()


def test_per_group_blocks_along_the_reduction_axis() -> None:
    # MatMul weight [K=100, N=4]: reduction axis 0, output channels axis 1; blocks of 32
    # leave a short last block of 4.
    w = np.random.default_rng(3).standard_normal((100, 4)).astype(np.float32)
    group = PerGroup(32)
    analysis = analyze_weight(w, 1, 0, MINMAX, group, INT4_ASYM)
    qp = analysis.qparams
    assert qp.scale.shape == (4, 4) and qp.axis == 0 and qp.block_size == 32
    starts = np.arange(0, 100, 32)
    expected = compute_qparams(
        np.minimum.reduceat(w, starts, axis=0),
        np.maximum.reduceat(w, starts, axis=0),
        INT4_ASYM,
        axis=0,
        block_size=32,
    )
    np.testing.assert_array_equal(qp.scale, expected.scale)
    np.testing.assert_array_equal(qp.zero_point, expected.zero_point)
    per_channel = analyze_weight(w, 1, 0, MINMAX, PER_CHANNEL, INT4_ASYM)
    assert analysis.metrics.sqnr_db > per_channel.metrics.sqnr_db
    cm = analysis.channel_metrics
    assert cm is not None and cm.lo.shape == (4,)
    # A channel's range is the envelope of its blocks' ranges.
    np.testing.assert_array_equal(cm.lo, analysis.metrics.lo.min(axis=0))
    np.testing.assert_array_equal(cm.hi, analysis.metrics.hi.max(axis=0))


@pytest.mark.parametrize("granularity", ["per-channel", "per-group"])
@pytest.mark.parametrize("method", [Method.PERCENTILE, Method.MSE, Method.MANUAL])
def test_other_methods_per_row(granularity: str, method: Method) -> None:
    w = np.random.default_rng(4).laplace(size=(8, 256)).astype(np.float32)
    gran = Granularity.parse(granularity, group_size=64)
    spec = MethodSpec.of(method, percentile=99.0, manual_range=(-2.0, 2.0))
    analysis = analyze_weight(w, 0, 1, spec, gran, INT8)
    minmax = analyze_weight(w, 0, 1, MINMAX, gran, INT8)
    if method is Method.MSE:
        # The search minimises error row by row: never worse than minmax overall.
        assert analysis.metrics.mse <= minmax.metrics.mse * 1.001
    if method is Method.PERCENTILE and granularity == "per-channel":
        # Exact percentile of |w| per channel (numpy's inverted-CDF definition).
        t = np.quantile(np.abs(w), 0.99, axis=1, method="inverted_cdf")
        expected = compute_qparams(-t, t, INT8, axis=0)
        np.testing.assert_array_equal(analysis.qparams.scale, expected.scale)
    if method is Method.MANUAL:
        assert np.allclose(analysis.qparams.scale, np.float32(2.0 / 127))


def test_entropy_per_channel_runs_and_per_group_is_refused() -> None:
    w = np.random.default_rng(5).standard_normal((4, 4096)).astype(np.float32)
    analysis = analyze_weight(w, 0, 1, MethodSpec(Method.ENTROPY), PER_CHANNEL, INT8)
    t = analysis.metrics.hi
    assert analysis.qparams.scale.shape == (4,)
    # hi comes back from the float32 scale, so it may exceed max|w| by a rounding step.
    assert ((2.0 < t) & (t <= np.abs(w).max(axis=1) * (1 + 1e-6))).all()
    with pytest.raises(QvizError):
        analyze_weight(w, 0, 1, MethodSpec(Method.ENTROPY), Granularity.parse("per-group"), INT8)


@pytest.mark.parametrize("fmt", ["nf4", "fp8_e4m3fn", "int4"])
def test_formats_for_weights(fmt: str) -> None:
    number = NumberFormat.parse(fmt)
    w = _conv_weight(outlier_channel=None)
    for gran in (PER_TENSOR, PER_CHANNEL, Granularity.parse("per-group", group_size=8)):
        analysis = analyze_weight(w, 0, 1, MINMAX, gran, number)
        assert 10 < analysis.metrics.sqnr_db < 60
        assert analysis.metrics.cosine > 0.95


def test_bad_requests_are_refused() -> None:
    w = _conv_weight()
    with pytest.raises(QvizError):
        analyze_weight(w, None, 1, MINMAX, PER_CHANNEL, INT8)
    with pytest.raises(QvizError):
        analyze_weight(w, 0, None, MINMAX, Granularity.parse("per-group"), INT8)
    with pytest.raises(QvizError):
        analyze_weight(w, 7, 1, MINMAX, PER_CHANNEL, INT8)
    bad = w.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(QvizError):
        analyze_weight(bad, 0, 1, MINMAX, PER_TENSOR, INT8)


def test_weight_without_channel_axis_has_no_channel_metrics() -> None:
    w = np.random.default_rng(6).standard_normal(50).astype(np.float32)
    analysis = analyze_weight(w, None, None, MethodSpec(Method.PERCENTILE), PER_TENSOR, INT8)
    assert analysis.channel_metrics is None
    assert analysis.qparams.scale.shape == ()
