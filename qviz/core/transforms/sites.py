"""Where a per-channel rescaling of an activation can live in the graph, and why not.

Dividing activation ``X``'s channel ``c`` by ``s_c`` keeps the model's function when every
layer reading ``X`` multiplies its weight's input channel ``c`` by ``s_c`` (the *consumers*)
and the division itself happens somewhere:

* **folded** into what produces ``X`` — a LayerNormalization (scale and bias divided), a Mul
  by a constant (an RMSNorm's weight), or a Conv/ConvTranspose/Gemm/MatMul layer (output
  channels and bias divided), reached through ops that commute with a positive per-channel
  scale: Relu, LeakyRelu, MaxPool, Add of a constant (a bias, divided too), a product of two
  activations (the scale moves into one factor, e.g. SwiGLU's up projection), and ReLU6
  (rewritten as Relu then Min with a per-channel ceiling ``6 / s_c``, the same function);
* or an explicit ``Mul`` by ``1 / s`` in front of the consumers, when the producer cannot take
  it (attention outputs, residual sums) or something else also reads ``X``.

:func:`find_site` answers for one activation with a :class:`ScalingSite` or a one-line reason;
nothing here changes a graph (see :mod:`qviz.core.transforms.rewrite`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np
import onnx

from qviz.core.model.activation_axes import known_shapes
from qviz.core.model.external_data import read_tensor
from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel

__all__ = ["Consumer", "FoldKind", "FoldStep", "GraphIndex", "ScalingSite", "find_site"]

# Ops through which a positive per-channel scale passes unchanged: f(x / s) = f(x) / s.
_HOMOGENEOUS = frozenset({"Relu", "MaxPool", "Identity"})


class FoldKind(Enum):
    """One edit of a fold: which constant takes the division."""

    NORM = "LayerNormalization"  # scale and bias / s
    MUL_CONST = "Mul"  # the constant factor / s
    ADD_CONST = "Add"  # the constant term / s
    RELU6 = "ReLU6"  # Clip(0, m) -> Relu, Min(m / s)
    LAYER = "layer"  # output channels of a weight (and its bias) / s


@dataclass(frozen=True)
class FoldStep:
    kind: FoldKind
    node: str
    const_input: int | None = None  # the constant operand (MUL/ADD const, LN scale)
    weight_axis: int | None = None  # LAYER: the weight's output-channel axis


@dataclass(frozen=True)
class Consumer:
    """A layer reading the rescaled activation: its weight's input channels take ``s``."""

    layer: Layer
    weight: str
    axis: int  # the weight's input-channel axis


@dataclass(frozen=True)
class ScalingSite:
    """How a rescaling of ``activation`` is expressed: folded (``folds``) or an explicit Mul."""

    activation: str
    axis: int  # the activation's channel axis (non-negative)
    rank: int | None
    channels: int
    consumers: tuple[Consumer, ...]
    folds: tuple[FoldStep, ...]  # empty: an explicit Mul
    chain: tuple[str, ...]  # op types between the producer and the activation
    mul_reason: str = ""  # why a Mul (when not folded)
    producer: Layer | None = None  # the layer the fold ends in, if it ends in one

    @property
    def folded(self) -> bool:
        return bool(self.folds)

    @property
    def expression(self) -> str:
        """How the scale is carried, for people: "folded into LayerNormalization 'n'"."""
        if not self.folds:
            return f"explicit Mul ({self.mul_reason})"
        end = self.folds[-1]
        what = end.kind.value if end.kind is not FoldKind.LAYER else "layer"
        via = f" through {', '.join(self.chain)}" if self.chain else ""
        return f"folded into {what} '{end.node}'{via}"


class GraphIndex:
    """Producers, consumers and constants of one model's top-level graph."""

    def __init__(self, model: LoadedModel) -> None:
        graph = model.model.graph
        self.model = model
        self.nodes = {
            (n.name or f"{n.op_type}_{i}"): n for i, n in enumerate(graph.node)
        }
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes.values():
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.shapes = known_shapes(graph)
        self.layers_by_node = {layer.node_name: layer for layer in model.layers}
        self._names = {id(n): name for name, n in self.nodes.items()}

    def name_of(self, node: onnx.NodeProto) -> str:
        return self._names[id(node)]

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else read_tensor(t, self.model.data_dir)

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _consumer(index: GraphIndex, node: onnx.NodeProto, tensor: str) -> Consumer | str:
    """The compensating layer `node` is for `tensor`, or why it cannot compensate."""
    name = index.name_of(node)
    layer = index.layers_by_node.get(name)
    if layer is None or layer.weight is None or layer.weight_shape is None:
        return f"{node.op_type} '{name}' has no constant weight"
    if len(index.readers(layer.weight)) != 1:
        return f"the weight of '{layer.name}' is shared with other nodes"
    op, rank = node.op_type, len(layer.weight_shape)
    if op == "MatMul" and node.input[0] == tensor and node.input[1] == layer.weight and rank == 2:
        return Consumer(layer, layer.weight, 0)
    if op == "Gemm" and node.input[0] == tensor and node.input[1] == layer.weight:
        if _attr(node, "transA", 0):
            return f"Gemm '{name}' reads it transposed"
        return Consumer(layer, layer.weight, 1 if _attr(node, "transB", 0) else 0)
    if op in ("Conv", "ConvTranspose") and node.input[0] == tensor:
        if _attr(node, "group", 1) != 1:
            return f"{op} '{name}' is a grouped convolution"
        return Consumer(layer, layer.weight, 1 if op == "Conv" else 0)
    return f"{op} '{name}' does not read it as the input of a constant weight"


def _per_channel_const(index: GraphIndex, name: str, axis: int, rank: int | None,
                       channels: int) -> bool:
    """A constant that broadcasts along the activation's channel axis only (or a scalar)."""
    value = index.const(name)
    if value is None:
        return False
    if value.size == 1:
        return rank is not None
    if rank is None or value.ndim > rank:
        return False
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    return all(d == (channels if i == axis else 1) for i, d in enumerate(shape))


def _fold_chain(
    index: GraphIndex, tensor: str, axis: int, rank: int | None, channels: int, depth: int = 0
) -> tuple[list[FoldStep], list[str], Layer | None] | str:
    """The edits that divide `tensor` by s at its producer, or why they cannot."""
    if depth > 32:
        return "the chain of ops producing it is too long"
    node = index.producer.get(tensor)
    if node is None:
        return "it is a model input"
    name = index.name_of(node)
    op = node.op_type
    layer = index.layers_by_node.get(name)
    if layer is not None and layer.weight is not None and layer.channel_axis is not None:
        if len(index.readers(layer.weight)) != 1:
            return f"the weight of '{layer.name}' is shared with other nodes"
        if node.output[0] != tensor or layer.weight_shape is None:
            return f"{op} '{name}' produces it in an unexpected position"
        if layer.weight_shape[layer.channel_axis] != channels:
            return f"'{layer.name}' has {layer.weight_shape[layer.channel_axis]} outputs"
        if op == "Gemm" and len(node.input) > 2 and node.input[2]:
            bias = index.const(node.input[2])
            if bias is None or bias.size not in (1, channels) or bias.ndim > 1:
                return f"Gemm '{name}' adds a bias that is not one value per output"
        return [FoldStep(FoldKind.LAYER, name, weight_axis=layer.channel_axis)], [], layer
    if op == "LayerNormalization":
        ln_axis = int(_attr(node, "axis", -1))
        if rank is None or ln_axis % rank != rank - 1 or axis != rank - 1:
            return f"LayerNormalization '{name}' normalizes another axis than the channels"
        if any(_per_channel_const(index, i, axis, rank, channels) is False
               for i in node.input[1:3] if i):
            return f"LayerNormalization '{name}' has a computed scale or bias"
        return [FoldStep(FoldKind.NORM, name, const_input=1)], [], None
    if op in ("Mul", "Add"):
        consts = [i for i, x in enumerate(node.input[:2]) if x in index.inits]
        if len(consts) == 1:
            k = consts[0]
            if not _per_channel_const(index, node.input[k], axis, rank, channels):
                return f"{op} '{name}' uses a constant that is not one value per channel"
            if op == "Mul":
                return [FoldStep(FoldKind.MUL_CONST, name, const_input=k)], [], None
            return _continue(index, node, 1 - k, axis, rank, channels, depth,
                             FoldStep(FoldKind.ADD_CONST, name, const_input=k), "Add")
        if op == "Add" or consts:
            return f"{op} '{name}' adds two activations (a residual sum)"
        # A product of two activations: the scale can go into either factor.
        reasons = []
        for k in (1, 0):
            found = _continue(index, node, k, axis, rank, channels, depth, None, "Mul")
            if not isinstance(found, str):
                return found
            reasons.append(found)
        return reasons[0]
    if op in _HOMOGENEOUS or (op == "LeakyRelu" and float(_attr(node, "alpha", 0.01)) >= 0):
        return _continue(index, node, 0, axis, rank, channels, depth, None, op)
    if op == "Clip":
        lo = index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if lo is None or lo.size != 1 or float(lo) != 0.0:
            return f"Clip '{name}' does not start at 0"
        if hi is None:
            return _continue(index, node, 0, axis, rank, channels, depth, None, "Relu")
        if hi.size != 1 or rank is None:
            return f"Clip '{name}' has a ceiling that is not one number"
        return _continue(index, node, 0, axis, rank, channels, depth,
                         FoldStep(FoldKind.RELU6, name), "ReLU6")
    return f"{op} '{name}' produces it"


def _continue(
    index: GraphIndex, node: onnx.NodeProto, k: int, axis: int, rank: int | None,
    channels: int, depth: int, step: FoldStep | None, label: str,
) -> tuple[list[FoldStep], list[str], Layer | None] | str:
    """Go on through operand `k` of `node`, which must feed nothing else."""
    tensor = node.input[k]
    if tensor in index.inits or not tensor:
        return f"{node.op_type} '{index.name_of(node)}' has a constant there"
    readers = index.readers(tensor)
    if len(readers) != 1 or tensor in index.graph_outputs:
        return f"'{tensor}' (before {label}) is also read elsewhere"
    found = _fold_chain(index, tensor, axis, rank, channels, depth + 1)
    if isinstance(found, str):
        return found
    steps, chain, layer = found
    return ([*steps, step] if step else steps), [*chain, label], layer


def find_site(index: GraphIndex, activation: str, axis: int | None,
              channels: int) -> ScalingSite | str:
    """Where rescaling `activation` lives (see the module docstring), or why it cannot."""
    if axis is None:
        return "its channel axis is not known (per-channel statistics are missing)"
    if activation in index.graph_inputs:
        return "it is a model input, which a Mul in front would rename"
    if activation in index.graph_outputs:
        return "it is a model output, which must keep its values"
    shape = index.shapes.get(activation)
    rank = len(shape) if shape is not None else None
    consumers: list[Consumer] = []
    others: list[str] = []
    for node in index.readers(activation):
        found = _consumer(index, node, activation)
        if isinstance(found, str):
            others.append(found)
        else:
            consumers.append(found)
    if not consumers:
        return others[0] if others else "no layer reads it"
    expected = {1 if c.layer.op_type in ("Conv", "ConvTranspose") else -1 for c in consumers}
    if len(expected) != 1 or (rank is not None and next(iter(expected)) % rank != axis):
        return "the layers reading it contract different axes"
    base = ScalingSite(activation, axis, rank, channels, tuple(consumers), folds=(), chain=())
    if others:
        return replace(base, mul_reason=others[0])
    chain_found = _fold_chain(index, activation, axis, rank, channels)
    if isinstance(chain_found, str):
        if rank is None and axis != 0:
            return f"{chain_found}, and its rank is unknown for a Mul"
        return replace(base, mul_reason=chain_found)
    steps, chain, layer = chain_found
    return replace(base, folds=tuple(steps), chain=tuple(chain), producer=layer)


def consumer_rows(weight: np.ndarray, consumer: Consumer) -> np.ndarray:
    """The weight as (input channels, everything else): the rows SmoothQuant balances."""
    moved = np.moveaxis(weight, consumer.axis, 0)
    return moved.reshape(moved.shape[0], -1)


def output_rows(weight: np.ndarray, axis: int) -> np.ndarray:
    """A producer's weight as (output channels, everything else)."""
    moved = np.moveaxis(weight, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def weights_of(model: LoadedModel, names: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """The current value of weight `name`: rescaled already (`names`) or the model's."""
    return names[name] if name in names else model.weight(name)
