"""The graph view's speed-up measure, read from a real document with a real native evaluation
that timed every layer: layers read their `LayerSpeed`, other nodes their own times."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qviz.core.calibration.analysis import TensorKey, analyze
from qviz.core.data.dataset import load_data
from qviz.core.demo import DEMO_DIR, demo_paths
from qviz.core.document.document import ApplyScope, Document
from qviz.core.document.jobs import EvaluationOutcome
from qviz.core.evaluation.evaluate import evaluate, run_to_completion
from qviz.core.graphview.measures import SPEEDUP_SCALE, NodeMeasure, read_measure
from qviz.core.graphview.model_graph import ModelGraph
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.collect import run_to_completion as collect_all

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)


def test_speedup_measure_reads_the_last_full_evaluation() -> None:
    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    doc = Document()
    doc.set_model(model, paths.model)
    doc.set_stats(collect_all(collect_stats(model, data, batch_size=500)))
    graph = ModelGraph(model).graph
    empty = read_measure(doc, graph, NodeMeasure.SPEEDUP)
    assert not empty.readings and "Evaluate" in empty.note

    assert doc.stats is not None
    results = analyze(model, doc.stats, doc.config)
    ev = run_to_completion(evaluate(model, results, data, native=True, limit=64, batch_size=8,
                                    latency_repeats=2, latency_budget_s=0.0))
    assert ev.speed is not None
    assert doc.accept_evaluation(EvaluationOutcome(
        ev, tuple(results), doc.config, True, doc.revision, 0.0, "demo"))  # fmt: skip
    readings = read_measure(doc, graph, NodeMeasure.SPEEDUP)
    assert not readings.stale and not readings.higher_is_worse
    for layer in model.layers:
        x = ev.speed.layer(layer.name)
        nid = graph.node_of_layer(layer.name)
        assert x is not None and nid is not None
        r = readings.reading(nid)
        assert r is not None and r.value == pytest.approx(x.speedup)
        assert r.colour == SPEEDUP_SCALE.colour(x.speedup)
    others = [n for n in ev.speed.nodes
              if n.float_ms > 0 and n.quantized_ms > 0
              and graph.node(f"n:{n.index}").layer is None]
    for n in others:
        r = readings.reading(f"n:{n.index}")
        assert r is not None and r.value == pytest.approx(n.float_ms / n.quantized_ms)
    # A change of settings greys them: measured for earlier settings.
    key = TensorKey(layer_weight(model), TensorKind.WEIGHT)
    doc.apply(key, replace(doc.config_for(key), fmt=NumberFormat.parse("int4")), ApplyScope.TENSOR)
    stale = read_measure(doc, graph, NodeMeasure.SPEEDUP)
    assert stale.stale and stale.note == "measured for earlier settings"
    assert stale.readings == readings.readings


def layer_weight(model: LoadedModel) -> str:
    weight = model.layers[0].weight
    assert weight is not None
    return weight
