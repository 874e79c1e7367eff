"""Which nodes of the graph qviz gave ONNX Runtime each node of ORT's optimized graph computes.

ORT rewrites the graph before it runs it: it fuses patterns (``DQ → Conv → Q`` into
QLinearConv, Conv + Relu into FusedConv, MatMul + Add into Gemm...), changes layouts (NCHWc
convolutions, NHWC QLinearConv with Transposes around them) and removes what it can. Its
profiler times the optimized nodes, so a time is only useful once it is traced back to the
nodes the user knows. ORT leaves no record of that; what it does leave, and what this module
reads, in order of trust:

1. **names** — a node ORT keeps, or re-creates from one node (a Q/DQ fusion), carries the
   original name, perhaps decorated: ``node_Conv_65_token_1`` (a name made unique),
   ``fused node_linear`` (an activation fusion), ``relu_nchwc`` (a layout change, named after
   the tensor it computes);
2. **tensors** — a node whose output keeps an original tensor's name computes everything
   between its inputs and that tensor: the original nodes on those paths (a fused Conv + Relu
   covers both). Tensors ORT renames are followed through the optimized graph: the output of
   a node known to compute original tensor ``t`` stands for ``t``, and a node that covers
   nothing (a layout Transpose) passes its input's meaning on.

A node that covers nothing is ORT's own: a layout change (Transpose, ReorderInput/Output) or a
copy. `NodeMap.nearest` finds the covered node it serves, so its time can be charged there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import onnx

__all__ = ["NodeMap", "map_nodes", "strip_decorations"]

# ORT's decorations of a node name: a uniqueness suffix, an activation fusion's prefix, the
# NCHWc layout's suffix. Applied repeatedly: "fused relu_nchwc_token_3".
_TOKEN = re.compile(r"_token_\d+$")
_PREFIXES = ("fused ",)
_SUFFIXES = ("_nchwc",)
# Above this many nodes a tensor span is not one fused kernel but a failure to find its
# inputs (ORT renamed them all): the span is not trusted beyond the producing node.
_MAX_SPAN = 32


def strip_decorations(name: str) -> str:
    """``fused node_linear_token_2`` → ``node_linear``: the name ORT started from."""
    prev = None
    while prev != name:
        prev = name
        name = _TOKEN.sub("", name)
        for p in _PREFIXES:
            name = name.removeprefix(p)
        for s in _SUFFIXES:
            name = name.removesuffix(s)
    return name


@dataclass(frozen=True)
class NodeMap:
    """``covers[optimized node] = the source nodes it computes`` (empty: ORT's own node, such
    as a layout Transpose); ``named[optimized node]`` the source node whose name it carries
    (maybe decorated), if any; and the optimized graph's edges between nodes (``feeds``: node →
    the nodes reading its outputs; ``fed_by``: node → the nodes producing its inputs), so a
    node covering nothing can be charged to the node it serves (`nearest`)."""

    covers: Mapping[str, tuple[str, ...]]
    feeds: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    fed_by: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    named: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("covers", "feeds", "fed_by", "named"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def covered_by(self) -> dict[str, list[str]]:
        """Source node → the optimized nodes that compute (part of) it."""
        out: dict[str, list[str]] = {}
        for opt, srcs in self.covers.items():
            for s in srcs:
                out.setdefault(s, []).append(opt)
        return out

    def nearest(self, name: str, wanted: Callable[[str], bool]) -> str | None:
        """The closest optimized node satisfying `wanted` that `name` feeds (through nodes
        covering nothing), else the closest one feeding it; None if neither exists."""
        for step in (self.feeds, self.fed_by):
            seen = {name}
            frontier = [name]
            while frontier:
                nxt: list[str] = []
                for n in frontier:
                    for other in step.get(n, ()):
                        if other in seen:
                            continue
                        seen.add(other)
                        if wanted(other):
                            return other
                        if not self.covers.get(other):
                            nxt.append(other)
                frontier = nxt
        return None


class _Source:
    """The source graph's producers and constants, for walking back from a tensor."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = {n.name: n for n in graph.node if n.name}
        self.producer = {o: n.name for n in graph.node for o in n.output if o and n.name}
        self.constants = {i.name for i in graph.initializer}
        self.inputs = {i.name for i in graph.input} - self.constants
        self.tensors = set(self.producer) | self.inputs

    def span(self, outs: set[str], ins: set[str]) -> set[str]:
        """The source nodes on the paths from tensors `ins` to tensors `outs`: walking back
        from `outs` through producers, stopping at `ins`, graph inputs and constants. Without
        known inputs only the producers of `outs` are trusted (a walk back would not know
        where the fused kernel starts)."""
        if not ins:
            return {self.producer[o] for o in outs if o in self.producer}
        found: set[str] = set()
        stack = [o for o in outs if o not in ins]
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in ins:
                continue
            seen.add(t)
            name = self.producer.get(t)
            if name is None:
                continue
            found.add(name)
            if len(found) > _MAX_SPAN:
                return {self.producer[o] for o in outs if o in self.producer}
            stack.extend(i for i in self.nodes[name].input if i and i not in self.constants)
        return found


def map_nodes(source: onnx.GraphProto, optimized: onnx.GraphProto) -> NodeMap:
    """Trace every node of ORT's `optimized` graph back to the `source` nodes it computes.

    Both graphs need named nodes (`qviz.core.model.onnx_graph.unique_node_names` for the
    source; ORT names every node it writes). `optimized` is in ORT's execution order, so a
    node's inputs are traced before the node.
    """
    src = _Source(source)
    # Optimized tensor -> the source tensor it holds (its values, maybe in another layout
    # or type).
    meaning: dict[str, str] = {t: t for t in src.tensors}
    covers: dict[str, tuple[str, ...]] = {}
    by_name: dict[str, str] = {}
    for node in optimized.node:
        base = strip_decorations(node.name)
        named: set[str] = set()
        if node.name in src.nodes:
            named.add(node.name)
        elif base in src.nodes:
            named.add(base)
        ins = {meaning[i] for i in node.input if i in meaning and i not in src.constants}
        outs = {o for o in node.output if o in src.tensors}
        if not outs and not named and base in src.tensors:
            outs = {base}  # "relu_nchwc": the layout kernel computing tensor "relu"
        if named:
            by_name[node.name] = next(iter(named))
        covered = named | (src.span(outs, ins) if outs else set())
        covers[node.name] = tuple(sorted(covered, key=_order(source)))
        # What this node's outputs mean downstream.
        data_outputs = [o for o in node.output if o]
        for o in data_outputs:
            if o in meaning:
                continue
            if len(outs) == 1 and len(data_outputs) == 1:
                meaning[o] = next(iter(outs))
            elif named and len(data_outputs) == 1:
                first = src.nodes[next(iter(named))].output
                if first and first[0]:
                    meaning[o] = first[0]
            elif not covered and len(ins) == 1 and len(data_outputs) == 1:
                meaning[o] = next(iter(ins))  # a layout change: the same values
    feeds, fed_by = _edges(optimized)
    return NodeMap(covers, feeds, fed_by, by_name)


def _order(source: onnx.GraphProto) -> Callable[[str], int]:
    index = {n.name: i for i, n in enumerate(source.node)}
    return lambda name: index.get(name, -1)


def _edges(graph: onnx.GraphProto) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    producer = {o: n.name for n in graph.node for o in n.output if o}
    feeds: dict[str, list[str]] = {}
    fed_by: dict[str, tuple[str, ...]] = {}
    for n in graph.node:
        sources = tuple(dict.fromkeys(producer[i] for i in n.input if i in producer))
        fed_by[n.name] = sources
        for p in sources:
            feeds.setdefault(p, []).append(n.name)
    return {k: tuple(v) for k, v in feeds.items()}, fed_by
