"""Error metrics: histogram metrics against exact ones, exact ones against plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qviz.core.calibration.kl_curve import kl_divergence_curve
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import error_curve, exact_metrics, histogram_metrics
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize, quantization_levels
from qviz.core.stats.tensor_stats import TensorStatsAccumulator, compute_stats

RNG = np.random.default_rng(7)
GAUSS = RNG.standard_normal(100_000).astype(np.float32)
LAPLACE = RNG.laplace(size=100_000).astype(np.float32)
FORMATS = [
    NumberFormat.parse("int8"),
    NumberFormat.parse("uint8", symmetric=False),
    NumberFormat.parse("int4"),
    NumberFormat.parse("fp8_e4m3fn"),
    NumberFormat.parse("fp8_e5m2"),
    NumberFormat.parse("nf4"),
]


def _direct(x: np.ndarray, xq: np.ndarray) -> dict[str, float]:
    """The metrics written out with plain numpy, for comparison."""
    x = x.astype(np.float64).ravel()
    q = xq.astype(np.float64).ravel()
    err = q - x
    return {
        "mse": float(np.mean(err**2)),
        "sqnr_db": float(10 * np.log10(np.sum(x**2) / np.sum(err**2))),
        "max_abs_error": float(np.max(np.abs(err))),
        "cosine": float(x @ q / (np.linalg.norm(x) * np.linalg.norm(q))),
    }


def test_sqnr_increases_with_bits() -> None:
    stats = compute_stats(GAUSS)
    previous_hist = previous_exact = -math.inf
    for bits in range(2, 9):
        fmt = NumberFormat.parse(f"int{bits}")
        lo, hi = choose_range(stats, MethodSpec(Method.MINMAX), fmt)
        hist_db = histogram_metrics(stats, lo, hi, fmt).sqnr_db
        exact_db = exact_metrics(GAUSS, compute_qparams(lo, hi, fmt), fmt).sqnr_db
        assert hist_db > previous_hist + 3 and exact_db > previous_exact + 3
        previous_hist, previous_exact = hist_db, exact_db
    assert previous_exact == pytest.approx(39.4, abs=1.0)  # about 6 dB per bit


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize("method", [Method.MINMAX, Method.PERCENTILE, Method.MSE])
def test_histogram_metrics_agree_with_exact_metrics(fmt: NumberFormat, method: Method) -> None:
    stats = compute_stats(LAPLACE)
    lo, hi = choose_range(stats, MethodSpec.of(method, percentile=99.9), fmt)
    hist = histogram_metrics(stats, lo, hi, fmt)
    exact = exact_metrics(LAPLACE, compute_qparams(lo, hi, fmt), fmt)
    assert hist.sqnr_db == pytest.approx(exact.sqnr_db, abs=0.15)
    assert hist.mse == pytest.approx(exact.mse, rel=0.05)
    assert hist.cosine == pytest.approx(exact.cosine, abs=1e-4)
    assert hist.clipped_fraction == pytest.approx(exact.clipped_fraction, abs=2e-5)
    # Histogram max error is the supremum over the occupied bins: an upper bound, and tight.
    assert exact.max_abs_error <= hist.max_abs_error * (1 + 1e-6)
    assert hist.max_abs_error <= exact.max_abs_error + stats.histogram.bin_width
    for name in ("lo", "hi", "scale", "zero_point", "step"):
        np.testing.assert_array_equal(getattr(hist, name), getattr(exact, name))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label)
def test_exact_metrics_per_tensor_against_numpy(fmt: NumberFormat) -> None:
    lo, hi = -3.0, 2.0  # clips both tails of the Laplace data
    qp = compute_qparams(lo, hi, fmt)
    m = exact_metrics(LAPLACE, qp, fmt)
    direct = _direct(LAPLACE, fake_quantize(LAPLACE, qp, fmt))
    for key, value in direct.items():
        assert getattr(m, key) == pytest.approx(value, rel=1e-9), key
    # Clipped: beyond the outermost level by more than half the step next to it.
    levels = quantization_levels(qp.scale, qp.zero_point, fmt)
    below = levels[0] - (levels[1] - levels[0]) / 2
    above = levels[-1] + (levels[-1] - levels[-2]) / 2
    assert m.clipped_fraction == pytest.approx(np.mean((LAPLACE < below) | (LAPLACE > above)))
    assert 0.01 < m.clipped_fraction < 0.2


def test_exact_metrics_per_channel_and_per_group_against_numpy() -> None:
    fmt = NumberFormat.parse("int4", symmetric=False)
    w = (RNG.standard_normal((6, 50)) * np.arange(1, 7)[:, None]).astype(np.float32)
    qp_c = compute_qparams(w.min(axis=1), w.max(axis=1), fmt, axis=0)
    m = exact_metrics(w, qp_c, fmt)
    direct = _direct(w, fake_quantize(w, qp_c, fmt))
    for key, value in direct.items():
        assert getattr(m, key) == pytest.approx(value, rel=1e-9), key
    assert m.scale.shape == m.lo.shape == m.step.shape == (6,)
    assert m.clipped_fraction == 0.0

    starts = np.arange(0, 50, 16)  # blocks of 16 along axis 1, the last one short
    lo = np.minimum.reduceat(w, starts, axis=1) * 0.8
    hi = np.maximum.reduceat(w, starts, axis=1) * 0.8
    qp_g = compute_qparams(lo, hi, fmt, axis=1, block_size=16)
    m = exact_metrics(w, qp_g, fmt)
    xq = fake_quantize(w, qp_g, fmt)
    direct = _direct(w, xq)
    for key, value in direct.items():
        assert getattr(m, key) == pytest.approx(value, rel=1e-9), key
    assert m.scale.shape == (6, 4) and 0.0 < m.clipped_fraction < 0.2


def test_nonfinite_values_are_left_out_of_exact_metrics() -> None:
    fmt = NumberFormat.parse("int8")
    x = np.array([0.5, np.nan, -1.0, np.inf, 1.0], dtype=np.float32)
    m = exact_metrics(x, compute_qparams(-1.0, 1.0, fmt), fmt)
    assert np.isfinite(m.mse) and m.max_abs_error < 1 / 127


def test_empty_histogram_metrics() -> None:
    stats = TensorStatsAccumulator("e").finish()
    m = histogram_metrics(stats, 0.0, 0.0, NumberFormat.parse("int8"))
    assert (m.mse, m.sqnr_db, m.max_abs_error, m.cosine) == (0.0, math.inf, 0.0, 1.0)


def test_mask_fills_do_not_overflow_metrics() -> None:
    x = GAUSS.reshape(100, 1000).copy()
    x[:, 900:] = np.float32(-3.4e38)
    stats = compute_stats(x)
    fmt = NumberFormat.parse("int8")
    lo, hi = choose_range(stats, MethodSpec(Method.MINMAX), fmt)
    ruined = histogram_metrics(stats, lo, hi, fmt)
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE), fmt)
    good = histogram_metrics(stats, lo, hi, fmt)
    # MinMax over the fill: every real value rounds to 0 (SQNR 0 dB, cosine 0), no overflow.
    assert np.isfinite(ruined.mse) and ruined.sqnr_db <= 0.0 and ruined.cosine == 0.0
    assert good.sqnr_db > 30
    assert stats.dominated_by_extremes


@pytest.mark.parametrize(
    "fmt",
    [NumberFormat.parse("int8"), NumberFormat.parse("uint8", symmetric=False)],
    ids=lambda f: f.label,
)
def test_error_curve_matches_pointwise_metrics(fmt: NumberFormat) -> None:
    x = (LAPLACE + 1.0).astype(np.float32)  # asymmetric data
    stats = compute_stats(x)
    clips = np.linspace(0.5, float(np.abs(x).max()), 60)
    curve = error_curve(stats, fmt, clips)
    assert curve.mse.shape == curve.sqnr_db.shape == curve.kl.shape == (60,)
    for k in (3, 20, 59):
        lo, hi = curve.lo[k], curve.hi[k]
        if not fmt.symmetric:
            # Asymmetric form: the clip bounds the larger (upper) side, the lower bound is
            # scaled in proportion.
            assert hi == pytest.approx(clips[k])
            assert lo == pytest.approx(x.min() * clips[k] / x.max())
        point = histogram_metrics(stats, lo, hi, fmt)
        assert curve.mse[k] == pytest.approx(point.mse, rel=0.05)
    # The curve's best clip is where the MSE method lands (up to the curve's resolution).
    _, hi_mse = choose_range(stats, MethodSpec(Method.MSE), fmt)
    assert abs(curve.best_mse_clip - hi_mse) <= 2 * (clips[1] - clips[0])


def test_error_curve_kl_is_the_entropy_criterion() -> None:
    stats = compute_stats(GAUSS)
    fmt = NumberFormat.parse("int8")
    abs_hist = stats.histogram.abs_histogram(stats.abs_max)
    ends = np.arange(130, abs_hist.bins + 1, 7)
    clips = ends * abs_hist.bin_width
    curve = error_curve(stats, fmt, clips)
    np.testing.assert_allclose(curve.kl, kl_divergence_curve(abs_hist.counts, 127, ends))
    # The ENTROPY threshold minimises this KL over every candidate, so no clip beats it.
    _, t = choose_range(stats, MethodSpec(Method.ENTROPY), fmt)
    at_t = error_curve(stats, fmt, np.array([t])).kl[0]
    assert at_t <= curve.kl.min() + 1e-12
