"""Weight statistics: computed once per weight, stored in the stats file, and enough to
analyse any method, format, per-tensor or per-channel granularity without the values.

The reference is the exact analysis (`analyze_weight`, every value quantized), and for the
error integrals a dense numerical integration of the real quantizer over each bin.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qviz.core.calibration import weight_cache
from qviz.core.calibration.analysis import QuantTensor, analyze_tensor
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.grid_error import row_errors, row_sse
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.weights import analyze_weight
from qviz.core.calibration.weights_from_stats import analyze_weight_stats, handles
from qviz.core.model.loading import TensorKind, from_proto
from qviz.core.quant.formats import NumberFormat, PerAxis, PerGroup, PerTensor
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats import weight_collect
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.stats_file import load_stats, save_stats
from qviz.core.stats.weight_stats import WeightStats, compute_weight_stats
from tests.core import model_factory as mf

DATA = Path(__file__).resolve().parents[1] / "data"
FORMATS = [
    NumberFormat(),
    NumberFormat(bits=4),
    NumberFormat(signed=False, symmetric=False),
    NumberFormat.parse("int4", symmetric=False),
    NumberFormat.parse("fp8_e4m3fn"),
    NumberFormat.parse("fp8_e5m2"),
    NumberFormat.parse("nf4"),
]


def weight(rows: int = 384, cols: int = 256, seed: int = 1) -> np.ndarray:
    """A [K, N] MatMul weight (channels along axis 1) with a loud channel and a loud row."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    w[:, 5] *= 30.0
    w[17, :] *= 5.0
    return w


def test_exact_parts_are_exact() -> None:
    w = weight()
    ws = compute_weight_stats(w, "w", 1)
    assert ws is not None
    np.testing.assert_array_equal(ws.channel_min, w.min(axis=0))
    np.testing.assert_array_equal(ws.channel_max, w.max(axis=0))
    np.testing.assert_allclose(ws.channel_sumsq, (w.astype(np.float64) ** 2).sum(axis=0),
                               rtol=1e-6)
    assert ws.rows.counts.shape == (256, 256)
    assert (ws.rows.counts.sum(axis=1) == 384).all()
    assert ws.tensor.histogram.total == w.size
    assert (ws.tensor.min, ws.tensor.max) == (float(w.min()), float(w.max()))
    # The channel histograms are those of the values (a value on a bin edge may fall
    # either side in float32).
    ref = HistogramRows.from_values(w.T.astype(np.float64), 256)
    assert np.abs(ws.rows.counts - ref.counts).sum() <= 0.002 * w.size


def test_chunks_and_layouts_give_the_same_statistics(monkeypatch) -> None:
    from qviz.core.stats import weight_stats as module

    conv = np.random.default_rng(3).standard_normal((8, 3, 5, 5)).astype(np.float32)
    whole = compute_weight_stats(conv, "c", 0)
    monkeypatch.setattr(module, "_CHUNK", 7)  # many chunks, along the channel axis
    chunked = compute_weight_stats(conv, "c", 0)
    assert whole is not None and chunked is not None
    np.testing.assert_array_equal(whole.rows.counts, chunked.rows.counts)
    np.testing.assert_allclose(whole.channel_sumsq, chunked.channel_sumsq)
    mm = weight()
    a = compute_weight_stats(mm, "w", 1)
    b = compute_weight_stats(np.ascontiguousarray(mm.T), "w", 0)  # chunks along P, along C
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.rows.counts, b.rows.counts)


def test_non_finite_weights_are_left_to_the_exact_analysis() -> None:
    w = weight()
    w[3, 3] = np.nan
    assert compute_weight_stats(w, "w", 1) is None
    w[3, 3] = 1e31
    assert compute_weight_stats(w, "w", 1) is None


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec + ("" if f.symmetric else "a"))
def test_bin_error_integrals_match_dense_sampling(fmt: NumberFormat) -> None:
    """The closed-form integrals equal the real quantizer's mean squared error over each
    bin, sampled densely (the uniform-in-bin model both describe)."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 5, size=(3, 16)).astype(np.float64)
    lo = np.array([-1.0, -0.2, 0.0])
    hi = np.array([1.3, 2.0, 0.7])
    rows = HistogramRows(counts, lo, hi)
    qp = compute_qparams(lo * 0.8, hi * 0.8, fmt, axis=0)  # clips the ends
    zp = qp.zero_point.astype(np.float64) if fmt.kind.value == "int" else np.zeros(3)
    got = row_errors(rows, qp.scale, zp, fmt, lo, hi)
    per_bin = 4000
    t = (np.arange(per_bin) + 0.5) / per_bin
    width = (hi - lo) / 16
    x = lo[:, None, None] + (np.arange(16)[None, :, None] + t[None, None, :]) * width[:, None, None]
    xq = fake_quantize(x.astype(np.float32), qp, fmt).astype(np.float64)
    x32 = x.astype(np.float32).astype(np.float64)
    sse = ((xq - x32) ** 2).mean(axis=2) @ np.ones(16)  # per bin mean, before counts
    sse = (((xq - x32) ** 2).mean(axis=2) * counts).sum(axis=1)
    cross = ((x32 * (xq - x32)).mean(axis=2) * counts).sum(axis=1)
    np.testing.assert_allclose(got.sse, sse, rtol=2e-3)
    np.testing.assert_allclose(got.sum_x_err, cross, rtol=2e-3, atol=1e-9)
    np.testing.assert_allclose(row_sse(rows, qp.scale, zp, fmt), got.sse, rtol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec + ("" if f.symmetric else "a"))
@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis()], ids=["tensor", "channel"])
@pytest.mark.parametrize("method", [Method.MINMAX, Method.PERCENTILE, Method.MSE])
def test_statistics_answer_as_the_values_do(fmt, granularity, method) -> None:
    w = weight()
    ws = compute_weight_stats(w, "w", 1)
    assert ws is not None
    spec = MethodSpec.of(method, percentile=99.9)
    got = analyze_weight_stats(ws, spec, granularity, fmt)
    exact = analyze_weight(w, 1, 0, spec, granularity, fmt)
    if method is Method.MINMAX:  # the same ranges: exact min/max
        np.testing.assert_array_equal(got.qparams.scale, exact.qparams.scale)
    elif method is Method.PERCENTILE:  # a histogram percentile is close to the exact one
        np.testing.assert_allclose(got.qparams.scale, exact.qparams.scale, rtol=0.06)
    m, e = got.metrics, exact.metrics
    # MSE: near the optimum the error hardly changes with the clip, so the two searches may
    # pick clips a few percent apart in some channels; their errors agree.
    assert m.sqnr_db == pytest.approx(e.sqnr_db, abs=0.5)
    assert m.cosine == pytest.approx(e.cosine, abs=2e-3)
    assert m.clipped_fraction == pytest.approx(e.clipped_fraction, abs=1e-3)
    if method is not Method.MSE:
        assert m.max_abs_error == pytest.approx(e.max_abs_error, rel=0.5)
    assert got.channel_metrics is not None and exact.channel_metrics is not None
    np.testing.assert_allclose(got.channel_metrics.sqnr_db, exact.channel_metrics.sqnr_db,
                               atol=1.0)


def test_entropy_ranges_are_searched_once() -> None:
    ws = compute_weight_stats(weight(), "w", 1)
    assert ws is not None
    spec = MethodSpec(Method.ENTROPY)
    a = analyze_weight_stats(ws, spec, PerAxis(), NumberFormat())
    assert ("entropy",) in ws.memo
    b = analyze_weight_stats(ws, spec, PerAxis(), NumberFormat.parse("fp8_e4m3fn"))
    # The same clip range per channel (entropy ignores the format), other scales.
    np.testing.assert_allclose(b.metrics.lo * 448 / b.metrics.hi, -448, rtol=1e-6)
    assert a.metrics.sqnr_db != b.metrics.sqnr_db


def test_per_group_needs_the_values() -> None:
    ws = compute_weight_stats(weight(), "w", 1)
    assert ws is not None
    assert not handles(ws, PerGroup(32))
    assert handles(ws, PerTensor()) and handles(ws, PerAxis()) and handles(ws, PerAxis(1))
    assert not handles(ws, PerAxis(0))


def test_round_trip_through_arrays() -> None:
    ws = compute_weight_stats(weight(), "w", 1)
    assert ws is not None
    meta, arrays = ws.to_arrays()
    assert ws.rows.counts.max() < 256 and arrays["row_counts"].dtype == np.uint8
    back = WeightStats.from_arrays(meta, arrays)
    np.testing.assert_array_equal(back.rows.counts, ws.rows.counts)
    spec = MethodSpec(Method.PERCENTILE, 99.0)
    a = analyze_weight_stats(ws, spec, PerAxis(), NumberFormat())
    b = analyze_weight_stats(back, spec, PerAxis(), NumberFormat())
    assert a.metrics.sqnr_db == b.metrics.sqnr_db


@pytest.mark.parametrize(("rows", "dtype"), [(300, np.uint16), (70_000, np.uint32)])
def test_counts_stored_in_the_narrowest_type_that_holds_them(rows: int, dtype: type) -> None:
    w = weight(rows=rows, cols=8)
    w[:, 1] = 0.5  # a constant channel: every value in one bin
    ws = compute_weight_stats(w, "w", 1)
    assert ws is not None
    meta, arrays = ws.to_arrays()
    assert arrays["row_counts"].dtype == dtype
    np.testing.assert_array_equal(WeightStats.from_arrays(meta, arrays).rows.counts,
                                  ws.rows.counts)


def _model_and_stats(monkeypatch):
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 100)  # conv1, conv2; not fc
    model = from_proto(mf.make_conv_net(), source="net.onnx", sha256="1" * 64)
    stats = CalibrationStats("net.onnx", "1" * 64, "nothing", False, 1)
    return model, stats


def test_collect_and_stats_file_keep_large_weights(monkeypatch, tmp_path: Path) -> None:
    from qviz.core.progress import run_to_completion

    model, stats = _model_and_stats(monkeypatch)
    big = [layer.weight for layer in weight_collect.large_weights(model)]
    assert big and len(big) < len([layer for layer in model.layers if layer.weight])
    weights = run_to_completion(weight_collect.collect_weight_stats(model))
    assert sorted(weights) == sorted(big)
    path = tmp_path / "s.qvstats"
    save_stats(dataclasses.replace(stats, weights=weights), path)
    loaded = load_stats(path)
    assert sorted(loaded.weights) == sorted(big)
    for name in big:
        np.testing.assert_array_equal(loaded.weights[name].rows.counts, weights[name].rows.counts)
    # One-byte per-channel counts are stored as they are (deflate is slow on them), and so
    # are per-channel float values; the other counts are deflated.
    with zipfile.ZipFile(path) as zf:
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
    stored = {k for k, v in kinds.items() if v == zipfile.ZIP_STORED}
    assert {k for k in stored if k.endswith("row_counts.npy")} == {
        f"weights/{i}/row_counts.npy" for i, name in enumerate(weights)
        if weights[name].rows.counts.max() < 256
    }
    assert any(k.endswith("row_counts.npy") for k in stored)
    for i in range(len(weights)):
        assert f"weights/{i}/row_lo.npy" in stored and f"weights/{i}/row_hi.npy" in stored
        assert kinds[f"weights/{i}/tensor_counts.npy"] == zipfile.ZIP_DEFLATED
    name = big[0]
    # Analysis takes them from the file: the model's weights are not read again.
    layer = next(layer for layer in model.layers if layer.weight == name)
    monkeypatch.setattr(type(model), "weight", lambda *a: pytest.fail("weight was read"))
    cfg = TensorConfig(spec=MethodSpec(Method.MINMAX), granularity=PerAxis())
    r = analyze_tensor(model, loaded, QuantTensor(name, TensorKind.WEIGHT, layer), cfg)
    assert np.isfinite(r.metrics.sqnr_db)


def test_schema_1_stats_files_still_open() -> None:
    stats = load_stats(DATA / "stats_v1_weights.qvstats")
    assert len(stats.tensors) == 3
    assert len(stats.weights) == 0


def test_analysis_computes_missing_statistics_once(monkeypatch) -> None:
    model, stats = _model_and_stats(monkeypatch)
    layer = weight_collect.large_weights(model)[0]
    assert layer.weight is not None
    tensor = QuantTensor(layer.weight, TensorKind.WEIGHT, layer)
    calls = []
    real = weight_cache.compute_weight_stats
    monkeypatch.setattr(weight_cache, "compute_weight_stats",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    for method in (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY):
        cfg = TensorConfig(spec=MethodSpec.of(method), granularity=PerAxis())
        analyze_tensor(model, stats, tensor, cfg)
    assert calls == [layer.weight]
    group = TensorConfig(spec=MethodSpec(Method.MINMAX), granularity=PerGroup(2))
    exact = analyze_weight(model.weight(layer.weight), layer.channel_axis,
                           layer.reduction_axis, group.spec, group.granularity, group.fmt)
    r = analyze_tensor(model, stats, tensor, group)  # per group: from the values
    assert r.metrics.sqnr_db == exact.metrics.sqnr_db


@pytest.mark.parametrize("fmt", [NumberFormat(bits=4), NumberFormat.parse("uint4", False),
                                 NumberFormat(), NumberFormat.parse("mxfp4")],
                         ids=["int4", "uint4a", "int8", "mxfp4"])
@pytest.mark.parametrize("method", [Method.MINMAX, Method.PERCENTILE])
def test_per_group_slices_give_the_whole_weight_answer(fmt, method, monkeypatch) -> None:
    from qviz.core.calibration import weight_groups

    monkeypatch.setattr(weight_groups, "SLICE_VALUES", 384 * 40)  # 7 slices of channels
    w = weight()
    spec = MethodSpec.of(method, percentile=99.0)
    group = PerGroup(fmt.block_size or 32)
    got = weight_groups.analyze_weight_groups(w, 1, 0, spec, group, fmt)
    exact = analyze_weight(w, 1, 0, spec, group, fmt)
    np.testing.assert_array_equal(got.qparams.scale, exact.qparams.scale)
    np.testing.assert_array_equal(got.qparams.zero_point, exact.qparams.zero_point)
    m, e = got.metrics, exact.metrics
    for field in ("mse", "sqnr_db", "cosine", "clipped_fraction", "max_abs_error"):
        assert getattr(m, field) == pytest.approx(getattr(e, field), rel=1e-9, abs=1e-12)
    np.testing.assert_array_equal(m.lo, e.lo)
    assert got.channel_metrics is not None and exact.channel_metrics is not None
    np.testing.assert_allclose(got.channel_metrics.sqnr_db, exact.channel_metrics.sqnr_db,
                               rtol=1e-9)
    np.testing.assert_array_equal(got.channel_metrics.hi, exact.channel_metrics.hi)


def _rewrite_meta(src: Path, dst: Path, edit) -> None:
    """Copy a stats file with its meta.json changed by ``edit`` (the arrays as they were)."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "meta.json":
                document = json.loads(data)
                edit(document)
                data = json.dumps(document).encode()
            zout.writestr(info, data)


def test_weights_are_optional_in_schema_2(monkeypatch, tmp_path: Path) -> None:
    model, stats = _model_and_stats(monkeypatch)
    from qviz.core.progress import run_to_completion

    weights = run_to_completion(weight_collect.collect_weight_stats(model))
    src = tmp_path / "full.qvstats"
    save_stats(dataclasses.replace(stats, weights=weights), src)
    bare = tmp_path / "bare.qvstats"
    _rewrite_meta(src, bare, lambda d: d.pop("weights"))
    assert len(load_stats(bare).weights) == 0  # absent = not collected


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.__setitem__("weights", {}), "'weights' must be a list"),
    (lambda d: d["weights"][0].pop("meta"), "lacks its 'meta' object"),
    (lambda d: d["weights"].append(d["weights"][0]), "listed twice"),
    (lambda d: d["weights"][0]["meta"].__setitem__("tensor_hi", -1e30), "lo < hi"),
    (lambda d: d["weights"][0]["meta"].__setitem__("shape", [3]), "do not fit|must be"),
    (lambda d: d["weights"][0]["arrays"].__setitem__("row_lo", "weights/0/row_counts.npy"),
     "must be"),
])
def test_damaged_weight_statistics_are_one_line(monkeypatch, tmp_path: Path, damage,
                                                message: str) -> None:
    from qviz.core.errors import QvizError
    from qviz.core.progress import run_to_completion

    model, stats = _model_and_stats(monkeypatch)
    weights = run_to_completion(weight_collect.collect_weight_stats(model))
    src = tmp_path / "full.qvstats"
    save_stats(dataclasses.replace(stats, weights=weights), src)
    bad = tmp_path / "bad.qvstats"
    _rewrite_meta(src, bad, damage)
    with pytest.raises(QvizError, match=message) as info:
        loaded = load_stats(bad)
        for name in loaded.weights:
            loaded.weights[name]
    assert "\n" not in str(info.value)
