"""Every node of a model's ONNX graph, with the tensors that connect them.

The graph view draws the whole graph, not only the layers qviz quantizes: each top-level node,
plus one node per graph input and output. Edges run from the node that produces a tensor to
each node that reads it (nodes with ``If``/``Loop``/``Scan`` bodies read the outer tensors
their bodies use). Constant tensors (initializers) are not nodes: they are listed as a node's
weights.

Each node carries its module path, split into segments, for grouping: the PyTorch module path
the exporter recorded (``features.3`` → ``("features", "3")``, see
`qviz.core.model.layers.module_path`), else the scope in an exporter-style node name
(``/model/layers.3/self_attn/q_proj/MatMul`` → ``("model", "layers", "3", "self_attn",
"q_proj")``), else a dotted name that is itself a module path (``model.layers.3.mlp.up_proj``),
else none (the node sits at the top).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

import onnx

from qviz.core.model.layers import module_path
from qviz.core.model.loading import LoadedModel
from qviz.core.model.onnx_graph import all_graphs, node_name

# "model.layers.3.mlp": identifiers (or list indices) joined by dots.
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")

__all__ = ["NodeKind", "OpEdge", "OpGraph", "OpNode", "node_scope", "op_graph"]


class NodeKind(Enum):
    OP = "op"
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class OpNode:
    """One node of the drawing: an ONNX node, or a graph input or output.

    ``layer`` is the display name of the qviz layer this node is (None for the nodes qviz
    does not quantize); ``index`` the node's position in the graph (-1 for inputs and
    outputs); ``weights`` its constant inputs; ``path`` its module path split into segments
    (the grouping key).
    """

    id: str
    kind: NodeKind
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...]
    path: tuple[str, ...]
    layer: str | None
    index: int
    module: str | None = None  # the torch module path the exporter recorded, as written


@dataclass(frozen=True)
class OpEdge:
    """``tensor`` flows from node ``src`` to node ``dst``."""

    src: str
    dst: str
    tensor: str


@dataclass(frozen=True, eq=False)
class OpGraph:
    """The nodes in graph order (inputs first, outputs last) and the edges between them."""

    nodes: tuple[OpNode, ...]
    edges: tuple[OpEdge, ...]
    _by_id: Mapping[str, OpNode] = field(init=False, repr=False, compare=False)
    _by_layer: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", MappingProxyType({n.id: n for n in self.nodes}))
        by_layer = {n.layer: n.id for n in self.nodes if n.layer is not None}
        object.__setattr__(self, "_by_layer", MappingProxyType(by_layer))

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def node(self, node_id: str) -> OpNode:
        return self._by_id[node_id]

    def node_of_layer(self, layer: str) -> str | None:
        """The id of the node that is qviz layer ``layer`` (by display name)."""
        return self._by_layer.get(layer)

    @property
    def n_ops(self) -> int:
        return sum(1 for n in self.nodes if n.kind is NodeKind.OP)


def node_scope(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module path segments of ``node`` (see the module docstring)."""
    scope = module_path(node)
    if scope:
        parts = [scope]
    elif "/" in node.name:
        parts = node.name.strip("/").split("/")[:-1]  # the last part is the op itself
    elif _DOTTED.fullmatch(node.name):
        parts = [node.name]  # a node named after the module it is ("encoder.layers.3.fc1")
    else:
        return ()
    return tuple(seg for part in parts for seg in part.split(".") if seg)


def _body_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's control-flow bodies read (outer-scope tensors among them)."""
    names: set[str] = set()
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for g in all_graphs(body):
                for n in g.node:
                    names.update(n.input)
    return names


def op_graph(model: LoadedModel) -> OpGraph:
    """Every top-level node of ``model``'s graph, its inputs and outputs, and their edges."""
    graph = model.model.graph
    consts = {t.name for t in graph.initializer}
    layer_of = {layer.depth: layer.name for layer in model.layers}
    nodes: list[OpNode] = []
    producer: dict[str, str] = {}
    for vi in graph.input:
        if vi.name in consts:
            continue  # old IR versions list initializers as inputs too
        nid = f"in:{vi.name}"
        nodes.append(OpNode(nid, NodeKind.INPUT, vi.name, "Input", (), (vi.name,), (), (), None,
                            -1))
        producer[vi.name] = nid
    reads: list[tuple[str, list[str]]] = []
    for i, n in enumerate(graph.node):
        nid = f"n:{i}"
        inputs = tuple(x for x in n.input if x)
        nodes.append(OpNode(
            nid, NodeKind.OP, node_name(n, i), n.op_type,
            tuple(x for x in inputs if x not in consts), tuple(o for o in n.output if o),
            tuple(x for x in inputs if x in consts), node_scope(n), layer_of.get(i), i,
            module_path(n),
        ))
        extra = sorted(_body_reads(n) - set(inputs)) if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute
        ) else []
        reads.append((nid, [*inputs, *extra]))
        for o in n.output:
            if o:
                producer[o] = nid
    edges: list[OpEdge] = []
    seen: set[tuple[str, str, str]] = set()
    for nid, names in reads:
        for name in names:
            src = producer.get(name)
            if src is not None and src != nid and (src, nid, name) not in seen:
                seen.add((src, nid, name))
                edges.append(OpEdge(src, nid, name))
    for vi in graph.output:
        nid = f"out:{vi.name}"
        nodes.append(OpNode(nid, NodeKind.OUTPUT, vi.name, "Output", (vi.name,), (), (), (),
                            None, -1))
        src = producer.get(vi.name)
        if src is not None:
            edges.append(OpEdge(src, nid, vi.name))
    return OpGraph(tuple(nodes), tuple(edges))
