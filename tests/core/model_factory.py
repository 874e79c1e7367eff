"""Tiny ONNX models built in code for tests (no files in the repository, no downloads).

Every builder returns an ``onnx.ModelProto`` with deterministic weights; ``save`` writes one to
disk, optionally with its weights as external data. Shapes use "N" for the batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # A realistic IR version for the opset (old exporters wrote old IR versions).
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)], True)
    model.producer_name = "qviz-tests"
    return model


def save(model: onnx.ModelProto, path: Path, *, external_data: bool = False) -> Path:
    """Write ``model`` to ``path``; with ``external_data`` the weights go to ``NAME.data``."""
    path = Path(path)
    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def make_conv_net(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(4) -> Relu -> grouped Conv(8, groups=2) -> GAP -> Squeeze -> Gemm
    (transB=1, 10 classes) -> Softmax. Squeeze takes its axes as an attribute before opset 13,
    so an opset-11 build exercises the upgrade path."""
    rng = _rng(seed)
    inits = [
        _init("conv1.weight", _w(rng, 4, 3, 3, 3)),
        _init("conv1.bias", np.zeros(4, np.float32)),
        _init("conv2.weight", _w(rng, 8, 2, 3, 3)),
        _init("conv2.bias", rng.standard_normal(8).astype(np.float32) * 0.1),
        _init("fc.weight", _w(rng, 10, 8)),
        _init("fc.bias", np.zeros(10, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         pads=[1, 1, 1, 1], group=2),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="gap"),
    ]
    if opset < 13:
        nodes.append(helper.make_node("Squeeze", ["gap"], ["flat"], name="squeeze", axes=[2, 3]))
    else:
        inits.append(_init("squeeze_axes", np.array([2, 3], np.int64)))
        nodes.append(helper.make_node("Squeeze", ["gap", "squeeze_axes"], ["flat"],
                                      name="squeeze"))
    nodes += [
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc",
                         transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", FLOAT, ["N", 10])],
        inits,
    )
    return _model(graph, opset)


def make_mlp(trans_b: int = 0, opset: int = 17, seed: int = 1) -> onnx.ModelProto:
    """x[N,16] -> Gemm(transB) 32 -> Relu -> MatMul [32,10] -> Add bias -> y[N,10]."""
    rng = _rng(seed)
    w1 = _w(rng, 32, 16)  # [out, in]
    inits = [
        _init("fc1.weight", w1 if trans_b else w1.T.copy()),
        _init("fc1.bias", np.zeros(32, np.float32)),
        _init("fc2.weight", _w(rng, 10, 32).T.copy()),  # MatMul weight is [in, out]
        _init("fc2.bias", np.full(10, 0.1, np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1",
                         transB=trans_b),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "fc2.weight"], ["mm"], name="fc2"),
        helper.make_node("Add", ["mm", "fc2.bias"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 10])],
        inits,
    )
    return _model(graph, opset)


def make_conv_transpose(seed: int = 2) -> onnx.ModelProto:
    """x[N,6,4,4] -> ConvTranspose(weight [6, 4/2, 3, 3], groups=2) -> y[N,4,...]."""
    rng = _rng(seed)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "up.weight", "up.bias"], ["y"], name="up",
                          group=2, strides=[2, 2])],
        "conv_transpose",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 6, 4, 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4, 9, 9])],
        [_init("up.weight", _w(rng, 6, 2, 3, 3)), _init("up.bias", np.zeros(4, np.float32))],
    )
    return _model(graph, 17)


def make_matmul_attention(d: int = 8, seed: int = 3) -> onnx.ModelProto:
    """Single-head self-attention with a variable sequence length S.

    Inputs: x[N,S,d] and mask[N,S] (1 = token, 0 = padding). Padding positions get
    -3.4e38 added to their scores (the usual "finfo.min" mask), so the score tensor holds
    extreme finite values. Layers: q/k/v/out projections (MatMul with constant weights) and
    two MatMuls between activations (q x k^T, probs x v).
    """
    rng = _rng(seed)
    inits = [
        _init("q.weight", _w(rng, d, d)),
        _init("k.weight", _w(rng, d, d)),
        _init("v.weight", _w(rng, d, d)),
        _init("out.weight", _w(rng, d, d)),
        _init("scale", np.array(1.0 / np.sqrt(d), np.float32)),
        _init("one", np.array(1.0, np.float32)),
        _init("mask_fill", np.array(-3.4e38, np.float32)),
        _init("mask_axes", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "q.weight"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "k.weight"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "v.weight"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores_raw"], name="qk"),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"], name="scale_scores"),
        helper.make_node("Unsqueeze", ["mask", "mask_axes"], ["mask3"], name="mask_unsqueeze"),
        helper.make_node("Sub", ["one", "mask3"], ["pad"], name="mask_invert"),
        helper.make_node("Mul", ["pad", "mask_fill"], ["mask_bias"], name="mask_fill"),
        helper.make_node("Add", ["scores", "mask_bias"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "out.weight"], ["y"], name="out_proj"),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [
            helper.make_tensor_value_info("x", FLOAT, ["N", "S", d]),
            helper.make_tensor_value_info("mask", FLOAT, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("y", FLOAT, ["N", "S", d])],
        inits,
    )
    return _model(graph, 17)


def make_if_model(seed: int = 4) -> onnx.ModelProto:
    """x[N,4] -> If(sum(x) > 0: x @ W_then, else: Relu(x)) -> Gemm -> y[N,3].

    The then-branch holds a MatMul that qviz does not analyse (it says so in its notes).
    """
    rng = _rng(seed)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "then.weight"], ["t_out"], name="then_matmul")],
        "then_branch", [], [helper.make_tensor_value_info("t_out", FLOAT, ["N", 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e_out"], name="else_relu")],
        "else_branch", [], [helper.make_tensor_value_info("e_out", FLOAT, ["N", 4])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["branch"], name="branch_if",
                         then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Gemm", ["branch", "head.weight"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 3])],
        [
            _init("then.weight", _w(rng, 4, 4)),
            _init("head.weight", _w(rng, 3, 4)),
            _init("zero", np.array(0.0, np.float32)),
        ],
    )
    return _model(graph, 17)


def make_multi_io(seed: int = 5) -> onnx.ModelProto:
    """Inputs a[N,4] and b[N,6]; outputs ya = Gemm(a) [N,5] and yb = MatMul(b) + ya [N,5]."""
    rng = _rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["a", "wa"], ["ya"], name="gemm_a", transB=1),
            helper.make_node("MatMul", ["b", "wb"], ["pb"], name="matmul_b"),
            helper.make_node("Add", ["pb", "ya"], ["yb"], name="add"),
        ],
        "multi_io",
        [
            helper.make_tensor_value_info("a", FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", FLOAT, ["N", 6]),
        ],
        [
            helper.make_tensor_value_info("ya", FLOAT, ["N", 5]),
            helper.make_tensor_value_info("yb", FLOAT, ["N", 5]),
        ],
        [_init("wa", _w(rng, 5, 4)), _init("wb", _w(rng, 6, 5))],
    )
    return _model(graph, 17)


def make_constant_weight_model(seed: int = 6) -> onnx.ModelProto:
    """A Conv whose weight and bias come from Constant nodes instead of initializers."""
    rng = _rng(seed)
    weight = numpy_helper.from_array(_w(rng, 2, 1, 3, 3), "unused")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["const_w"], name="weight_const", value=weight),
            helper.make_node("Constant", [], ["const_b"], name="bias_const",
                             value_floats=[0.5, -0.5]),
            helper.make_node("Conv", ["x", "const_w", "const_b"], ["y"], name="conv"),
        ],
        "constant_weights",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 1, 5, 5])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 2, 3, 3])],
    )
    return _model(graph, 17)


def make_quantized_model(n_pairs: int = 2) -> onnx.ModelProto:
    """A QDQ graph: n_pairs QuantizeLinear/DequantizeLinear pairs around Relu nodes."""
    nodes, inits = [], [
        _init("s", np.array(0.1, np.float32)),
        _init("zp", np.array(0, np.int8)),
    ]
    prev = "x"
    for i in range(n_pairs):
        nodes += [
            helper.make_node("QuantizeLinear", [prev, "s", "zp"], [f"q{i}"], name=f"q{i}"),
            helper.make_node("DequantizeLinear", [f"q{i}", "s", "zp"], [f"dq{i}"],
                             name=f"dq{i}"),
            helper.make_node("Relu", [f"dq{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(prev, FLOAT, ["N", 4])],
        inits,
    )
    return _model(graph, 17)


def make_computed_weight_model(seed: int = 7) -> onnx.ModelProto:
    """A Conv whose weight is computed in the graph (Identity of an initializer): layer
    discovery skips it and says so in a note."""
    rng = _rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["cw"], ["cw_id"], name="cw_identity"),
            helper.make_node("Conv", ["x", "cw_id"], ["y"], name="conv_computed"),
        ],
        "computed",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 2, 2, 2])],
        [_init("cw", _w(rng, 2, 1, 3, 3))],
    )
    return _model(graph, 17)
