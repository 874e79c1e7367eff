"""Small graphs for the transform tests: one pattern each, weights planted to make the point."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import Dataset, random_data
from qviz.core.evaluation.evaluate import evaluate
from qviz.core.model.loading import LoadedModel, from_proto
from qviz.core.progress import run_to_completion
from qviz.core.stats.collect import CalibrationStats, collect_stats
from qviz.core.transforms.plan import TransformPlan, transform_model

FLOAT = TensorProto.FLOAT


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x: list[object],
           y: list[object], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", FLOAT, x)],
        [helper.make_tensor_value_info("y", FLOAT, y)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_pair(act: str | None = "Relu", seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(8, bias) -> act -> Conv(6, no bias) -> GAP -> Flatten -> y[N,6].

    The first conv's output channels have ranges 100x apart (as BatchNorm folding leaves
    them), the second conv's input channels the other way round: per-tensor weight scales
    lose the quiet channels, what cross-layer equalization repairs."""
    rng = np.random.default_rng(seed)
    gain = np.array([0.05, 1, 5, 0.2, 2, 0.02, 1, 0.5])
    w1 = (rng.standard_normal((8, 3, 3, 3)) * gain[:, None, None, None]).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(8) * gain).astype(np.float32)
    w2 = (rng.standard_normal((6, 8, 3, 3)) / gain[None, :, None, None] * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("w1", w1), ("b1", b1), ("w2", w2))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    mid = "c1"
    if act == "Relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                  numpy_helper.from_array(np.array(6, np.float32), "six")]
        nodes.append(helper.make_node("Clip", ["c1", "zero", "six"], ["a1"], name="relu6"))
        mid = "a1"
    elif act == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", ["c1"], ["a1"], name="leaky", alpha=0.1))
        mid = "a1"
    elif act == "Relu":
        nodes.append(helper.make_node("Relu", ["c1"], ["a1"], name="relu"))
        mid = "a1"
    nodes += [
        helper.make_node("Conv", [mid, "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flat"),
    ]
    return _model(nodes, inits, ["N", 3, 8, 8], ["N", 6])


def softmax_mlp(seed: int = 1) -> onnx.ModelProto:
    """x[N,4,16] -> MatMul [16,16] -> Softmax -> MatMul [16,8] -> y: the second layer's input
    comes from an op no scale can be folded into (an explicit Mul carries it)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, ["N", 4, 16], ["N", 4, 8])


def calibrated(proto: onnx.ModelProto, n: int = 64, gram: bool = False
               ) -> tuple[LoadedModel, CalibrationStats, Dataset]:
    model = from_proto(proto, sha256="test-model")
    data = random_data(model.inputs, n)
    stats = run_to_completion(collect_stats(model, data, batch_size=16, gram=gram))
    return model, stats, data


def output_sqnr(model: LoadedModel, stats: CalibrationStats, data: Dataset,
                config: QuantConfig) -> tuple[float, TransformPlan]:
    """Output SQNR of the Q/DQ model (simulation) with the config's transforms applied."""
    plan = transform_model(model, stats, config)
    results = analyze(plan.model, plan.stats, config)
    evaluation = run_to_completion(evaluate(plan.model, results, data, latency=False))
    return evaluation.outputs[0].sqnr_db, plan
