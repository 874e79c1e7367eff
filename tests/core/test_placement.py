"""Q/DQ placement for fusion: activation quantization moved back through data-movement ops
(Relu, MaxPool, Concat, Flatten...) changes no simulated number, bit for bit, and lets ONNX
Runtime run the whole pool/concat network in integer kernels (without the pass two of its
convolutions stay float, weights dequantized on every run). Never moved where a float reader
would see quantized values."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import helper

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import random_data
from qviz.core.demo import DEMO_DIR
from qviz.core.graph.placement import place_for_fusion
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.loading import LoadedModel, from_proto, load_model
from qviz.core.runtime.fusion import fusion_report, optimized_graph
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, build_session
from qviz.core.stats.collect import collect_stats, run_to_completion
from tests.core import fusion_models, model_factory


def quantized(
    model: LoadedModel, place: bool, n: int = 16
) -> tuple[QdqModel, dict[str, np.ndarray]]:
    data = random_data(model.inputs, n)
    stats = run_to_completion(collect_stats(model, data, batch_size=8))
    qdq = build_qdq(model, analyze(model, stats, QuantConfig()), place=place)
    return qdq, next(iter(data.batches(n)))


def simulate(qdq: QdqModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return build_session(qdq.model, SessionConfig.for_simulation()).run(None, feeds)


def models() -> list[tuple[str, LoadedModel]]:
    out = [
        ("pool_concat", from_proto(fusion_models.make_pool_concat_net())),
        ("conv_net", from_proto(model_factory.make_conv_net())),
        ("mlp", from_proto(model_factory.make_mlp())),
        ("attention", from_proto(model_factory.make_matmul_attention())),
    ]
    if (DEMO_DIR / "model.onnx").is_file():
        out.append(("demo", load_model(DEMO_DIR / "model.onnx")))
    return out


@pytest.mark.parametrize(("name", "model"), models(), ids=[n for n, _ in models()])
def test_the_simulation_is_unchanged_bit_for_bit(name: str, model: LoadedModel) -> None:
    before, feeds = quantized(model, place=False)
    after = place_for_fusion(before)
    for a, b in zip(simulate(before, feeds), simulate(after, feeds), strict=True):
        assert np.array_equal(a, b), name
    # The pass is what build_qdq does by default, and doing it twice changes nothing more.
    built, _ = quantized(model, place=True)
    assert built.model.SerializeToString() == after.model.SerializeToString()
    assert place_for_fusion(after) is after or (
        place_for_fusion(after).model.SerializeToString() == after.model.SerializeToString()
    )


def test_pool_and_concat_chains_run_in_integer_kernels() -> None:
    model = from_proto(fusion_models.make_pool_concat_net())
    before, _ = quantized(model, place=False)
    after = place_for_fusion(before)
    unfused = fusion_report(before).unfused
    assert set(unfused) == {"squeeze_a", "squeeze_b"}  # their outputs feed the Concat
    report = fusion_report(after)
    assert not report.unfused and set(report.fused) == {layer.name for layer in model.layers}
    assert report.kernels["squeeze_a"] == report.kernels["squeeze_b"] == "QLinearConv"
    ops = collections.Counter(n.op_type for n in optimized_graph(after, KernelPrecision.DEFAULT)
                              .graph.node)
    # Only the model's input is quantized at run time: no DequantizeLinear at all, no float
    # Relu or Concat between the integer kernels.
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0
    assert ops["Relu"] == 0 and ops["Concat"] == 0 and ops["QLinearConcat"] == 1
    # The record says the branches' outputs are quantized now, with the Concat's parameters.
    by_name = {p.layer.name: p for p in after.layers}
    for branch in ("squeeze_a", "squeeze_b"):
        output = by_name[branch].output
        assert output is not None and output.name == "cat"
        assert by_name[branch].output_note == ""


def test_a_float_reader_keeps_the_float_values() -> None:
    """The Concat's output also feeds a float Sigmoid (a second model output): quantizing the
    branches would change what the Sigmoid reads, so nothing moves past the Concat."""
    proto = fusion_models.make_pool_concat_net()
    proto.graph.node.append(helper.make_node("Sigmoid", ["cat"], ["gate"], name="gate"))
    proto.graph.output.append(helper.make_tensor_value_info("gate", onnx.TensorProto.FLOAT,
                                                            ["N", 32, 16, 16]))
    model = from_proto(proto)
    before, feeds = quantized(model, place=False)
    after = place_for_fusion(before)
    for a, b in zip(simulate(before, feeds), simulate(after, feeds), strict=True):
        assert np.array_equal(a, b)
    cat_readers = [n.op_type for n in after.model.graph.node if "cat" in n.input]
    assert "Sigmoid" in cat_readers
    concat = next(n for n in after.model.graph.node if n.op_type == "Concat")
    producers = {o: n for n in after.model.graph.node for o in n.output}
    assert all(producers[i].op_type == "Relu" for i in concat.input)
