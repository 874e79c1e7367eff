"""QOperator models (QLinearConv, QLinearMatMul, QGemm…) rewritten as the Q/DQ graphs they mean.

A QOperator node is, by definition, ``DequantizeLinear`` of its integer inputs, the float op,
and ``QuantizeLinear`` of its output with the output's scale and zero point: ONNX Runtime
fuses exactly that Q/DQ pattern back into the same kernel. Integer tensors that flow through
ops which only move values (MaxPool, Reshape, Transpose…) are rewritten the same way, with
the tensor's own parameters on both sides. Everything else on integers — dynamic
quantization (``DynamicQuantizeLinear``, ``MatMulInteger``), packed weights
(``MatMulNBits``), fused attention — has no exact Q/DQ form and is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.imported.reading import is_dq, is_q
from qviz.core.model.onnx_graph import FreshNames

__all__ = ["MOVING_OPS", "NO_QDQ_FORM", "convert_qoperator"]

#: Quantized ops with no exact Q/DQ equivalent.
NO_QDQ_FORM = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
        "QAttention",
        "QEmbedLayerNormalization",
        "QOrderedMatMul",
    }
)

# Ops that only move, pick or copy values: on integer codes they equal DQ -> op -> Q with the
# tensor's own parameters (input 0 is the data).
MOVING_OPS = frozenset(
    {
        "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
        "Gather", "Slice", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
    }
)
_Rewrite = Callable[["_Converter", onnx.NodeProto], None]


class _Converter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.names = FreshNames(self.graph)
        self.inits = {t.name: t for t in self.graph.initializer}
        self.params: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point)
        self.out: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []

    def value(self, name: str) -> np.ndarray:
        return np.asarray(numpy_helper.to_array(self.inits[name]))

    def dq(self, tensor: str, scale: str, zp: str, axis: int | None = None) -> str:
        out = self.names.fresh(f"{tensor}_dequantized")
        inputs = [tensor, scale] + ([zp] if zp else [])
        node = helper.make_node("DequantizeLinear", inputs, [out],
                                name=self.names.fresh(f"{tensor}_DequantizeLinear"))
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        self.out.append(node)
        return out

    def q(self, tensor: str, scale: str, zp: str, out: str) -> None:
        inputs = [tensor, scale] + ([zp] if zp else [])
        self.out.append(helper.make_node("QuantizeLinear", inputs, [out],
                                         name=self.names.fresh(f"{out}_QuantizeLinear")))
        self.params[out] = (scale, zp)

    def weight_axis(self, scale: str, rank_axis: int) -> int | None:
        return None if self.value(scale).size == 1 else rank_axis

    def float_name(self, integer: str) -> str:
        """The float tensor behind integer tensor `integer`: ORT names it ``X_quantized``
        after the float ``X``, which is the name to give back when it is free."""
        base = integer.removesuffix("_quantized")
        return self.names.fresh(base if base != integer else f"{integer}_float")

    def float_op(self, node: onnx.NodeProto, op: str, inputs: Sequence[str],
                 attrs: Collection[str] | None = None, domain: str = "") -> str:
        out = self.float_name(node.output[0])
        name = node.name.removesuffix("_quant")  # ORT's QOperator suffix on the float name
        new = helper.make_node(op, list(inputs), [out], name=self.names.fresh(name),
                               domain=domain)
        for a in node.attribute:
            if attrs is None or a.name in attrs:
                new.attribute.append(a)
        self.out.append(new)
        return out

    def bias(self, b: str, x_scale: str, w_scale: str) -> str:
        """An int32 bias at scale s_x * s_w, as QLinearConv/QGemm read it."""
        scale = (self.value(x_scale).astype(np.float32) * self.value(w_scale).astype(np.float32))
        scale = np.broadcast_to(scale, self.value(b).shape).astype(np.float32)
        name = self.names.fresh(f"{b}_scale")
        self.new_inits.append(numpy_helper.from_array(scale, name))
        return self.dq(b, name, "", axis=0)


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _opt(inputs: Sequence[str], i: int) -> str:
    return inputs[i] if len(inputs) > i else ""


def _conv(c: _Converter, n: onnx.NodeProto) -> None:
    x, xs, xz, w, ws, wz, ys, yz = list(n.input[:8])
    ins = [c.dq(x, xs, xz), c.dq(w, ws, wz, c.weight_axis(ws, 0))]
    if _opt(n.input, 8):
        ins.append(c.bias(n.input[8], xs, ws))
    c.q(c.float_op(n, "Conv", ins), ys, yz, n.output[0])


def _matmul(c: _Converter, n: onnx.NodeProto) -> None:
    a, a_s, az, b, bs, bz, ys, yz = list(n.input[:8])
    rank = len(c.inits[b].dims) if b in c.inits else 2
    ins = [c.dq(a, a_s, az), c.dq(b, bs, bz, c.weight_axis(bs, rank - 1))]
    c.q(c.float_op(n, "MatMul", ins), ys, yz, n.output[0])


def _binary(op: str) -> _Rewrite:
    def rewrite(c: _Converter, n: onnx.NodeProto) -> None:
        a, a_s, az, b, bs, bz, ys, yz = list(n.input[:8])
        c.q(c.float_op(n, op, [c.dq(a, a_s, az), c.dq(b, bs, bz)]), ys, yz, n.output[0])
    return rewrite


def _unary(op: str, keep: frozenset[str] = frozenset()) -> _Rewrite:
    def rewrite(c: _Converter, n: onnx.NodeProto) -> None:
        if _int(n, "channels_last", 0):
            raise QvizError(f"{n.op_type} '{n.name}': channels_last has no Q/DQ form")
        x, xs, xz, ys, yz = list(n.input[:5])
        c.q(c.float_op(n, op, [c.dq(x, xs, xz)], keep), ys, yz, n.output[0])
    return rewrite


def _softmax(c: _Converter, n: onnx.NodeProto) -> None:
    if _int(n, "opset", 13) < 13 and _int(n, "axis", -1) != -1:
        raise QvizError(f"QLinearSoftmax '{n.name}': opset-{_int(n, 'opset', 13)} softmax over "
                        "a non-last axis has no Q/DQ form at this opset")
    x, xs, xz, ys, yz = list(n.input[:5])
    c.q(c.float_op(n, "Softmax", [c.dq(x, xs, xz)], frozenset({"axis"})), ys, yz, n.output[0])


def _concat(c: _Converter, n: onnx.NodeProto) -> None:
    ys, yz = n.input[0], n.input[1]
    rest = list(n.input[2:])
    ins = [c.dq(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
    c.q(c.float_op(n, "Concat", ins, frozenset({"axis"})), ys, yz, n.output[0])


def _qgemm(c: _Converter, n: onnx.NodeProto) -> None:
    a, a_s, az, b, bs, bz = list(n.input[:6])
    trans_b = _int(n, "transB", 0)
    ins = [c.dq(a, a_s, az), c.dq(b, bs, bz, c.weight_axis(bs, 0 if trans_b else 1))]
    if _opt(n.input, 6):
        ins.append(c.bias(n.input[6], a_s, bs))
    out = c.float_op(n, "Gemm", ins, frozenset({"alpha", "beta", "transA", "transB"}))
    ys = _opt(n.input, 7)
    if ys:
        c.q(out, ys, _opt(n.input, 8), n.output[0])
    else:  # float output
        c.out[-1].output[0] = n.output[0]


_REWRITES: dict[str, _Rewrite] = {
    "QLinearConv": _conv,
    "QLinearMatMul": _matmul,
    "QLinearAdd": _binary("Add"),
    "QLinearMul": _binary("Mul"),
    "QLinearSigmoid": _unary("Sigmoid"),
    "QLinearLeakyRelu": _unary("LeakyRelu", frozenset({"alpha"})),
    "QLinearGlobalAveragePool": _unary("GlobalAveragePool"),
    "QLinearAveragePool": _unary(
        "AveragePool",
        frozenset({"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads",
                   "strides"}),
    ),
    "QLinearSoftmax": _softmax,
    "QLinearConcat": _concat,
    "QGemm": _qgemm,
}


def _moving(c: _Converter, n: onnx.NodeProto) -> None:
    scale, zp = c.params[n.input[0]]
    ins = [c.dq(n.input[0], scale, zp), *n.input[1:]]
    outs = [c.float_name(o) for o in n.output]
    new = helper.make_node(n.op_type, ins, outs, name=c.names.fresh(n.name.removesuffix("_quant")),
                           domain=n.domain)
    new.attribute.extend(n.attribute)
    c.out.append(new)
    for o, f in zip(n.output, outs, strict=True):
        c.q(f, scale, zp, o)


def convert_qoperator(model: onnx.ModelProto) -> bool:
    """Rewrite `model`'s QOperator nodes as Q/DQ, in place (nodes must be named); True when
    there were any. QvizError naming the node for what has no exact Q/DQ form."""
    graph = model.graph
    for n in graph.node:
        if n.op_type in NO_QDQ_FORM:
            raise QvizError(
                f"{n.op_type} node '{n.name}' has no exact Q/DQ form (dynamic quantization or "
                "packed weights): qviz opens Q/DQ and static QOperator models; re-export with "
                "onnxruntime's quantize_static(quant_format=QuantFormat.QDQ)"
            )
    if not any(n.op_type in _REWRITES for n in graph.node):
        return False
    # Shapes recorded for the float tensors the quantizer replaced would block their names.
    del graph.value_info[:]
    c = _Converter(model)
    for n in graph.node:
        if is_q(n):
            c.params[n.output[0]] = (n.input[1], _opt(n.input, 2))
        rewrite = _REWRITES.get(n.op_type)
        if rewrite is not None and n.domain in ("", "ai.onnx", "com.microsoft"):
            rewrite(c, n)
        elif not (is_q(n) or is_dq(n)) and any(i in c.params for i in n.input):
            if n.op_type not in MOVING_OPS or n.input[0] not in c.params:
                raise QvizError(f"{n.op_type} node '{n.name}' computes on quantized integers: "
                                "it has no exact Q/DQ form")
            _moving(c, n)
        else:
            c.out.append(n)
    del graph.node[:]
    graph.node.extend(c.out)
    graph.initializer.extend(c.new_inits)
    return True
