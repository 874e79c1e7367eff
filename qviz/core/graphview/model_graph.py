"""One model's graph as the graph view shows it: nodes, groups, layouts and search.

`ModelGraph` is built once per opened model. It hands out the drawing for any set of expanded
groups (laid out once, then kept in a `LayoutCache` by model and expanded groups), finds
nodes by name, op type, tensor or module path, and tells which drawn item stands for a node.
"""

from __future__ import annotations

from collections.abc import Iterable

from qviz.core.graphview.groups import (
    DEFAULT_BUDGET,
    GroupTree,
    VisibleGraph,
    default_expanded,
    group_tree,
    visible_graph,
)
from qviz.core.graphview.layout import GraphLayout, LayoutCache, layout_graph
from qviz.core.graphview.opgraph import OpGraph, OpNode, op_graph
from qviz.core.model.loading import LoadedModel

__all__ = ["ModelGraph", "node_matches"]


def node_matches(node: OpNode, query: str) -> bool:
    """Whether ``query`` (case-insensitive) is in the node's name, op type, module path,
    layer name or one of its tensors (inputs, outputs, weights)."""
    q = query.strip().lower()
    if not q:
        return False
    texts = (node.name, node.op_type, ".".join(node.path), node.module or "", node.layer or "",
             *node.inputs, *node.outputs, *node.weights)
    return any(q in t.lower() for t in texts)


class ModelGraph:
    """The graph view's data for one model (see the module docstring)."""

    def __init__(
        self, model: LoadedModel, cache: LayoutCache | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.model = model
        self.graph: OpGraph = op_graph(model)
        self.tree: GroupTree = group_tree(self.graph)
        self.cache = cache if cache is not None else LayoutCache()
        self.default_expanded = default_expanded(self.tree, budget)

    def visible(self, expanded: Iterable[str]) -> VisibleGraph:
        return visible_graph(self.graph, self.tree, expanded)

    def layout(self, expanded: Iterable[str]) -> GraphLayout:
        """The drawing with ``expanded`` groups open (from the cache when made before)."""
        shown = self.tree.effective(expanded)
        key = (self.model.sha256, shown)
        found = self.cache.get(key)
        if found is None:
            found = layout_graph(visible_graph(self.graph, self.tree, shown), self.tree)
            self.cache.put(key, found)
        return found

    def search(self, query: str) -> tuple[str, ...]:
        """Ids of the nodes matching ``query`` (see `node_matches`), in graph order."""
        return tuple(n.id for n in self.graph if node_matches(n, query))

    def representative(self, expanded: Iterable[str], node: str) -> str:
        """The drawn item standing for ``node``: itself, or the collapsed group holding it."""
        return self.tree.representative(self.tree.effective(expanded), node)

    def toggle(self, expanded: Iterable[str], group: str) -> frozenset[str]:
        """``expanded`` with ``group`` collapsed if it was shown open, else opened (with the
        groups holding it, so it is seen)."""
        shown = self.tree.effective(expanded)
        if group in shown:
            return frozenset(shown - {group})
        return self.tree.reveal(shown, group) | {group}

    def layer_node(self, layer: str) -> str | None:
        return self.graph.node_of_layer(layer)
