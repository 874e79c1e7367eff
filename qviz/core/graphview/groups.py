"""Grouping the graph by module path, and what is visible with some groups collapsed.

Every module path prefix shared by at least two nodes is a group (``model`` → ``model.layers``
→ ``model.layers.3`` → ``model.layers.3.self_attn``). A prefix with a single sub-prefix and no
node of its own adds nothing, so it is merged into its child (``model.layers`` is one group
when ``model`` holds nothing else); a prefix holding one node is not a group (the node sits in
the parent). Graph inputs and outputs sit at the top.

A level holding more than `MAX_CHILDREN` items (a graph whose nodes carry no module path, say)
is split into runs of `CHUNK` items in graph order.

A *collapsed* group is drawn as one node standing for everything inside it; an *expanded*
group shows its children. `visible_graph` gives the items and the edges between them for a set
of expanded groups; `default_expanded` picks the deepest uniform depth that keeps the drawing
under a node budget, so a 1,500-node decoder opens as its blocks, a 12-node CNN whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from qviz.core.graphview.opgraph import NodeKind, OpEdge, OpGraph, OpNode

__all__ = [
    "DEFAULT_BUDGET",
    "Group",
    "GroupTree",
    "VisibleEdge",
    "VisibleGraph",
    "VisibleItem",
    "default_expanded",
    "group_tree",
    "short_name",
    "visible_graph",
]

#: The default drawing shows at most this many items (nodes and collapsed groups)...
DEFAULT_BUDGET = 150
#: ...unless that leaves fewer than SPARSE items (a 300-block stack would be one node "layers"):
#: then one level deeper, up to HARD_BUDGET items.
SPARSE = 12
HARD_BUDGET = 600
#: A level with more items than this is split into runs of CHUNK items in graph order.
MAX_CHILDREN = 120
CHUNK = 50


@dataclass(frozen=True)
class Group:
    """A module path prefix: ``children`` are group and node ids, in graph order."""

    id: str
    path: tuple[str, ...]
    label: str
    parent: str | None
    children: tuple[str, ...]
    n_ops: int
    depth: int
    first_index: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, eq=False)
class GroupTree:
    """The groups of one graph: ``top`` lists the items at the top level, in graph order."""

    groups: Mapping[str, Group]
    top: tuple[str, ...]
    _parent: Mapping[str, str] = field(repr=False)
    _nodes: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nodes: dict[str, tuple[str, ...]] = {}
        # Deepest first, so each group's node list is built from its children's.
        for g in sorted(self.groups.values(), key=lambda g: -g.depth):
            out: list[str] = []
            for c in g.children:
                out.extend(nodes[c] if c in self.groups else (c,))
            nodes[g.id] = tuple(out)
        object.__setattr__(self, "_nodes", MappingProxyType(nodes))

    def parent(self, item: str) -> str | None:
        """The group directly holding a node or group (None at the top)."""
        return self._parent.get(item)

    def ancestors(self, item: str) -> tuple[str, ...]:
        """The groups holding ``item``, innermost first."""
        out = []
        g = self._parent.get(item)
        while g is not None:
            out.append(g)
            g = self._parent.get(g)
        return tuple(out)

    def nodes_in(self, group: str) -> tuple[str, ...]:
        """Every node inside ``group``, at any depth, in graph order."""
        return self._nodes[group]

    def children(self, group: str | None) -> tuple[str, ...]:
        return self.top if group is None else self.groups[group].children

    @property
    def max_depth(self) -> int:
        return max((g.depth for g in self.groups.values()), default=-1)

    def effective(self, expanded: Iterable[str]) -> frozenset[str]:
        """The expanded groups that are shown (those whose every ancestor is expanded too):
        two sets with the same effective part draw the same picture."""
        wanted = {g for g in expanded if g in self.groups}
        return frozenset(g for g in wanted if all(a in wanted for a in self.ancestors(g)))

    def representative(self, expanded: frozenset[str], item: str) -> str:
        """The visible item that stands for ``item``: its outermost collapsed group, or
        itself when every group holding it is expanded."""
        rep = item
        for g in self.ancestors(item):  # innermost first: the last collapsed one wins
            if g not in expanded:
                rep = g
        return rep

    def reveal(self, expanded: Iterable[str], item: str) -> frozenset[str]:
        """``expanded`` plus every group holding ``item``, so that it is drawn."""
        return frozenset(expanded) | frozenset(self.ancestors(item))


@dataclass(frozen=True)
class VisibleItem:
    """A node or a collapsed group as drawn: a title (op type or group label) and a subtitle
    (a short node name, or how many nodes the group holds)."""

    id: str
    is_group: bool
    title: str
    subtitle: str
    first_index: int
    is_layer: bool = False  # a layer qviz quantizes: its box has room for two badges


@dataclass(frozen=True)
class VisibleEdge:
    """An edge between two visible items, standing for every graph edge between them."""

    src: str
    dst: str
    edges: tuple[OpEdge, ...]


@dataclass(frozen=True)
class VisibleGraph:
    items: tuple[VisibleItem, ...]
    edges: tuple[VisibleEdge, ...]
    expanded: frozenset[str]


def _order_key(node: OpNode) -> float:
    # Inputs first, outputs last, nodes in graph order between.
    if node.kind is NodeKind.INPUT:
        return -1.0
    if node.kind is NodeKind.OUTPUT:
        return float("inf")
    return float(node.index)


def group_tree(graph: OpGraph) -> GroupTree:
    """The groups of ``graph`` by its nodes' module paths (see the module docstring)."""
    # A trie of path segments; each trie node lists the graph nodes whose path ends there.
    trie: dict[tuple[str, ...], list[str]] = {(): []}
    kids: dict[tuple[str, ...], list[str]] = {(): []}
    count: dict[tuple[str, ...], int] = {(): 0}
    for node in graph:
        path = node.path if node.kind is NodeKind.OP else ()
        for i in range(len(path) + 1):
            prefix = path[:i]
            if prefix not in trie:
                trie[prefix], kids[prefix], count[prefix] = [], [], 0
                kids[path[: i - 1]].append(path[i - 1])
            count[prefix] += 1
        trie[path].append(node.id)
    order = {n.id: _order_key(n) for n in graph}
    groups: dict[str, Group] = {}
    parent: dict[str, str] = {}

    def first(item: str) -> float:
        return groups[item].first_index if item in groups else order[item]

    def build(path: tuple[str, ...], label: tuple[str, ...], up: str | None,
              depth: int) -> list[str]:
        """The items the trie node at ``path`` contributes to its parent group ``up``."""
        subs = kids[path]
        if path and not trie[path] and len(subs) == 1:  # nothing of its own: merge down
            seg = subs[0]
            return build((*path, seg), (*label, seg), up, depth)
        if path and count[path] < 2:
            # One node under this prefix: no group; the node (and any subtree) goes up.
            items = list(trie[path])
            for seg in subs:
                items += build((*path, seg), (seg,), up, depth)
            return items
        gid = f"g:{'.'.join(path)}" if path else ""
        inner = gid or None
        items = list(trie[path])
        for seg in subs:
            items += build((*path, seg), (seg,), inner, depth + 1 if path else 0)
        items.sort(key=first)
        if not path:
            return items
        for it in items:
            parent[it] = gid
        text = ".".join(label)
        if text.isdigit() and len(path) > len(label):
            text = f"{path[-len(label) - 1]}.{text}"  # "layers.3", not "3"
        groups[gid] = Group(gid, path, text, up, tuple(items), count[path], depth,
                            int(min(first(i) for i in items)))
        return [gid]

    top = build((), (), None, 0)
    return _chunked(groups, top, order)


def _chunked(old: Mapping[str, Group], top: Sequence[str], order: Mapping[str, float]) -> GroupTree:
    """The tree with every level of more than `MAX_CHILDREN` items split into runs of `CHUNK`
    items in graph order ("ops 1–50", "ops 51–100"...), depths renumbered: a graph whose
    nodes carry no module path (or a module with hundreds of direct ops) must not draw
    thousands of items at once."""
    groups: dict[str, Group] = {}
    parent: dict[str, str] = {}

    def ops(item: str) -> list[float]:
        if item in old:
            return [i for c in old[item].children for i in ops(c)]
        return [order[item]]

    def first(item: str) -> float:
        return groups[item].first_index if item in groups else order[item]

    def place(children: Sequence[str], up: str | None, depth: int) -> tuple[str, ...]:
        if len(children) <= MAX_CHILDREN:
            for c in children:
                if c in old:
                    kids = place(old[c].children, c, depth + 1)
                    groups[c] = replace(old[c], parent=up, depth=depth, children=kids)
                    parent.update(dict.fromkeys(kids, c))
            return tuple(children)
        out = []
        base = old[up].path if up is not None else ()
        for j, k in enumerate(range(0, len(children), CHUNK), 1):
            run = children[k:k + CHUNK]
            cid = f"{up or 'g:'}#{j}"
            kids = place(run, cid, depth + 1)
            positions = [i for it in run for i in ops(it) if 0 <= i < math.inf]
            label = (f"ops {int(min(positions)) + 1}–{int(max(positions)) + 1}" if positions
                     else f"part {j}")
            groups[cid] = Group(cid, (*base, f"#{j}"), label, up, kids, len(positions), depth,
                                int(min(first(i) for i in kids)))
            parent.update(dict.fromkeys(kids, cid))
            out.append(cid)
        return tuple(out)

    new_top = place(tuple(top), None, 0)
    return GroupTree(MappingProxyType(groups), new_top, MappingProxyType(parent))


def default_expanded(tree: GroupTree, budget: int = DEFAULT_BUDGET) -> frozenset[str]:
    """Every group above the deepest uniform depth whose drawing stays within ``budget``
    items (at least the top level is drawn, however many items it has); a drawing of fewer
    than `SPARSE` items goes one level deeper if that stays within `HARD_BUDGET`."""
    best: frozenset[str] = frozenset()
    count = _visible_count(tree, best)
    for depth in range(tree.max_depth + 1):
        expanded = frozenset(g for g, grp in tree.groups.items() if grp.depth <= depth)
        n = _visible_count(tree, expanded)
        if n > budget:
            if count < SPARSE and n <= max(HARD_BUDGET, budget):
                best = expanded
            break
        best, count = expanded, n
    return best


def _visible_count(tree: GroupTree, expanded: frozenset[str]) -> int:
    n = 0
    stack = list(tree.top)
    while stack:
        item = stack.pop()
        if item in tree.groups and item in expanded:
            stack.extend(tree.groups[item].children)
        else:
            n += 1
    return n


def _tail(path: str) -> str:
    """The last module of a dotted path, with its container when it is a list index:
    ``model.layers.2.self_attn`` → ``self_attn``, ``features.3`` → ``features.3``,
    ``encoder.attn (matmul_1)`` → ``attn (matmul_1)``."""
    base, paren, rest = path.partition(" (")
    segs = base.split(".")
    tail = ".".join(segs[-2:]) if len(segs) > 1 and segs[-1].isdigit() else segs[-1]
    return tail + paren + rest


def short_name(node: OpNode) -> str:
    """What a node is called on its box (its group's frame says where it is): the last
    module of its qviz layer name or torch module path, else the last scope of an
    exporter-style name (``q_proj``), else its name."""
    if node.kind is not NodeKind.OP:
        return node.name
    if node.layer is not None and "/" not in node.layer:
        return _tail(node.layer)
    if node.module:
        return _tail(node.module)
    parts = [p for p in node.name.split("/") if p]
    if len(parts) >= 2:
        return _tail(parts[-2])
    return _tail(node.name) if node.path else node.name  # "model.embed_tokens"


def visible_graph(graph: OpGraph, tree: GroupTree, expanded: Iterable[str]) -> VisibleGraph:
    """What is drawn with ``expanded`` groups open (see the module docstring)."""
    shown = tree.effective(expanded)
    items: list[VisibleItem] = []
    stack = list(reversed(tree.top))
    while stack:
        item = stack.pop()
        if item in tree.groups:
            grp = tree.groups[item]
            if item in shown:
                stack.extend(reversed(grp.children))
                continue
            items.append(VisibleItem(item, True, grp.label, f"{grp.n_ops} nodes",
                                     grp.first_index))
        else:
            node = graph.node(item)
            index = (node.index if node.kind is NodeKind.OP
                     else -1 if node.kind is NodeKind.INPUT else len(graph))
            items.append(VisibleItem(item, False, node.op_type, short_name(node), index,
                                     node.layer is not None))
    rep = {n.id: tree.representative(shown, n.id) for n in graph}
    joined: dict[tuple[str, str], list[OpEdge]] = {}
    for e in graph.edges:
        a, b = rep[e.src], rep[e.dst]
        if a != b:
            joined.setdefault((a, b), []).append(e)
    edges = tuple(VisibleEdge(a, b, tuple(es)) for (a, b), es in joined.items())
    return VisibleGraph(tuple(items), edges, shown)
