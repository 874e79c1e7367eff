"""Q/DQ placement that ONNX Runtime fuses: a pass over the built Q/DQ graph, exact.

ORT keeps a chain in integer only when its Q/DQ rules match: ``DQ → Conv → Q`` becomes
QLinearConv, ``DQ → MaxPool/Reshape/Transpose… → Q`` runs on int8 values, ``DQ… → Concat
→ Q`` becomes QLinearConcat, a Relu right before a Q whose zero point is the type's minimum
disappears. The builder quantizes each layer's input where the layer reads it; where a
data-movement op stands between two layers (Relu → MaxPool, a Concat joining two branches)
ORT then sees float ops between a DQ and a Q, runs them in float, and the layers before them
stay float with their weights dequantized on every run.

This pass moves each activation's quantization **backwards** through such ops, onto their
inputs, with the same scale and zero point: for an op that only moves or selects values (or
is monotone and maps the grid onto itself: Relu, MaxPool), quantizing its inputs gives the
same values as quantizing its output — ``Q(concat(a, b)) = concat(Q(a), Q(b))``,
``Q(relu(x)) = relu(Q(x))`` when zero is on the grid, ``Q(maxpool(x)) = maxpool(Q(x))`` for a
positive scale — so the simulation is unchanged bit for bit, while ORT now finds its
patterns all the way back to the layers that produce the values (their outputs quantized: they
fuse too). A move is made only where the op's output feeds nothing but that quantization (a
float reader would otherwise see quantized values), and stops at a tensor already on the same
grid (no requantization is ever added).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import onnx
from onnx import helper, numpy_helper

from qviz.core.graph.qdq_types import QdqLayer, QdqModel, QdqTensor
from qviz.core.model.loading import TensorKind
from qviz.core.model.onnx_graph import FreshNames, subgraph_references

__all__ = ["DATA_INPUTS", "place_for_fusion"]


def _first(node: onnx.NodeProto) -> tuple[int, ...]:
    return (0,)


def _all(node: onnx.NodeProto) -> tuple[int, ...]:
    return tuple(range(len(node.input)))


def _pad(node: onnx.NodeProto) -> tuple[int, ...]:
    """Pad moves values, and in constant mode adds the constant: exact only when it is 0
    (zero is on every grid with an integer zero point)."""
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode == "constant" and len(node.input) > 2 and node.input[2]:
        return ()  # a pad value other than the default 0 is not known here: leave it
    return (0,)


#: Ops through which a per-tensor quantization can move to the inputs exactly, and which of
#: their inputs carry the data (the others are shapes, indices, axes).
DATA_INPUTS: dict[str, Callable[[onnx.NodeProto], tuple[int, ...]]] = {
    "Relu": _first,
    "MaxPool": _first,
    "Reshape": _first,
    "Flatten": _first,
    "Transpose": _first,
    "Squeeze": _first,
    "Unsqueeze": _first,
    "Identity": _first,
    "Expand": _first,
    "Tile": _first,
    "Slice": _first,
    "Gather": _first,
    "Concat": _all,
    "Pad": _pad,
}
# A graph a pass could loop on forever is malformed; this many moves is more than any model.
_MAX_MOVES = 100_000


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """The proto's producers, consumers and the activation Q/DQ pairs, kept up to date."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.names = FreshNames(self.graph)
        self.inits = {i.name: i for i in self.graph.initializer}
        # The builder gives a layer output's Q/DQ its own copy of the next input's scale and
        # zero point: equal values count as the same grid (no requantization onto it).
        first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
        self.same: dict[str, str] = {}
        for i in self.graph.initializer:
            if i.data_location != onnx.TensorProto.EXTERNAL and len(i.dims) <= 1:
                value = numpy_helper.to_array(i)
                if value.size == 1:
                    vkey = (i.data_type, tuple(i.dims), value.tobytes())
                    self.same[i.name] = first.setdefault(vkey, i.name)
        self.outputs = {o.name for o in self.graph.output}
        self.refs = subgraph_references(self.graph)
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)

    def params(self, q: onnx.NodeProto) -> tuple[str, ...] | None:
        """(scale, zero point, attributes) of a per-tensor activation QuantizeLinear whose
        every reader is a DequantizeLinear with the same parameters; None otherwise."""
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or len(q.input) < 3:
            return None
        scale = self.inits.get(q.input[1])
        if scale is None or numpy_helper.to_array(scale).size != 1:
            return None
        if float(numpy_helper.to_array(scale).reshape(-1)[0]) <= 0:
            return None  # MaxPool commutes with a positive scale only
        readers = self.consumers.get(q.output[0], [])
        key = (*self.grid(q), repr(sorted(_attrs(q).items())))
        for dq in readers:
            if dq.op_type != "DequantizeLinear" or self.grid(dq) != key[:2]:
                return None
        return key if readers else None

    def grid(self, node: onnx.NodeProto) -> tuple[str, str]:
        """A Q or DQ node's (scale, zero point), by value: equal copies give one name."""
        scale, zp = node.input[1], node.input[2] if len(node.input) > 2 else ""
        return self.same.get(scale, scale), self.same.get(zp, zp)

    def on_grid(self, tensor: str, key: tuple[str, ...]) -> bool:
        """Whether `tensor` is a DequantizeLinear's output with these parameters."""
        p = self.producer.get(tensor)
        return (
            p is not None
            and p.op_type == "DequantizeLinear"
            and self.grid(p) == key[:2]
            and (q := self.producer.get(p.input[0])) is not None
            and self.params(q) == key
        )


def _move(g: _Graph, q: onnx.NodeProto, before: dict[str, list[onnx.NodeProto]]) -> list[
    tuple[onnx.NodeProto, str]
]:
    """Move `q`'s quantization onto the data inputs of the op producing its input, when that
    is exact; returns the new QuantizeLinear nodes with the tensors they quantize."""
    key = g.params(q)
    if key is None:
        return []
    tensor = q.input[0]
    op = g.producer.get(tensor)
    if op is None or op.domain not in ("", "ai.onnx") or op.op_type not in DATA_INPUTS:
        return []
    if tensor in g.outputs or tensor in g.refs or [c.name for c in g.consumers[tensor]] != [
        q.name
    ]:
        return []  # a float reader (or the model's output) needs the float values
    if any(o and o != tensor for o in op.output) or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in op.attribute
    ):
        return []
    dq_template = g.consumers[q.output[0]][0]
    added: list[tuple[onnx.NodeProto, str]] = []
    done: dict[str, str] = {}
    for index in DATA_INPUTS[op.op_type](op):
        x = op.input[index] if index < len(op.input) else ""
        if not x or x in g.inits or g.on_grid(x, key):
            continue  # constants and values already on this grid stay as they are
        if x not in done:
            q_out = g.names.fresh(f"{x}_quantized_for_{op.name}")
            dq_out = g.names.fresh(f"{x}_dequantized_for_{op.name}")
            new_q = helper.make_node("QuantizeLinear", [x, *q.input[1:]], [q_out],
                                     name=g.names.fresh(f"{x}_QuantizeLinear"))
            new_q.attribute.extend(q.attribute)
            new_dq = helper.make_node("DequantizeLinear", [q_out, *dq_template.input[1:]],
                                      [dq_out], name=g.names.fresh(f"{x}_DequantizeLinear"))
            new_dq.attribute.extend(dq_template.attribute)
            before.setdefault(op.name, []).extend([new_q, new_dq])
            g.producer[q_out], g.producer[dq_out] = new_q, new_dq
            g.consumers.setdefault(x, []).append(new_q)
            g.consumers[q_out] = [new_dq]
            g.consumers[dq_out] = []
            done[x] = dq_out
            added.append((new_q, x))
        g.consumers[x] = [c for c in g.consumers[x] if c.name != op.name]
        op.input[index] = done[x]
        g.consumers[done[x]].append(op)
    return added


def place_for_fusion(qdq: QdqModel) -> QdqModel:
    """`qdq` with every activation quantization moved back through data-movement ops as far
    as is exact (see the module docstring); the record's layers whose outputs are now
    quantized say so. The simulation of the result equals the input's bit for bit."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq.model)
    g = _Graph(model)
    before: dict[str, list[onnx.NodeProto]] = {}
    origin: dict[str, str] = {}  # quantized tensor -> the activation whose parameters it took
    work = [(n, n.input[0]) for n in list(g.graph.node) if g.params(n) is not None]
    for _, tensor in work:
        origin.setdefault(tensor, tensor)
    moves = 0
    while work and moves < _MAX_MOVES:
        q, tensor = work.pop()
        for new_q, x in _move(g, q, before):
            origin[x] = origin.get(tensor, tensor)
            work.append((new_q, x))
            moves += 1
    if not before:
        return qdq
    ordered: list[onnx.NodeProto] = []
    for n in g.graph.node:
        ordered.extend(before.get(n.name, []))
        ordered.append(n)
    del g.graph.node[:]
    g.graph.node.extend(ordered)
    # The checker resolves external data against the working folder; a large model's
    # weights live in its own folder (`qdq.data_dir`), so it is checked on the graph alone.
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.checker.check_model(model)
    return replace(qdq, model=model, layers=_with_outputs(qdq, g, origin))


def _with_outputs(qdq: QdqModel, g: _Graph, origin: dict[str, str]) -> tuple[QdqLayer, ...]:
    """The layers whose output the pass quantized, recorded with the activation whose
    parameters it took (what the builder records for an output it quantized itself)."""
    acts = {t.name: t for t in qdq.tensors if t.kind is TensorKind.ACTIVATION}
    out = []
    for plan in qdq.layers:
        node_outputs = [
            o for n in g.graph.node if n.name == plan.layer.node_name for o in n.output if o
        ]
        target: QdqTensor | None = None
        if plan.output is None and node_outputs:
            quantized = [
                c for c in g.consumers.get(node_outputs[0], []) if g.params(c) is not None
            ]
            if quantized and node_outputs[0] in origin:
                target = acts.get(origin[node_outputs[0]])
        out.append(plan if target is None else replace(plan, output=target, output_note=""))
    return tuple(out)
