"""Residual joins: an Add joining two branches of a CNN is a quantizable layer without a
weight, so ONNX Runtime runs it as QLinearAdd and the convolutions around it fuse (their
outputs quantized). A transformer's residual and rotary Adds are not such layers."""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import random_data
from qviz.core.graph import placement, qdq_builder
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.joins import PASS_THROUGH_OPS
from qviz.core.model.loading import LoadedModel, from_proto
from qviz.core.runtime.fusion import fusion_report, optimized_graph
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, build_session
from qviz.core.stats.collect import collect_stats, run_to_completion
from tests.core import fusion_models, graph_factory


def quantized(model: LoadedModel, n: int = 32) -> tuple[QdqModel, dict[str, np.ndarray]]:
    data = random_data(model.inputs, n)
    stats = run_to_completion(collect_stats(model, data, batch_size=16))
    return build_qdq(model, analyze(model, stats, QuantConfig())), next(iter(data.batches(n)))


def test_the_residual_adds_are_layers_reading_both_branches() -> None:
    model = from_proto(fusion_models.make_residual_net(blocks=2))
    adds = [layer for layer in model.layers if layer.op_type == "Add"]
    assert [a.name for a in adds] == ["block0.add", "block1.add"]
    assert adds[0].weight is None and adds[0].param_count == 0
    assert adds[0].activations == ("block0.conv2_out", "stem_relu")


def test_transformer_adds_stay_float() -> None:
    """Residual Adds feed RMSNorm; nothing about a transformer's layers changes."""
    model = from_proto(graph_factory.make_transformer_stack(blocks=2))
    assert model.layers and all(layer.op_type != "Add" for layer in model.layers)


def test_an_add_of_a_float_op_is_not_a_layer() -> None:
    """An Add whose input comes from a float op (a Sigmoid gate here, a rotary Mul in
    attention) would need a new quantization after that op: not a layer."""
    proto = fusion_models.make_residual_net(blocks=1)
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    proto.graph.node.append(helper.make_node("Sigmoid", [add.input[1]], ["gate"], name="g"))
    add.input[1] = "gate"
    nodes = list(proto.graph.node)  # the Sigmoid before the Add
    nodes.insert(nodes.index(add), nodes.pop())
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    assert all(layer.op_type != "Add" for layer in from_proto(proto).layers)


def test_pass_through_ops_are_the_builders_and_the_placements() -> None:
    assert PASS_THROUGH_OPS == qdq_builder._TRANSPARENT_OPS | set(placement.DATA_INPUTS)


def test_the_residual_network_runs_in_integer_kernels() -> None:
    model = from_proto(fusion_models.make_residual_net(blocks=3))
    qdq, feeds = quantized(model)
    report = fusion_report(qdq)
    kernels = dict(report.kernels)
    for i in range(3):
        assert kernels[f"block{i}.conv1"] == kernels[f"block{i}.conv2"] == "QLinearConv"
    assert kernels["block0.add"] == kernels["block1.add"] == "QLinearAdd"
    # The last join feeds the float average pool: no QLinearAdd, said why; its quantized
    # inputs still let the convolution before it fuse.
    assert set(report.unfused) == {"block2.add"}
    assert "QLinearAdd only with its output quantized" in report.unfused["block2.add"]
    ops = collections.Counter(
        n.op_type for n in optimized_graph(qdq, KernelPrecision.DEFAULT).graph.node
    )
    assert ops["QLinearAdd"] == 2 and ops["Add"] == 1 and ops["Conv"] == 0
    # The simulation (optimizations off) and ORT's integer kernels agree closely.
    sim = build_session(qdq.model, SessionConfig.for_simulation()).run(None, feeds)[0]
    native = build_session(
        qdq.model, SessionConfig.for_native(KernelPrecision.DEFAULT)
    ).run(None, feeds)[0]
    ref = build_session(model.model, SessionConfig.for_float()).run(None, feeds)[0]
    scale = float(np.abs(ref).max())
    assert float(np.abs(sim - native).max()) < 0.05 * scale
    assert np.mean(sim.argmax(1) == native.argmax(1)) >= 0.9
    # Quantizing the joins is where the error comes from, and it stays small.
    assert np.mean(sim.argmax(1) == ref.argmax(1)) >= 0.8
