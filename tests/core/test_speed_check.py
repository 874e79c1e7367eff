"""The export's speed check: what it says when the quantized model is faster, slower, or
slower with every alternative slower too — with controlled timings (the decision), and on a
real model that is certainly slower (int4 convolutions ORT cannot fuse: weights dequantized
on every run)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import load_data, random_data
from qviz.core.demo import DEMO_DIR
from qviz.core.errors import QvizError
from qviz.core.graph.qdq import QdqModel
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.latency import PairTiming
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.speed import LayerSpeed, SpeedProfile
from qviz.core.runtime.speed_check import (
    check_speed,
    is_slower,
    keep_float,
    timing_feeds,
)
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, CalibrationStats]:
    model = load_model(DEMO_DIR / "model.onnx")
    data = load_data(DEMO_DIR / "data.npz", model.inputs)
    return model, run_to_completion(collect_stats(model, data, batch_size=500))


def results_for(demo: tuple[LoadedModel, CalibrationStats], bits: int = 8) -> list[TensorResult]:
    model, stats = demo
    cfg = QuantConfig()
    weights = replace(cfg.weights, fmt=NumberFormat.parse(f"int{bits}"))
    return analyze(model, stats, cfg.with_default(TensorKind.WEIGHT, weights))


def profile(qdq: QdqModel, slow_layers: dict[str, float], whole: float) -> SpeedProfile:
    """A controlled profile: every quantized layer takes 1 ms in float and, in `slow_layers`,
    that many ms quantized (0.5 ms otherwise); the whole model's speed-up is `whole`."""
    quantized = set(qdq.layer_names)
    layers = tuple(
        LayerSpeed(p.layer.name, p.layer.node_name, p.layer.op_type, p.layer.depth,
                   p.layer.name in quantized, 1.0, slow_layers.get(p.layer.name, 0.5),
                   float_kernel="Conv", kernel="QLinearConv")
        for p in qdq.layers
    )
    timing = PairTiming(1.0, 1.0 / whole, whole, whole, whole, 5)
    return SpeedProfile(1, 0, 5, 1.0, 1.0 / whole, layers, timing=timing)


def test_faster_says_so_and_nothing_more(demo: tuple[LoadedModel, CalibrationStats]) -> None:
    model, _ = demo
    results = results_for(demo)
    calls: list[QdqModel] = []

    def measure(q: QdqModel) -> SpeedProfile:
        calls.append(q)
        return profile(q, {}, 1.4)

    check = check_speed(model, results, {}, measure=measure)
    assert len(calls) == 1 and not check.slower and check.warning is None
    assert check.summary.startswith("the exported model runs 1.40× faster than float at batch 1")
    within_noise = check_speed(model, results, {}, measure=lambda q: profile(q, {}, 0.97))
    assert not within_noise.slower and "as fast as float (0.97×)" in within_noise.summary


def test_slower_names_the_layer_and_measures_keeping_it_float(
    demo: tuple[LoadedModel, CalibrationStats],
) -> None:
    model, _ = demo
    results = results_for(demo)
    first = model.layers[0].name
    measured: list[tuple[str, ...]] = []

    def measure(q: QdqModel) -> SpeedProfile:
        measured.append(q.layer_names)
        if first in q.layer_names:
            return profile(q, {first: 3.0}, 0.7)
        return profile(q, {}, 1.3)

    check = check_speed(model, results, {}, measure=measure)
    assert check.slower and check.keep_float == (first,)
    assert first not in measured[1] and len(measured) == 2  # the alternative was built and timed
    assert check.alternative_speedup == pytest.approx(1.3)
    line = check.warning
    assert line is not None and "\n" not in line
    assert line.startswith("SLOWER than float: the exported model runs 0.70×")
    assert f"{first} loses the most: its integer kernel QLinearConv is slower" in line
    assert f"keeping {first} float measured 1.30× faster against float" in line
    doc = check.to_json()
    assert doc["slower"] and doc["keep_float"] == [first] and doc["warning"] == line
    # The configuration it names is the results without that layer's tensors.
    assert {r.layer.name for r in keep_float(results, [first])} == (
        {r.layer.name for r in results} - {first}
    )


def test_slower_everywhere_says_float_is_fastest(
    demo: tuple[LoadedModel, CalibrationStats],
) -> None:
    model, _ = demo
    results = results_for(demo)
    first = model.layers[0].name

    def measure(q: QdqModel) -> SpeedProfile:
        return profile(q, {first: 3.0} if first in q.layer_names else {}, 0.7)

    line = check_speed(model, results, {}, measure=measure).warning
    assert line is not None and "the float model is the fastest" in line
    every = {p: 2.0 for p in (layer.name for layer in model.layers)}
    all_slow = check_speed(model, results, {}, measure=lambda q: profile(q, every, 0.5))
    assert all_slow.alternative is None  # nothing left to quantize: float itself
    assert all_slow.warning is not None and all_slow.warning.endswith("faster here")


def test_a_model_that_cannot_fuse_is_reported_slower(
    demo: tuple[LoadedModel, CalibrationStats],
) -> None:
    """int4 convolutions: no integer kernel on CPU, so ORT dequantizes every weight on every
    run and runs the float convolutions on top — slower than float on any machine."""
    model, _ = demo
    results = results_for(demo, bits=4)
    feeds = timing_feeds(random_data(model.inputs, 8), 8)
    budget = TimingBudget(seconds=0.5, min_runs=5, max_runs=30)
    check = check_speed(model, results, feeds, budget=budget, random_input=True)
    assert check.slower and is_slower(check.speedup)
    assert check.speed.batch_size == 8
    assert any(s.layer == model.layers[0].name for s in check.slow)
    assert all("dequantized on every run" in s.reason for s in check.slow if s.layer.startswith(
        "features"))
    assert check.warning is not None and check.warning.startswith("SLOWER than float")


def test_timing_feeds_take_the_first_batch() -> None:
    model = load_model(DEMO_DIR / "model.onnx")
    feeds = timing_feeds(random_data(model.inputs, 5), 3)
    assert next(iter(feeds.values())).shape[0] == 3
    short = timing_feeds(random_data(model.inputs, 2), 3)
    assert next(iter(short.values())).shape[0] == 2
    with pytest.raises(QvizError):
        timing_feeds(random_data(model.inputs, 2), 0)
