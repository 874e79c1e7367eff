"""Where a layer's bias lives in the graph, so bias correction knows what to replace.

Conv, ConvTranspose and Gemm carry it as input 2 (Gemm's scaled by ``beta``); a MatMul's bias
is the constant of the Add that alone reads its output (how exporters write ``nn.Linear``).
A layer without one gets a new input (Conv/Gemm) or a new Add after it (MatMul).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx

from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.transforms.sites import GraphIndex

__all__ = ["BiasKind", "BiasSite", "bias_site", "graph_index"]


class BiasKind(Enum):
    INPUT = "input"  # the layer's own bias input (Conv, ConvTranspose, Gemm)
    ADD = "add"  # the constant of the Add after a MatMul
    NEW_INPUT = "new-input"  # a Conv/Gemm without a bias: one is added
    NEW_ADD = "new-add"  # a MatMul without one: an Add is inserted after it


@dataclass(frozen=True)
class BiasSite:
    kind: BiasKind
    node: str  # the node whose input holds (or will hold) the bias
    input_index: int | None  # which input (INPUT, ADD)
    layer_node: str  # the layer's own node
    scale: float = 1.0  # Gemm's beta: the bias adds beta x C
    trailing: int = 0  # NEW_ADD: dims after the channel axis of the layer's output

    @property
    def description(self) -> str:
        return {
            BiasKind.INPUT: "its bias",
            BiasKind.ADD: f"the bias Add '{self.node}'",
            BiasKind.NEW_INPUT: "a new bias input",
            BiasKind.NEW_ADD: "a new Add after it",
        }[self.kind]


_LOCK = threading.Lock()
_INDEXES: OrderedDict[int, tuple[LoadedModel, GraphIndex]] = OrderedDict()


def graph_index(model: LoadedModel) -> GraphIndex:
    """The model's :class:`GraphIndex`, built once per model object."""
    with _LOCK:
        hit = _INDEXES.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
    index = GraphIndex(model)
    with _LOCK:
        _INDEXES[id(model)] = (model, index)
        while len(_INDEXES) > 4:
            _INDEXES.popitem(last=False)
    return index


def _beta(node: onnx.NodeProto) -> float:
    for a in node.attribute:
        if a.name == "beta":
            return float(a.f)
    return 1.0


def bias_site(model: LoadedModel, layer: Layer, outputs: int) -> tuple[BiasSite, np.ndarray]:
    """Where `layer`'s bias is (or goes) and its current value (zeros when it has none, or
    when it is computed: then a new Add after the layer carries the correction)."""
    index = graph_index(model)
    node = index.nodes[layer.node_name]
    op = node.op_type
    trailing = 0
    if op in ("Conv", "ConvTranspose") and layer.weight_shape is not None:
        trailing = len(layer.weight_shape) - 2  # NC... outputs: the bias broadcasts on axis 1
    if op in ("Conv", "ConvTranspose", "Gemm"):
        scale = _beta(node) if op == "Gemm" else 1.0
        if len(node.input) <= 2 or not node.input[2]:
            return (BiasSite(BiasKind.NEW_INPUT, layer.node_name, None, layer.node_name, scale),
                    np.zeros(outputs))
        value = index.const(node.input[2])
        if value is not None and value.size in (1, outputs) and value.ndim <= 1:
            full = np.broadcast_to(value.astype(np.float64).reshape(-1), (outputs,)).copy()
            return BiasSite(BiasKind.INPUT, layer.node_name, 2, layer.node_name, scale), full
        return (BiasSite(BiasKind.NEW_ADD, layer.node_name, None, layer.node_name,
                         trailing=trailing), np.zeros(outputs))
    readers = index.readers(node.output[0])
    if len(readers) == 1 and readers[0].op_type == "Add" \
            and node.output[0] not in index.graph_outputs:
        add = readers[0]
        k = 1 if add.input[0] == node.output[0] else 0
        value = index.const(add.input[k])
        if value is not None and value.size == outputs and value.shape[-1] == outputs:
            return (BiasSite(BiasKind.ADD, index.name_of(add), k, layer.node_name),
                    value.astype(np.float64).reshape(-1))
    return BiasSite(BiasKind.NEW_ADD, layer.node_name, None, layer.node_name), np.zeros(outputs)
