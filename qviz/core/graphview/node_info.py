"""What the graph view says about a node, and which tensor clicking it selects.

Tooltips are plain text built here from the graph, the measure's reading and the Q/DQ
marks, so the app only shows them. Clicking a layer's node selects its weight (its first
tensor, as the table lists them); clicking another node whose output is a quantizable
activation selects that activation; the reverse, `node_of_selection`, finds the node to
highlight for the document's selection.
"""

from __future__ import annotations

from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.graphview.groups import GroupTree
from qviz.core.graphview.marks import QuantMarks
from qviz.core.graphview.measures import NodeReadings, Reading
from qviz.core.graphview.opgraph import NodeKind, OpGraph
from qviz.core.model.loading import TensorKind

__all__ = ["item_tooltip", "key_for_node", "node_of_selection"]

# Tooltips list at most this many tensors per side.
MAX_LISTED = 6


def key_for_node(doc: Document, graph: OpGraph, node_id: str) -> TensorKey | None:
    """The tensor clicking ``node_id`` selects (None: nothing quantizable there)."""
    if node_id not in graph:
        return None
    node = graph.node(node_id)
    if node.layer is not None:
        keys = doc.index.keys_of_layer(node.layer)
        if keys:
            return keys[0]
        layer = next((la for la in doc.model.layers if la.name == node.layer), None) \
            if doc.model is not None else None
        for act in layer.activations if layer is not None else ():
            key = TensorKey(act, TensorKind.ACTIVATION)
            if doc.has(key):
                return key
    for out in node.outputs:
        key = TensorKey(out, TensorKind.ACTIVATION)
        if doc.has(key):
            return key
    return None


def node_of_selection(doc: Document, graph: OpGraph) -> str | None:
    """The node of the selected tensor's layer (the layer the table's row names)."""
    key = doc.selection
    if key is None or not doc.has(key):
        return None
    return graph.node_of_layer(doc.tensor(key).layer.name)


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def item_tooltip(
    graph: OpGraph, tree: GroupTree, item: str, reading: Reading | None,
    readings: NodeReadings, marks: QuantMarks,
) -> str:
    """Everything the view knows about a drawn node or collapsed group, as plain text."""
    label = readings.scale.title
    if item in tree.groups:
        grp = tree.groups[item]
        nodes = tree.nodes_in(item)
        n_q = sum(1 for n in nodes if n in marks.quantized)
        n_k = sum(1 for n in nodes if n in marks.kernels)
        lines = [f"{grp.dotted}  (group of {grp.n_ops} nodes)",
                 f"{n_q} quantized layers" + (f", {n_k} run as integer kernels" if n_k else "")]
        if reading is not None:
            lines.append(f"{label}: {reading.text}")
            lines += reading.lines
        lines.append("Double-click to expand")
        return "\n".join(lines)
    node = graph.node(item)
    if node.kind is not NodeKind.OP:
        return f"graph {node.kind.value}: {node.name}"
    lines = [f"{node.op_type}  {node.name}"]
    if node.layer is not None and node.layer != node.name:
        lines.append(f"layer {node.layer}")
    if node.module:
        lines.append(f"torch module {node.module}")
    if node.inputs:
        lines.append(f"inputs: {_listed(node.inputs)}")
    if node.weights:
        lines.append(f"weights: {_listed(node.weights)}")
    if node.outputs:
        lines.append(f"outputs: {_listed(node.outputs)}")
    if item in marks.quantized:
        fmt = marks.weight_formats.get(item)
        q_inputs = tuple(t for s, d, t in marks.qdq_edges if d == item)
        parts = []
        if fmt is not None:
            parts.append(f"weight {fmt}")
        if q_inputs:
            parts.append(f"Q/DQ on {_listed(q_inputs)}")
        lines.append("quantized: " + ("; ".join(parts) if parts else "yes"))
        kernel = marks.kernels.get(item)
        if kernel is not None:
            stale = "" if marks.kernels_current else " (for earlier settings)"
            lines.append(f"ONNX Runtime kernel: {kernel}{stale}")
    elif item in marks.kept_float:
        lines.append("kept float by the configuration")
    else:
        lines.append("float (qviz quantizes no tensor of this op)")
    if reading is not None:
        lines.append(f"{label}: {reading.text}")
        lines += reading.lines
        if readings.stale:
            lines.append("(measured for earlier settings)")
    return "\n".join(lines)
