"""Small, local edits of an imported Q/DQ graph (the repair's tools).

Every edit touches only the nodes and initializers of the pair it is about: new parameters go
into new initializers (imported models share a scale between pairs), nodes are deleted or
added in place, and :meth:`GraphEditor.finish` drops only the initializers the edits left
unread. Everything else stays byte for byte as imported.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.model.onnx_graph import FreshNames
from qviz.core.quant.qparams import QParams

__all__ = ["GraphEditor"]


class GraphEditor:
    """Edits of one graph, put in place by :meth:`finish`."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.names = FreshNames(self.graph)
        self.nodes = {n.name: n for n in self.graph.node}
        self.deleted: set[str] = set()
        self.head: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.new_inits: list[onnx.TensorProto] = []
        self.touched: set[str] = set()  # initializers an edit stopped reading
        self.outputs = {o.name for o in self.graph.output}
        self.initializers = {i.name for i in self.graph.initializer}
        self.graph_inputs = {i.name for i in self.graph.input}

    # -- reading -------------------------------------------------------------------------
    def live(self) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if n.name not in self.deleted]

    def node(self, name: str, what: str) -> onnx.NodeProto:
        found = self.nodes.get(name)
        if found is None or name in self.deleted:
            raise QvizError(f"{what} has no node in the imported model")
        return found

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        nodes = [*self.live(), *self.head, *(n for ns in self.after.values() for n in ns)]
        return [n for n in nodes if tensor in n.input]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        for n in self.live():
            if tensor in n.output:
                return n
        return None

    def has_tensor(self, name: str) -> bool:
        return (name in self.graph_inputs or name in self.initializers
                or self.producer(name) is not None)

    # -- adding ----------------------------------------------------------------------------
    def add_init(self, base: str, array: np.ndarray) -> str:
        name = self.names.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def _place_after(self, tensor: str, nodes: list[onnx.NodeProto]) -> None:
        producer = self.producer(tensor)
        if producer is None:
            self.head.extend(nodes)
        else:
            self.after.setdefault(producer.name, []).extend(nodes)

    def dq_node(self, data: str, scale: str, zp: str, qp: QParams, base: str) -> str:
        """A DequantizeLinear of stored codes at the head of the graph; returns its output."""
        out = self.names.fresh(base)
        node = helper.make_node("DequantizeLinear", [data, scale, zp], [out],
                                name=self.names.fresh(f"{base}_DequantizeLinear"))
        _set_layout(node, qp)
        self.head.append(node)
        return out

    def qdq_on(self, tensor: str, scale: str, zp: str, qp: QParams, readers: list[str],
               *, to_output: bool) -> str:
        """A new Q/DQ pair on `tensor`, read by the nodes `readers` (or, `to_output`, by the
        graph output `tensor`, whose producer then writes a renamed tensor)."""
        source = tensor
        if to_output:
            producer = self.producer(tensor)
            if producer is None:
                raise QvizError(f"model output '{tensor}' is not computed by the model")
            source = self.names.fresh(f"{tensor}_float")
            producer.output[list(producer.output).index(tensor)] = source
            for n in self.readers(tensor):
                for j, name in enumerate(n.input):
                    if name == tensor:
                        n.input[j] = source
        q_out = self.names.fresh(f"{tensor}_quantized")
        out = tensor if to_output else self.names.fresh(f"{tensor}_dequantized")
        nodes = [
            helper.make_node("QuantizeLinear", [source, scale, zp], [q_out],
                             name=self.names.fresh(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [out],
                             name=self.names.fresh(f"{tensor}_DequantizeLinear")),
        ]
        self._place_after(source, nodes)
        for name in readers:
            node = self.nodes.get(name)
            if node is None:
                continue
            for j, i in enumerate(node.input):
                if i == tensor:
                    node.input[j] = out
        return out

    def clip_after(self, tensor: str, lo: float, hi: float, what: str) -> None:
        """Clip the values a DequantizeLinear writes to `tensor` to [lo, hi] (a 2..7-bit
        activation held in an 8-bit pair); readers keep reading `tensor`."""
        producer = self.producer(tensor)
        if producer is None:
            raise QvizError(f"tensor '{tensor}' has no producer to clip")
        wide = self.names.fresh(f"{tensor}_8bit")
        producer.output[list(producer.output).index(tensor)] = wide
        lo_name = self.add_init(f"{tensor}_clip_min", np.asarray(lo, np.float32))
        hi_name = self.add_init(f"{tensor}_clip_max", np.asarray(hi, np.float32))
        clip = helper.make_node("Clip", [wide, lo_name, hi_name], [tensor],
                                name=self.names.fresh(f"{tensor}_Clip_{what}"))
        self.after.setdefault(producer.name, []).insert(0, clip)

    def restore_op(self, tensor: str, op: onnx.NodeProto, constants: dict[str, np.ndarray]) -> None:
        """Put float op `op` (a Relu/Clip the quantizer folded into the pair on `tensor`)
        back between `tensor`'s producer and its readers; `constants` are its constant
        inputs' values."""
        producer = self.producer(tensor)
        if producer is None:
            raise QvizError(f"tensor '{tensor}' has no producer to put {op.op_type} after")
        before = self.names.fresh(f"{tensor}_before_{op.op_type}")
        producer.output[list(producer.output).index(tensor)] = before
        inputs = [before] + [self.add_init(i, constants[i]) if i in constants else i
                             for i in op.input[1:]]
        node = helper.make_node(op.op_type, inputs, [tensor],
                                name=self.names.fresh(f"{tensor}_{op.op_type}"))
        node.attribute.extend(op.attribute)
        self.after.setdefault(producer.name, []).insert(0, node)

    # -- changing --------------------------------------------------------------------------
    def bypass(self, old: str, new: str) -> None:
        """Readers of `old` read `new` instead; a graph output `old` becomes Identity(new)."""
        for n in self.readers(old):
            for j, name in enumerate(n.input):
                if name == old:
                    n.input[j] = new
        if old in self.outputs:
            node = helper.make_node("Identity", [new], [old],
                                    name=self.names.fresh(f"{old}_Identity"))
            self._place_after(new, [node])

    def delete(self, *names: str) -> None:
        for name in names:
            node = self.nodes.get(name)
            if node is not None:
                self.deleted.add(name)
                self.touched.update(node.input)

    def set_params(self, name: str, scale: str, zp: str, qp: QParams,
                   data: str | None = None) -> None:
        """New scale and zero point (and codes) for a Q or DQ node, its axis and block size
        following `qp`."""
        node = self.nodes[name]
        self.touched.update(node.input)
        if data is not None:
            node.input[0] = data
        del node.input[1:]
        node.input.extend([scale, zp])
        _set_layout(node, qp)

    def set_bias(self, name: str, codes: str, scale: str) -> None:
        node = self.nodes[name]
        self.touched.update(node.input)
        del node.input[:]
        node.input.extend([codes, scale])

    # -- assembling ------------------------------------------------------------------------
    def finish(self) -> None:
        ordered = list(self.head)
        for n in self.graph.node:
            if n.name not in self.deleted:
                ordered.append(n)
            ordered.extend(self.after.get(n.name, []))
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        read = {i for n in ordered for i in n.input} | self.outputs
        keep = [t for t in self.graph.initializer if t.name in read or t.name not in self.touched]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        self.graph.initializer.extend(self.new_inits)
        kept = {t.name for t in self.graph.initializer}
        stale = [i for i in self.graph.input if i.name in self.initializers and i.name not in kept]
        for vi in stale:  # old IR versions list initializers among the inputs
            self.graph.input.remove(vi)


def _set_layout(node: onnx.NodeProto, qp: QParams) -> None:
    for attr in [a for a in node.attribute if a.name in ("axis", "block_size")]:
        node.attribute.remove(attr)
    if qp.axis is not None:
        node.attribute.append(helper.make_attribute("axis", qp.axis))
    if qp.block_size is not None:
        node.attribute.append(helper.make_attribute("block_size", qp.block_size))
