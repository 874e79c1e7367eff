"""Node measures and Q/DQ marks on the demo, read from a real document: statistics collected,
every tensor analysed, a real native evaluation (its fusion report) and a real sensitivity
report; a layer kept float, a layer whose int4 weights ORT cannot fuse."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import pytest

from qviz.core.calibration.analysis import TensorKey, analyze
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import Document
from qviz.core.document.jobs import EvaluationOutcome
from qviz.core.evaluation.evaluate import evaluate
from qviz.core.evaluation.evaluate import run_to_completion as evaluate_to_completion
from qviz.core.graphview.marks import layer_quantized_keys, quant_marks, quantized_weights
from qviz.core.graphview.measures import (
    CLIPPED_SCALE,
    MEASURES,
    NATIVE_SCALE,
    SQNR_SCALE,
    Native,
    NodeMeasure,
    group_readings,
    read_measure,
)
from qviz.core.graphview.model_graph import ModelGraph
from qviz.core.graphview.scales import ColourScale
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.defaults import SAFE_WEIGHT_BITS
from qviz.core.search.sensitivity import SensitivityReport, sensitivity
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION


@dataclass(frozen=True)
class Demo:
    model: LoadedModel
    stats: CalibrationStats
    graph: ModelGraph


@pytest.fixture(scope="module")
def demo() -> Demo:
    paths = demo_paths()
    model = load_model(paths.model)
    stats = run_to_completion(collect_stats(model, load_data(paths.data, model.inputs)))
    return Demo(model, stats, ModelGraph(model))


def make_doc(demo: Demo, analysed: bool = True) -> Document:
    doc = Document()
    doc.set_model(demo.model, demo_paths().model)
    doc.set_stats(demo.stats)
    if analysed:
        for t in doc.tensors:
            doc.analyze(t.key)
    return doc


def evaluate_natively(doc: Document) -> None:
    """What Run ▸ Evaluate hands the document: a native evaluation with its fusion report."""
    assert doc.model is not None and doc.stats is not None
    started = time.perf_counter()
    results = analyze(doc.model, doc.stats, doc.config)
    data = load_data(demo_paths().data, doc.model.inputs)
    ev = evaluate_to_completion(evaluate(doc.model, results, data, native=True, limit=128,
                                         latency=False))
    assert doc.accept_evaluation(EvaluationOutcome(
        ev, tuple(results), doc.config, True, doc.revision, time.perf_counter() - started, "demo"))


def test_local_sqnr_is_the_worst_quantized_tensor_of_each_layer(demo: Demo) -> None:
    doc = make_doc(demo)
    graph = demo.graph.graph
    readings = read_measure(doc, graph, NodeMeasure.SQNR)
    assert demo.model.layers
    for layer in demo.model.layers:
        nid = graph.node_of_layer(layer.name)
        assert nid is not None
        expected = []
        for key in [TensorKey(layer.weight or "", W), *(TensorKey(a, A) for a in
                                                        layer.activations)]:
            if doc.has(key):
                result = doc.result(key)
                assert result is not None
                expected.append(float(result.metrics.sqnr_db))
        r = readings.reading(nid)
        assert r is not None and r.value == min(expected)
        assert r.colour == SQNR_SCALE.colour(min(expected))
        assert len(r.lines) == len(expected)
    # Nodes that are no layer get no reading: they are drawn as float.
    relu = graph.node("n:1")
    assert relu.op_type == "Relu" and readings.reading("n:1") is None
    # A collapsed group shows its worst layer.
    groups = group_readings(readings, demo.graph.tree)
    worst = min(readings.readings[n].value or math.inf
                for n in demo.graph.tree.nodes_in("g:features") if n in readings.readings)
    assert groups["g:features"].value == worst


def test_clipped_is_the_largest_fraction_and_pending_layers_say_so(demo: Demo) -> None:
    doc = make_doc(demo)
    graph = demo.graph.graph
    readings = read_measure(doc, graph, NodeMeasure.CLIPPED)
    nid = graph.node_of_layer("features.3")
    assert nid is not None
    layer = next(layer for layer in demo.model.layers if layer.name == "features.3")
    fractions = []
    for k in layer_quantized_keys(doc, layer, quantized_weights(doc)):
        result = doc.result(k)
        assert result is not None
        fractions.append(float(result.metrics.clipped_fraction))
    r = readings.reading(nid)
    assert r is not None and r.value == max(fractions) > 0
    assert r.colour == CLIPPED_SCALE.colour(max(fractions))
    # Before anything is measured, quantized layers read "not measured yet".
    fresh = read_measure(make_doc(demo, analysed=False), graph, NodeMeasure.CLIPPED)
    pending = fresh.reading(nid)
    assert pending is not None and pending.value is None and pending.colour is None


def test_a_layer_kept_float_has_no_reading_and_no_qdq(demo: Demo) -> None:
    doc = make_doc(demo)
    graph = demo.graph.graph
    keep = next(layer for layer in demo.model.layers if layer.name == "classifier.0")
    assert keep.weight is not None
    nid = graph.node_of_layer("classifier.0")
    assert nid is not None
    # Float weight, its own input still quantized: activation-only quantization.
    key = TensorKey(keep.weight, W)
    config = doc.config.with_override(keep.weight, replace(doc.config_for(key), quantize=False))
    doc.set_config(config, "float weight")
    marks = quant_marks(doc, graph)
    assert nid in marks.quantized and nid not in marks.weight_formats
    r = read_measure(doc, graph, NodeMeasure.SQNR).reading(nid)
    assert r is not None and r.lines == (f"input {keep.activations[0]}: {r.text}",)
    # Both float (what mixed precision's "float" does): the layer is float.
    act = TensorKey(keep.activations[0], A)
    config = config.with_override(act.name, replace(doc.config_for(act), quantize=False))
    doc.set_config(config, "keep classifier.0 float")
    assert read_measure(doc, graph, NodeMeasure.SQNR).reading(nid) is None
    marks = quant_marks(doc, graph)
    assert nid in marks.kept_float and nid not in marks.quantized
    assert nid not in marks.weight_formats
    # Its input is not Q/DQ'd for it (the Q/DQ builder's rule), the next layer's input is.
    into = [e for e in graph.edges if e.dst == nid]
    assert into and not any(marks.edge_is_quantized(e.src, e.dst, e.tensor) for e in into)
    nxt = graph.node_of_layer("classifier.2")
    assert any(marks.edge_is_quantized(e.src, e.dst, e.tensor) for e in graph.edges
               if e.dst == nxt)


def test_qdq_marks_of_the_default_configuration(demo: Demo, u8s8_saturates: bool) -> None:
    """The default weights follow the CPU detection (both answers): int8, or int7 where
    ORT's int8 kernels can saturate."""
    doc = make_doc(demo)
    graph = demo.graph.graph
    marks = quant_marks(doc, graph)
    layer_nodes = {graph.node_of_layer(layer.name) for layer in demo.model.layers}
    assert marks.quantized == layer_nodes and not marks.kept_float
    assert set(marks.weight_formats.values()) == {
        f"int{SAFE_WEIGHT_BITS}" if u8s8_saturates else "int8"
    }
    # Each layer's input edge carries Q/DQ'd values; edges into float ops do not.
    for nid in layer_nodes:
        assert any(src_dst[1] == nid for src_dst in marks.qdq_edges)
    assert all(graph.node(dst).layer is not None for _, dst, _ in marks.qdq_edges)
    assert ("in:input", "n:0", "input") in marks.qdq_edges
    assert not marks.kernels  # nothing evaluated yet


def test_sim_vs_native_from_a_real_fusion_report(demo: Demo, u8s8_saturates: bool) -> None:
    """Under both answers of the CPU detection: the default weights are never at risk of
    saturating (int8 where the kernels are exact, int7 where they are not), so every fused
    layer reads as an integer kernel."""
    doc = make_doc(demo)
    graph = demo.graph.graph
    # int4 weights have no integer kernel on CPU: that layer stays float natively.
    last = next(layer for layer in demo.model.layers if layer.name == "classifier.2")
    assert last.weight is not None
    key = TensorKey(last.weight, W)
    doc.set_config(doc.config.with_override(
        last.weight, replace(doc.config_for(key), fmt=NumberFormat.parse("int4"))), "int4")
    assert read_measure(doc, graph, NodeMeasure.NATIVE).note.startswith("Run ▸ Evaluate")
    evaluate_natively(doc)
    report = doc.measures.fusion
    assert report is not None and not report.saturating
    readings = read_measure(doc, graph, NodeMeasure.NATIVE)
    assert not readings.stale
    marks = quant_marks(doc, graph)
    for layer in demo.model.layers:
        nid = graph.node_of_layer(layer.name)
        assert nid is not None
        r = readings.reading(nid)
        assert r is not None
        if layer.name in report.kernels:
            assert r.text == report.kernels[layer.name] == marks.kernels[nid]
            assert r.value == Native.INTEGER.value
        else:
            assert r.value == Native.FLOAT.value and nid not in marks.kernels
            assert report.unfused[layer.name] in r.lines[0]
    assert readings.reading(graph.node_of_layer("classifier.2") or "") == \
        readings.reading(graph.node_of_layer("classifier.2") or "")
    c2 = readings.reading(graph.node_of_layer("classifier.2") or "")
    assert c2 is not None and c2.colour == NATIVE_SCALE.colour(Native.FLOAT.value)
    # Another change of settings: the report is kept, faded, and says so.
    doc.set_config(doc.config.without_override(last.weight), "back to int8")
    later = read_measure(doc, graph, NodeMeasure.NATIVE)
    assert later.stale and "earlier settings" in later.note and later.readings


def test_sensitivity_measures_from_a_real_report(demo: Demo) -> None:
    doc = make_doc(demo)
    graph = demo.graph.graph
    assert not read_measure(doc, graph, NodeMeasure.DROP).readings
    assert doc.model is not None
    report = run_to_completion(sensitivity(doc.model, demo.stats, doc.config,
                                           load_data(demo_paths().data, doc.model.inputs),
                                           limit=128))
    assert isinstance(report, SensitivityReport) and doc.accept_sensitivity(report)
    for measure, attr in ((NodeMeasure.DROP, "drop"), (NodeMeasure.RECOVERY, "recovery")):
        readings = read_measure(doc, graph, measure)
        assert len(readings.readings) == len(report.layers)
        for row in report.layers:
            nid = graph.node_of_layer(row.name)
            assert nid is not None
            r = readings.reading(nid)
            assert r is not None and r.value == getattr(row, attr)
            assert r.colour == readings.scale.colour(r.value)
        top = max(abs(v.value or 0.0) for v in readings.readings.values())
        assert readings.scale.stops[-1][0] == (top or 1.0)


def test_every_measure_is_registered_and_reads_an_empty_document(demo: Demo) -> None:
    assert set(MEASURES) == set(NodeMeasure)
    empty = Document()
    for measure in NodeMeasure:
        readings = read_measure(empty, demo.graph.graph, measure)
        assert not readings.readings


def test_colour_scales_interpolate_and_refuse_bad_stops() -> None:
    scale = ColourScale("t", ((0.0, "#000000"), (10.0, "#ffffff")), ("0", "10"))
    assert scale.colour(-5) == "#000000" and scale.colour(50) == "#ffffff"
    assert scale.colour(5) == "#808080"
    log = ColourScale("t", ((0.01, "#000000"), (1.0, "#ffffff")), ("a", "b"), log=True)
    assert log.colour(0.1) == "#808080" and log.colour(0.0) == "#000000"
    with pytest.raises(ValueError):
        ColourScale("t", ((1.0, "#000000"), (0.0, "#ffffff")), ("a", "b"))
    with pytest.raises(ValueError):
        NATIVE_SCALE.colour(7.0)
