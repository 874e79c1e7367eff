"""Per-layer sensitivity on the demo: a sensible ranking, numbers equal to `evaluate`'s, the
cache, cancellation, streaming, and the report's JSON round trip."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

import qviz.core.compute.jobs as jobs_mod
import qviz.core.search.sensitivity as sens_mod
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, load_data, random_data
from qviz.core.demo import DEMO_DIR
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import EvaluationCancelled, Metric, RunMode, evaluate
from qviz.core.files.config_file import load_config, save_config
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.sensitivity import (
    LayerSensitivity,
    SensitivityReport,
    group_by_layer,
    prepare_reference,
    run_to_completion,
    sensitivity,
)
from qviz.core.search.sensitivity_cache import SensitivityCache, report_from_json, report_to_json
from qviz.core.stats.collect import CalibrationStats, collect_stats

LIMIT = 500
Demo = tuple[LoadedModel, Dataset, CalibrationStats]


@pytest.fixture(scope="module")
def demo() -> Demo:
    if not (DEMO_DIR / "model.onnx").is_file():
        pytest.skip("the built-in demo is not there")
    model = load_model(DEMO_DIR / "model.onnx")
    data = load_data(DEMO_DIR / "data.npz", model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=250))
    return model, data, stats


def int4_config() -> QuantConfig:
    """4-bit weights, int8 min/max activations: the configuration the demo's issue is about."""
    base = QuantConfig()
    cfg = base.with_default(
        TensorKind.ACTIVATION, replace(base.activations, spec=MethodSpec(Method.MINMAX))
    )
    return cfg.with_default(
        TensorKind.WEIGHT, replace(base.weights, fmt=NumberFormat.parse("int4"))
    )


class CountingMeasure:
    """Wraps `measure` (every backend runs jobs through it) to count the graphs run."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = jobs_mod.measure

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture(scope="module")
def int4_report(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> SensitivityReport:
    model, data, stats = demo
    cache = SensitivityCache(tmp_path_factory.mktemp("cache"))
    return run_to_completion(
        sensitivity(model, stats, int4_config(), data, limit=LIMIT, cache=cache)
    )


def test_report_names_every_layer_in_depth_order(int4_report: SensitivityReport) -> None:
    r = int4_report
    assert [s.name for s in r.layers] == [
        "features.0", "features.3", "features.6", "features.9", "classifier.0", "classifier.2",
    ]  # fmt: skip
    assert [s.depth for s in r.layers] == sorted(s.depth for s in r.layers)
    first = r.layer("features.0")
    assert first.node_name == "node_Conv_65" and first.op_type == "Conv"
    assert first.module_path == "features.0"
    assert first.tensors == ("input", "features.0.weight")
    for s in r.layers:
        assert s.weight_sqnr_db is not None and s.activation_sqnr_db is not None
        assert s.drop is not None and math.isfinite(s.drop) and math.isfinite(s.recovery)
        assert s.quantized_only.mode is RunMode.NATIVE and s.float_only.mode is RunMode.NATIVE
    assert r.metric is Metric.ACCURACY and r.n_samples == LIMIT and not r.cached
    assert r.n_runs == 1 + 2 * len(r.layers)
    assert r.float_value == pytest.approx(93.2)  # the float model on the first 500 samples
    assert r.quantized_value < r.float_value


def test_ranking_finds_the_sensitive_first_layer(int4_report: SensitivityReport) -> None:
    """The first conv (folded BatchNorm: the widest weight range) is the one 4-bit weights
    hurt: quantizing it alone costs points, keeping it float recovers most of the loss."""
    r = int4_report
    first = r.layer("features.0")
    assert r.ranking()[0].name == "features.0"
    assert first.drop is not None and first.drop >= 2.0
    assert first.recovery >= 2.0
    others = [s for s in r.layers if s.name != "features.0"]
    assert all(first.drop > (s.drop or 0.0) for s in others)
    # The local view does not predict it: features.0's weight SQNR is not the worst.
    assert first.weight_sqnr_db is not None
    assert first.weight_sqnr_db > min(s.weight_sqnr_db or math.inf for s in others)


def test_measurements_equal_evaluate(demo: Demo, int4_report: SensitivityReport) -> None:
    """Each variant is a real Q/DQ graph run natively: `evaluate` of the same tensors on the
    same samples and batches gives the very same numbers (the float pass is shared, not
    approximated; only the summation order of float sums depends on the batching)."""
    model, data, stats = demo
    results = analyze(model, stats, int4_config())
    full = run_to_completion(
        evaluate(model, results, data, native=True, limit=LIMIT, latency=False, batch_size=128)
    )
    assert dict(int4_report.quantized.metrics) == dict(full.quantized_metrics)
    only = group_by_layer(results)["features.0"]
    one = run_to_completion(
        evaluate(model, only, data, native=True, limit=LIMIT, latency=False, batch_size=128)
    )
    assert dict(int4_report.layer("features.0").quantized_only.metrics) == dict(
        one.quantized_metrics
    )
    assert int4_report.float_metrics[Metric.ACCURACY] == full.float_metrics[Metric.ACCURACY]


def test_cache_avoids_rerunning(
    demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, stats = demo
    counter = CountingMeasure()
    monkeypatch.setattr(jobs_mod, "measure", counter)  # every backend runs jobs through it
    cache = SensitivityCache(tmp_path)
    config = int4_config()
    first = run_to_completion(sensitivity(model, stats, config, data, limit=200, cache=cache))
    assert counter.calls == 1 + 2 * len(first.layers) and cache.stores == 1
    assert len(list(tmp_path.glob("*.json"))) == 1

    counter.calls = 0
    again = run_to_completion(sensitivity(model, stats, config, data, limit=200, cache=cache))
    assert counter.calls == 0 and again.cached and cache.hits == 1
    assert report_to_json(again)["layers"] == report_to_json(first)["layers"]

    # Another metric is a re-ranking of the cached measurements, not a run.
    by_sqnr = run_to_completion(
        sensitivity(model, stats, config, data, limit=200, cache=cache, metric=Metric.SQNR)
    )
    assert counter.calls == 0 and by_sqnr.metric is Metric.SQNR
    assert by_sqnr.layer("features.0").drop is None  # the float model's SQNR is infinite

    # A new cache object on the same folder (a re-opened session) hits as well.
    reopened = SensitivityCache(tmp_path)
    run_to_completion(sensitivity(model, stats, config, data, limit=200, cache=reopened))
    assert counter.calls == 0 and reopened.hits == 1

    # Different scales, samples or run mode are different keys.
    int8 = QuantConfig()
    run_to_completion(sensitivity(model, stats, int8, data, limit=200, cache=cache))
    assert counter.calls == 13
    run_to_completion(sensitivity(model, stats, config, data, limit=100, cache=cache))
    assert counter.calls == 26
    run_to_completion(
        sensitivity(
            model, stats, config, data, limit=200, cache=cache, precision=KernelPrecision.PRECISE
        )
    )
    assert counter.calls == 39


def test_saved_config_hits_the_same_cache_entry(demo: Demo, tmp_path: Path) -> None:
    """A config file carries the exact scales analysis produced, so its sensitivity is the
    same measurement (same key) as the stats + config it was saved from."""
    model, data, stats = demo
    config = int4_config()
    cache = SensitivityCache(tmp_path / "cache")
    run_to_completion(sensitivity(model, stats, config, data, limit=100, cache=cache))
    save_config(tmp_path / "c.json", model, config, analyze(model, stats, config))
    saved = load_config(tmp_path / "c.json")
    report = run_to_completion(sensitivity(model, saved, None, data, limit=100, cache=cache))
    assert report.cached


def test_bad_cache_file_is_a_miss(demo: Demo, tmp_path: Path) -> None:
    model, data, stats = demo
    cache = SensitivityCache(tmp_path)
    run_to_completion(sensitivity(model, stats, int4_config(), data, limit=64, cache=cache))
    (path,) = tmp_path.glob("*.json")
    path.write_text("{ not json", encoding="utf-8")
    report = run_to_completion(
        sensitivity(model, stats, int4_config(), data, limit=64, cache=cache)
    )
    assert not report.cached and cache.hits == 0
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1 and doc["file"] == "qviz-sensitivity"
    doc["schema_version"] = 99  # written by a newer qviz: ignored, not misread
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert cache.load(_key_of(path, doc)) is None


def _key_of(path: Path, doc: dict) -> object:
    from qviz.core.search.sensitivity_cache import CacheKey

    k = dict(doc["key"])
    k["precision"] = KernelPrecision(k["precision"])
    return CacheKey(**k)


def test_json_round_trip(int4_report: SensitivityReport) -> None:
    doc = json.loads(json.dumps(report_to_json(int4_report), allow_nan=False))
    back = report_from_json(doc)
    assert back.cached
    assert report_to_json(replace(back, cached=False)) == report_to_json(int4_report)
    assert [s.name for s in back.ranking()] == [s.name for s in int4_report.ranking()]


def test_streaming_reference_gives_the_same_numbers(demo: Demo) -> None:
    """Past the memory budget the float model is re-run beside each variant: same numbers."""
    model, data, stats = demo
    kept = run_to_completion(sensitivity(model, stats, int4_config(), data, limit=130))
    ref = run_to_completion(prepare_reference(model, data, limit=130, memory_budget=0))
    assert ref.streaming and not ref.batches
    streamed = run_to_completion(
        sens_mod.layer_sensitivity(
            model, analyze(model, stats, int4_config()), data, reference=ref, memory_budget=0
        )
    )
    assert report_to_json(streamed)["layers"] == report_to_json(kept)["layers"]


def test_simulation_mode_is_labelled(demo: Demo) -> None:
    model, data, stats = demo
    r = run_to_completion(sensitivity(model, stats, int4_config(), data, limit=64, native=False))
    assert r.quantized.mode is RunMode.SIMULATION
    assert all(s.quantized_only.mode is RunMode.SIMULATION for s in r.layers)
    assert r.quantized.mode_label == "simulation"


def test_cancel_between_batches(demo: Demo) -> None:
    model, data, stats = demo
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 10

    gen = sensitivity(
        model, stats, int4_config(), data, limit=LIMIT, batch_size=50, should_stop=stop
    )
    with pytest.raises(EvaluationCancelled):
        run_to_completion(gen)


def test_progress_counts_up_to_done(demo: Demo) -> None:
    model, data, stats = demo
    gen = sensitivity(model, stats, int4_config(), data, limit=100, batch_size=50)
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration:
            break
    last = [p for p in seen if p.message.startswith("sensitivity")]
    assert last and last[-1].done == last[-1].total
    assert any("quantizing only features.0" in p.message for p in seen)


def test_without_labels_the_metric_is_output_sqnr(demo: Demo) -> None:
    model, _, stats = demo
    data = random_data(model.inputs, 32)
    r = run_to_completion(sensitivity(model, stats, int4_config(), data, limit=32))
    assert r.metric is Metric.SQNR and math.isinf(r.float_value)
    assert any("RANDOM" in n for n in r.notes)
    with pytest.raises(QvizError, match="labels"):
        run_to_completion(
            sensitivity(model, stats, int4_config(), data, limit=32, metric=Metric.ACCURACY)
        )


def test_bad_input(demo: Demo) -> None:
    model, data, stats = demo
    nothing = QuantConfig(
        weights=replace(QuantConfig().weights, quantize=False),
        activations=replace(QuantConfig().activations, quantize=False),
    )
    with pytest.raises(QvizError, match="no layer"):
        run_to_completion(sensitivity(model, stats, nothing, data))
    with pytest.raises(QvizError, match="limit"):
        run_to_completion(sensitivity(model, stats, int4_config(), data, limit=0))
    with pytest.raises(QvizError, match="QuantConfig"):
        run_to_completion(sensitivity(model, stats, None, data))


def test_layer_sensitivity_score_orders_by_drop_and_recovery() -> None:
    from qviz.core.search.sensitivity import Measurement

    m = Measurement({Metric.ACCURACY: 90.0}, RunMode.NATIVE, 1, 1)

    def row(name: str, drop: float | None, rec: float) -> LayerSensitivity:
        return LayerSensitivity(
            name, name, "Conv", 0, None, (), 1, None, None, m, m, drop=drop, recovery=rec
        )

    assert row("a", 1.0, 2.0).score == 3.0
    assert row("b", None, 2.0).score == 2.0
