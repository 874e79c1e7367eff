"""Convolutional models built in code whose Q/DQ graphs ONNX Runtime fuses only when the Q/DQ
nodes sit where its QDQ rules expect them: a Relu → MaxPool chain between convolutions, and
two convolution branches joined by a Concat (as in SqueezeNet's fire modules)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def make_pool_concat_net(channels: int = 16, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,S,S] → Conv(C) → Relu → MaxPool(2) → {Conv1x1(C) → Relu, Conv3x3(C) → Relu}
    → Concat → Conv(C) → Relu → MaxPool(2) → Flatten → Gemm(10)."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    nodes = []

    def conv(name: str, x: str, cin: int, cout: int, k: int) -> str:
        w = init(f"{name}.weight", _w(rng, cout, cin, k, k))
        b = init(f"{name}.bias", (0.1 * rng.standard_normal(cout)).astype(np.float32))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_out"], name=name,
                                      pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"],
                                      name=f"{name}_Relu"))
        return f"{name}_relu"

    def pool(name: str, x: str) -> str:
        nodes.append(helper.make_node("MaxPool", [x], [f"{name}_out"], name=name,
                                      kernel_shape=[2, 2], strides=[2, 2]))
        return f"{name}_out"

    y = pool("pool1", conv("conv1", "x", 3, c, 3))
    a = conv("squeeze_a", y, c, c, 1)
    b = conv("squeeze_b", y, c, c, 3)
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], name="concat", axis=1))
    y = pool("pool2", conv("conv3", "cat", 2 * c, c, 3))
    nodes.append(helper.make_node("Flatten", [y], ["flat"], name="flatten", axis=1))
    feat = c * (size // 4) ** 2
    w = init("fc.weight", _w(rng, 10, feat))
    bias = init("fc.bias", np.zeros(10, np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", w, bias], ["logits"], name="fc", transB=1))
    return _classifier(nodes, inits, "pool_concat", size)


def _classifier(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], name: str, size: int
) -> onnx.ModelProto:
    """The model of `nodes`: input x[N,3,size,size], output logits[N,10], opset 17."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_residual_net(
    channels: int = 16, size: int = 16, blocks: int = 2, seed: int = 0
) -> onnx.ModelProto:
    """A small ResNet: x[N,3,S,S] → Conv(C) → Relu → blocks × {Conv3x3 → Relu → Conv3x3 →
    Add(skip) → Relu} → GlobalAveragePool → Flatten → Gemm(10). Each block's Add joins the
    block's input (the skip) with its second conv's output; the last one feeds the float
    average pool."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = []
    nodes = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(name: str, x: str, cin: int, cout: int, k: int) -> str:
        w = init(f"{name}.weight", _w(rng, cout, cin, k, k))
        b = init(f"{name}.bias", (0.1 * rng.standard_normal(cout)).astype(np.float32))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_out"], name=name,
                                      pads=[k // 2] * 4))
        return f"{name}_out"

    def relu(name: str, x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}_relu"], name=f"{name}_Relu"))
        return f"{name}_relu"

    y = relu("stem", conv("stem", "x", 3, c, 3))
    for i in range(blocks):
        h = relu(f"block{i}.conv1", conv(f"block{i}.conv1", y, c, c, 3))
        h = conv(f"block{i}.conv2", h, c, c, 3)
        nodes.append(helper.make_node("Add", [h, y], [f"block{i}_sum"], name=f"block{i}.add"))
        y = relu(f"block{i}", f"block{i}_sum")
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1))
    w = init("fc.weight", _w(rng, 10, c))
    bias = init("fc.bias", np.zeros(10, np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", w, bias], ["logits"], name="fc", transB=1))
    return _classifier(nodes, inits, "residual", size)
