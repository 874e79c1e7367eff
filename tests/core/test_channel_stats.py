"""Per-channel activation statistics and Gram matrices: exact against numpy, bounded memory,
the rebuilt histogram of a rescaled tensor, the stats file's schema 2 and its predecessor."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import histogram_metrics
from qviz.core.data.dataset import random_data
from qviz.core.errors import QvizError
from qviz.core.model.loading import from_proto, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.sessions import with_outputs
from qviz.core.stats.channel_stats import ChannelMomentsAccumulator, rescaled_histogram
from qviz.core.stats.collect import collect_stats, run_to_completion
from qviz.core.stats.gram import GramCollector, gram_specs
from qviz.core.stats.stats_file import load_stats, save_stats
from qviz.core.stats.tensor_stats import TensorStatsAccumulator, compute_stats

DATA = Path(__file__).resolve().parents[1] / "data"


def _batches(rng: np.random.Generator, axis: int) -> list[np.ndarray]:
    """Batches whose range grows (later batches are louder) with channels on `axis`."""
    out = []
    for k in range(4):
        shape = [5, 6, 7]
        gains = np.array([0.5, 1, 3, 10, 0.01, 2])[:, None] if axis == 1 else 1.0
        x = rng.standard_normal(shape) * (1 + 3 * k) * gains + 0.3
        out.append(x.astype(np.float32))
    return out


@pytest.mark.parametrize("axis", [1, 2])
def test_moments_match_numpy_over_a_growing_range(axis: int) -> None:
    rng = np.random.default_rng(0)
    batches = _batches(rng, axis)
    acc = TensorStatsAccumulator("x", channel_axis=axis, channel_bins=32)
    for b in batches:
        acc.update(b)
    stats = acc.finish()
    m = stats.moments
    assert m is not None and m.hist_counts is not None
    rows = np.concatenate([np.moveaxis(b, axis, -1).reshape(-1, b.shape[axis]) for b in batches])
    rows64 = rows.astype(np.float64)
    np.testing.assert_allclose(m.count, rows.shape[0])
    np.testing.assert_allclose(m.mean, rows64.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.mean_sq, (rows64**2).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(m.hist_counts.sum(axis=1), rows.shape[0])
    # Every channel's histogram covers its exact range.
    assert (m.hist_lo <= rows.min(axis=0)).all() and (m.hist_hi >= rows.max(axis=0)).all()
    # Each value is in the bin its edges say (one-bin slack for float32 rounding at edges).
    for c in range(rows.shape[1]):
        ref, _ = np.histogram(rows[:, c], bins=32, range=(m.hist_lo[c], m.hist_hi[c]))
        assert np.abs(np.cumsum(ref) - np.cumsum(m.hist_counts[c])).max() <= 2


def test_nonfinite_and_extreme_values_are_left_out() -> None:
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, -3.4e38], [5.0, np.inf]], np.float32)
    stats = compute_stats(x, channel_axis=1, channel_bins=8)
    m = stats.moments
    assert m is not None
    np.testing.assert_array_equal(m.count, [3, 2])
    np.testing.assert_allclose(m.mean, [3.0, 3.0])
    np.testing.assert_allclose(m.mean_sq, [35 / 3, 10.0])
    assert m.hist_counts is not None and m.hist_counts.sum() == 5


def test_memory_does_not_grow_with_batches() -> None:
    rng = np.random.default_rng(1)
    acc = ChannelMomentsAccumulator(64)
    acc.update(rng.standard_normal((10, 16)).astype(np.float32), 1, clean=True)
    before = acc.nbytes
    for k in range(50):
        acc.update((rng.standard_normal((10, 16)) * (k + 1)).astype(np.float32), 1, clean=True)
    assert acc.nbytes == before == 16 * (64 + 5) * 8


def test_rescaled_histogram_is_the_histogram_of_the_rescaled_tensor() -> None:
    rng = np.random.default_rng(2)
    gains = np.array([1.0, 1.0, 30.0, 1.0, 100.0, 1.0, 1.0, 10.0])
    x = (rng.standard_normal((4000, 8)) * gains).astype(np.float32)
    stats = compute_stats(x, channel_axis=1, channel_bins=64)
    assert stats.moments is not None
    s = np.sqrt(gains)
    rebuilt = rescaled_histogram(stats.moments, s, 2048)
    assert rebuilt.total == pytest.approx(x.size)
    ref = compute_stats(x / s.astype(np.float32))
    fmt = NumberFormat(signed=False, symmetric=False)
    for method in (Method.MINMAX, Method.MSE):
        lo, hi = choose_range(ref, MethodSpec(method), fmt)
        exact = histogram_metrics(ref, lo, hi, fmt).sqnr_db
        approx_stats = compute_stats(x / s.astype(np.float32))
        object.__setattr__(approx_stats, "histogram", rebuilt)
        lo2, hi2 = choose_range(approx_stats, MethodSpec(method), fmt)
        approx = histogram_metrics(approx_stats, lo2, hi2, fmt).sqnr_db
        assert approx == pytest.approx(exact, abs=0.5)
    scaled = stats.moments.scaled(s)
    np.testing.assert_allclose(scaled.mean_sq, (x.astype(np.float64) ** 2).mean(0) / s**2)


def _two_layer_model() -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv(5, 3x3, stride 2, pad 1) -> Relu -> GAP -> Flatten -> MatMul [5,3]."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((5, 4, 3, 3)).astype(np.float32), "cw"),
        numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "mw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "mw"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gram_matrices_give_the_layers_output_power() -> None:
    """tr(W H Wᵀ) is the summed squared output of the layer over the data: checked against
    ONNX Runtime's own Conv (im2col Gram) and MatMul (plain Gram)."""
    proto = _two_layer_model()
    model = from_proto(proto, sha256="g")
    data = random_data(model.inputs, 12)
    stats = run_to_completion(collect_stats(model, data, batch_size=5, gram=True))
    assert set(stats.grams) == {"cw", "mw"}
    feeds = {"x": np.concatenate([b["x"] for b in data.batches(12)])}
    outs = ort.InferenceSession(with_outputs(proto, ["c", "f"]).SerializeToString()).run(
        ["c", "f"], feeds)
    c, f = (o.astype(np.float64) for o in outs)
    w = model.weight("cw").reshape(5, -1).astype(np.float64)
    h = stats.grams["cw"].matrix
    assert np.trace(w @ h @ w.T) == pytest.approx((c * c).sum(), rel=1e-5)
    assert stats.grams["cw"].rows == 12 * 3 * 3 and stats.grams["cw"].kernel == 9
    np.testing.assert_allclose(stats.grams["mw"].matrix, f.T @ f, rtol=1e-5, atol=1e-6)


def test_gram_budget_is_one_clear_line() -> None:
    model = from_proto(_two_layer_model(), sha256="g")
    specs, _ = gram_specs(model.model, model.layers)
    with pytest.raises(QvizError) as info:
        GramCollector(specs, budget=1000)
    text = str(info.value)
    assert "\n" not in text and "budget" in text and "--gram-budget" in text


def test_stats_file_keeps_moments_and_grams(tmp_path: Path) -> None:
    model = from_proto(_two_layer_model(), sha256="g")
    stats = run_to_completion(collect_stats(model, random_data(model.inputs, 6), gram=True))
    save_stats(stats, tmp_path / "s.qvstats")
    back = load_stats(tmp_path / "s.qvstats")
    for name, t in stats.tensors.items():
        assert t.moments is not None
        got = back.tensors[name].moments
        assert got is not None and got.hist_counts is not None
        np.testing.assert_array_equal(got.mean_sq, t.moments.mean_sq)
        np.testing.assert_array_equal(got.hist_counts, t.moments.hist_counts)
    for name, g in stats.grams.items():
        np.testing.assert_array_equal(back.grams[name].matrix, g.matrix)
        assert back.grams[name].rows == g.rows and back.grams[name].kernel == g.kernel


def test_per_channel_histograms_are_written_in_the_narrowest_type_that_holds_them(
    tmp_path: Path,
) -> None:
    """Whole counts go to the file as 8/16/32-bit integers and come back as the same float64
    counts; fractional ones (a merge never makes them, but a file must not round them) stay
    float64."""
    from qviz.core.stats.channel_stats import ChannelMoments, compact_counts

    assert compact_counts(np.array([[0.0, 3.0], [255.0, 1.0]])).dtype == np.uint8
    assert compact_counts(np.array([[0.0, 256.0]])).dtype == np.uint16
    assert compact_counts(np.array([[0.0, 2.0**16]])).dtype == np.uint32
    assert compact_counts(np.array([[0.0, 2.0**32]])).dtype == np.float64
    assert compact_counts(np.array([[0.5, 2.0]])).dtype == np.float64
    assert compact_counts(np.array([[-1.0, 2.0]])).dtype == np.float64
    model = from_proto(_two_layer_model(), sha256="g")
    stats = run_to_completion(collect_stats(model, random_data(model.inputs, 300)))
    name, t = next((n, t) for n, t in stats.tensors.items() if t.moments is not None)
    assert t.moments is not None and t.moments.hist_counts is not None
    assert t.moments.hist_counts.max() >= 256  # 300 samples: some bins need 16 bits
    fractional = replace(t, moments=ChannelMoments(
        t.moments.count, t.moments.mean, t.moments.mean_sq, t.moments.hist_counts * 0.5,
        t.moments.hist_lo, t.moments.hist_hi))
    for tensor, dtype in ((t, "<u2"), (fractional, "<f8")):
        path = tmp_path / f"{dtype}.qvstats"
        save_stats(replace(stats, tensors={name: tensor}), path)
        with zipfile.ZipFile(path) as zf:
            member = next(m for m in zf.namelist() if m.endswith("channel_hist.npy"))
            header = zf.read(member)[:128].decode("latin1")
            kinds = {i.filename.rsplit("/", 1)[-1]: i.compress_type for i in zf.infolist()}
        assert f"'descr': '{dtype}'" in header
        assert kinds["channel_hist.npy"] == zipfile.ZIP_DEFLATED
        assert kinds["channel_mean.npy"] == zipfile.ZIP_STORED  # floats deflate poorly
        got = load_stats(path).tensors[name].moments
        assert got is not None and got.hist_counts is not None
        assert tensor.moments is not None and got.hist_counts.dtype == np.float64
        np.testing.assert_array_equal(got.hist_counts, tensor.moments.hist_counts)


def test_schema_2_fields_are_optional(tmp_path: Path) -> None:
    """A schema-2 file without moments or Gram matrices (not collected, or written by a
    collector of schema 2 that does not know them) opens with none, like a version-1 file."""
    model = from_proto(_two_layer_model(), sha256="g")
    stats = run_to_completion(collect_stats(model, random_data(model.inputs, 6),
                                            channel_bins=None))
    assert {t.moments for t in stats.tensors.values()} == {None}
    save_stats(stats, tmp_path / "s.qvstats")
    with zipfile.ZipFile(tmp_path / "s.qvstats") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["meta.json"])
    assert meta["schema_version"] == 2 and not any("channel_mean" in n for n in members)
    del meta["grams"]
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "other.qvstats", "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    back = load_stats(tmp_path / "other.qvstats")
    assert back.grams == {} and set(back.tensors) == set(stats.tensors)
    assert {t.moments for t in back.tensors.values()} == {None}


def test_version_1_stats_file_still_opens(tmp_path: Path) -> None:
    """The golden file written by qviz before per-channel statistics (schema 1)."""
    shutil.copy(DATA / "stats_v1_block16.qvstats", tmp_path / "old.qvstats")
    stats = load_stats(tmp_path / "old.qvstats")
    assert stats.grams == {}
    assert {t.moments for t in stats.tensors.values()} == {None}
    assert load_model(DATA / "block16.onnx").sha256 == stats.model_sha256


def test_merged_shards_hold_the_moments_and_grams_of_one_collect() -> None:
    """Moments and Gram matrices of two halves merged are those of one collect over all the
    data (exactly); each channel's histogram keeps its count and stays within its range."""
    from qviz.core.data.shard import Shard, take_shard
    from qviz.core.stats.merge import MergeInput, merge_stats

    model = from_proto(_two_layer_model(), sha256="g")
    data = random_data(model.inputs, 12)
    whole = run_to_completion(collect_stats(model, data, batch_size=4, gram=True))
    halves = [run_to_completion(collect_stats(model, take_shard(data, Shard(k, 2)),
                                              batch_size=4, gram=True)) for k in (1, 2)]
    merged = merge_stats([MergeInput(f"{k}.qvstats", 2, s) for k, s in enumerate(halves)])
    for name, t in whole.tensors.items():
        m, w = merged.tensors[name].moments, t.moments
        assert m is not None and w is not None and m.hist_counts is not None
        np.testing.assert_array_equal(m.count, w.count)
        np.testing.assert_allclose(m.mean, w.mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(m.mean_sq, w.mean_sq, rtol=1e-12)
        np.testing.assert_allclose(m.hist_counts.sum(axis=1), w.count, rtol=1e-9)
        assert m.hist_lo is not None and m.hist_hi is not None
        assert (m.hist_lo <= t.channel_min + 1e-6).all() if t.channel_min is not None else True
    assert set(merged.grams) == set(whole.grams) and whole.grams
    for name, g in whole.grams.items():
        np.testing.assert_allclose(merged.grams[name].matrix, g.matrix, rtol=1e-5,
                                   atol=1e-6 * np.abs(g.matrix).max())  # float32 rows
        assert merged.grams[name].rows == g.rows
    without = replace(halves[1], grams={})
    assert merge_stats([MergeInput("a", 2, halves[0]), MergeInput("b", 2, without)]).grams == {}
