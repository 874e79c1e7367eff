"""The tiled form of the entropy search (prefix sums over the tilings of merged bins) against
the direct form (every window's merged bins) and against a loop over onnxruntime's windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qviz.core.calibration.entropy import KlForm, entropy_ranges, kl_form, ort_entropy_kl
from qviz.core.stats.histogram import HistogramRows
from tests.core.test_entropy import _ort_kl_loop


def _histograms(n: int, rows: int, kind: str, sparsity: float, spikes: int, seed: int):
    """Integer counts (rows, n) over a symmetric range: the shapes per-channel weights and
    activations give, with empty bins, spikes and outliers at either end."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 40_000))
    out = np.empty((rows, n))
    for r in range(rows):
        if kind == "gauss":
            x = rng.standard_normal(size) * rng.uniform(0.05, 1.0) + rng.uniform(-0.5, 0.5)
        elif kind == "heavy":
            x = rng.standard_t(2, size) * 0.1
        elif kind == "relu":
            x = np.maximum(rng.standard_normal(size), 0.0)
        else:  # few values over many bins: a small channel in a 512-bin histogram
            x = rng.standard_normal(int(rng.integers(1, 300)))
        a = max(float(np.abs(x).max()), 1e-3)
        out[r] = np.histogram(x, n, range=(-a, a))[0]
    out[rng.random(out.shape) < sparsity] = 0.0
    for _ in range(spikes):
        out[rng.integers(rows), rng.integers(n)] += float(rng.integers(1, 5000))
    if rows > 1 and seed % 5 == 0:
        out[0] = 0.0  # an empty row
    return out


_SIZES = [128, 130, 256, 258, 300, 384, 512, 514, 768, 1024, 2048]


@settings(max_examples=80, deadline=None)
@given(
    n=st.sampled_from(_SIZES),
    rows=st.integers(1, 4),
    kind=st.sampled_from(["gauss", "heavy", "relu", "few"]),
    sparsity=st.sampled_from([0.0, 0.3, 0.9]),
    spikes=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_tiled_form_equals_the_direct_form(n, rows, kind, sparsity, spikes, seed) -> None:
    hist = _histograms(n, rows, kind, sparsity, spikes, seed)
    direct = ort_entropy_kl(hist, form=KlForm.DIRECT)
    tiled = ort_entropy_kl(hist, form=KlForm.TILED)
    np.testing.assert_array_equal(np.isnan(tiled), np.isnan(direct))
    np.testing.assert_array_equal(np.isinf(tiled), np.isinf(direct))
    finite = np.isfinite(direct)
    np.testing.assert_allclose(tiled[finite], direct[finite], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("seed", range(6))
def test_tiled_form_matches_a_loop_over_the_windows(seed: int) -> None:
    n = [256, 300, 384, 512, 514, 1024][seed]
    hist = _histograms(n, 2, ["gauss", "few", "heavy"][seed % 3], 0.3 * (seed % 2), 2, seed + 1)
    tiled = ort_entropy_kl(hist, form=KlForm.TILED)
    for row, curve in zip(hist, tiled, strict=True):
        slow = _ort_kl_loop(row)
        np.testing.assert_array_equal(np.isfinite(curve), np.isfinite(slow))
        finite = np.isfinite(slow)
        np.testing.assert_allclose(curve[finite], slow[finite], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("channels", "values", "bins"), [(300, 768, 512), (200, 4096, 256)])
def test_tiled_form_chooses_the_same_ranges_per_channel(channels, values, bins) -> None:
    # Per-channel weights as the report sees them: small channels in 512-bin histograms of
    # their values, large ones in the 256-bin histograms of their statistics.
    rng = np.random.default_rng(values)
    w = rng.standard_normal((channels, values)) * rng.uniform(0.01, 0.1, (channels, 1))
    w[::7, :3] *= 40.0  # outliers
    w[5] = np.abs(w[5])  # one-sided
    rows = HistogramRows.from_values(w, bins)
    amax = np.abs(w).max(axis=1)
    assert kl_form(channels, bins) is KlForm.TILED
    direct = entropy_ranges(rows, amax, form=KlForm.DIRECT)
    tiled = entropy_ranges(rows, amax, form=KlForm.TILED)
    np.testing.assert_array_equal(tiled[0], direct[0])
    np.testing.assert_array_equal(tiled[1], direct[1])
    assert (direct[1] < amax).any()  # some windows clip: the search chose, not the default


def test_auto_picks_the_cheaper_form() -> None:
    assert kl_form(1, 256) is KlForm.DIRECT  # one row: the tilings' fixed cost dominates
    assert kl_form(2, 512) is KlForm.TILED
    assert kl_form(1, 2048) is KlForm.DIRECT  # an activation's histogram: unchanged
    assert kl_form(64, 2048) is KlForm.TILED
    assert kl_form(1000, 4096) is KlForm.DIRECT
