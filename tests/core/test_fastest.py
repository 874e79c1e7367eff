"""The speed objective on the demo: the search starts from each layer at its fastest measured
precision, confirms its answer with a full evaluation and end-to-end timings, and answers
float itself when nothing quantized is faster. The decisions are checked with controlled
per-layer times and timings (what the machine measures is noise here); one run measures
for real and is checked for structure only."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from qviz.core.calibration.config import QuantConfig
from qviz.core.compute.backend import ComputeBackend
from qviz.core.compute.process_pool import ProcessBackend
from qviz.core.data.dataset import Dataset, load_data
from qviz.core.demo import DEMO_DIR
from qviz.core.evaluation.criteria import Criterion
from qviz.core.graph.qdq import QdqModel
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.runtime.latency import PairTiming
from qviz.core.runtime.sessions import KernelPrecision, Threads
from qviz.core.runtime.speed_check import is_slower
from qviz.core.search.fastest import fastest_precision
from qviz.core.search.mixed import Objective, mixed_precision, parse_precisions
from qviz.core.search.sensitivity import run_to_completion
from qviz.core.search.speed_table import LayerTimes, SpeedTable
from qviz.core.stats.collect import CalibrationStats, collect_stats

Demo = tuple[LoadedModel, Dataset, CalibrationStats]
CRITERION = Criterion.parse("accuracy_drop<=1")
LIMIT = 200
pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)


@pytest.fixture(scope="module")
def demo() -> Demo:
    model = load_model(DEMO_DIR / "model.onnx")
    data = load_data(DEMO_DIR / "data.npz", model.inputs)
    return model, data, run_to_completion(collect_stats(model, data, batch_size=500))


def table_for(model: LoadedModel, slow_first: bool) -> SpeedTable:
    """int4 slow everywhere (dequantized every run), int8 twice as fast as float, except the
    first layer, whose integer kernel loses to float when `slow_first`."""
    layers = []
    for i, layer in enumerate(model.layers):
        int8 = 3.0 if (i == 0 and slow_first) else 0.5
        layers.append(LayerTimes(layer.name, 1.0, {"int4": 5.0, "int8": int8}))
    return SpeedTable(1, 0, tuple(layers), other_ms=0.25)


def timing(speedup: float) -> PairTiming:
    return PairTiming(1.0, 1.0 / speedup, speedup, speedup, speedup, 5)


def search(
    demo: Demo,
    table: SpeedTable,
    speedup: float,
    batches: tuple[int, ...] = (1,),
    compute: ComputeBackend | None = None,
):
    model, data, stats = demo
    timed: list[QdqModel] = []

    def timer(q: QdqModel, feeds: Mapping[str, np.ndarray]) -> PairTiming:
        timed.append(q)
        return timing(speedup)

    result = run_to_completion(fastest_precision(
        model, stats, QuantConfig(), data, CRITERION, parse_precisions("int4,int8,float"),
        limit=LIMIT, confirm_limit=LIMIT, batch_size=100, native=True,
        precision=KernelPrecision.DEFAULT, max_trials=None, cache=None,
        should_stop=lambda: False, speed_batches=batches, threads=Threads(), table=table,
        timer=timer, compute=compute,
    ))  # fmt: skip
    return result, timed


def test_starts_from_each_layer_at_its_fastest_and_confirms_by_timing(demo: Demo) -> None:
    model = demo[0]
    table = table_for(model, slow_first=True)
    result, timed = search(demo, table, 1.6, batches=(1, 4))
    first = model.layers[0].name
    start = next(p for p in result.points if p.label == "each layer at its fastest precision")
    assert start.assignment[first] == "float"
    assert all(start.assignment[x.name] == "int8" for x in model.layers[1:])
    # Every point carries the latency the table predicts for it.
    for p in result.points:
        assert p.latency_ms == pytest.approx(table.estimate(p.assignment))
    assert result.objective is Objective.FASTEST and result.passed
    assert result.chosen.passed and result.evaluation is not None
    assert result.chosen.latency_ms == min(
        p.latency_ms for p in result.points if p.passed and p.latency_ms is not None)
    # Confirmed by a timing at each batch, and not slower than float at any.
    assert [b for b, _ in result.timings] == [1, 4] and len(timed) == 2
    assert all(not is_slower(t.speedup) for _, t in result.timings)
    doc = result.to_json()
    assert doc["objective"] == "fastest" and doc["speed"]["layers"][0]["name"] == first
    assert [t["batch_size"] for t in doc["timings"]] == [1, 4]
    front = result.pareto_front()  # against predicted latency
    assert front and all(p.latency_ms is not None for p in front)


def test_float_itself_when_every_candidate_is_slower(demo: Demo) -> None:
    result, timed = search(demo, table_for(demo[0], slow_first=False), 0.6)
    assert timed  # candidates were timed, and all ran slower than float
    assert result.passed and result.evaluation is None and result.timings == ()
    assert set(result.chosen.assignment.values()) == {"float"}
    assert not result.results
    assert any("fastest is the float model itself" in n for n in result.notes)


def test_a_real_search_measures_every_layer_at_every_precision(demo: Demo) -> None:
    model, data, stats = demo
    result = run_to_completion(mixed_precision(
        model, stats, QuantConfig(), data, CRITERION, "int8,float", limit=LIMIT,
        confirm_limit=LIMIT, batch_size=100, objective=Objective.FASTEST, speed_batches=(2,),
        threads=Threads(intra_op=1),
    ))  # fmt: skip
    table = result.speed_table
    assert table is not None and table.batch_size == 2 and table.threads == 1
    assert [x.name for x in table.layers] == [layer.name for layer in model.layers]
    for x in table.layers:
        assert x.float_ms > 0 and set(x.level_ms) == {"int8"} and x.kernels["int8"]
        assert math.isfinite(x.ms("float"))
    assert result.passed
    if result.results:  # a quantized answer was timed and is not slower than float
        assert [b for b, _ in result.timings] == [2]
        assert not is_slower(result.timings[0][1].speedup)


def test_worker_processes_measure_what_a_local_run_measures(demo: Demo) -> None:
    """Accuracy runs go to the compute backend (timings stay here): the same points, the
    same answer, the same confirming evaluation as one run at a time here."""

    def measured(compute: ComputeBackend | None) -> tuple[Any, ...]:
        result, _ = search(demo, table_for(demo[0], slow_first=True), 1.6, compute=compute)
        points = [(p.label, p.assignment, p.value, p.size_bytes) for p in result.points]
        assert result.evaluation is not None
        evaluation = result.evaluation.to_json()
        evaluation.pop("elapsed_s", None)
        return points, result.chosen.index, evaluation

    local = measured(None)
    assert len(local[0]) >= 2
    assert measured(ProcessBackend(2)) == local
