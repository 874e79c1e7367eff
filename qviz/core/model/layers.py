"""Quantizable-layer discovery: which nodes of a float ONNX graph qviz analyses, and how.

A *layer* is a node whose inputs a runtime would quantize: Conv, ConvTranspose, Gemm and MatMul
with a constant (initializer) weight, plus MatMul between two activations (attention scores,
attention x values), plus the Adds joining two branches where ORT keeps them integer
(QLinearAdd: residual CNNs, :mod:`qviz.core.model.joins`). For each one we record the weight's
output-channel axis (what per-channel scales run along) and its reduction axis (what per-group
blocks run along), the activations feeding it, its position in the graph and a human display name.

Display names: the PyTorch dynamo exporter (torch 2.13) records each node's module path in its
metadata, under ``pkg.torch.onnx.name_scopes`` (a Python list literal such as
``['', 'features', 'features.3', 'conv2d_1']``) and ``namespace``
(``": __main__.Net/features: ...Sequential/features.3: ...Conv2d/conv2d_1: aten.conv2d.default"``).
Its optimizer folds BatchNorm into the preceding Conv and the fused node inherits the
*BatchNorm's* scope, while the weight initializer keeps the Conv parameter's name
(``features.0.weight``). So the weight's parameter path is trusted first, then the node's
recorded scope, then the node name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import onnx

from qviz.core.model import onnx_graph
from qviz.core.model.joins import quantizable_joins

#: Op types that can be a quantizable layer.
LAYER_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

# "features.0.weight", "encoder.layers.3.self_attn.out_proj.weight": a module parameter path.
_PARAM_PATH = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w]+)*)\.weight$")
# Scopes the exporter invents that are not user modules.
_SYNTHETIC_SCOPES = frozenset({"", "_empty_nn_module_stack_from_metadata_hook"})


@dataclass(frozen=True)
class Layer:
    """One quantizable node of the graph.

    Axes are non-negative indices into the weight's shape. ``activations`` lists the
    activation tensors feeding the layer: one for a layer with a weight, two (A, B) for a
    MatMul between activations or an Add joining two branches (``op_type`` "Add").
    """

    name: str
    node_name: str
    op_type: str
    weight: str | None
    weight_shape: tuple[int, ...] | None
    channel_axis: int | None
    reduction_axis: int | None
    activations: tuple[str, ...]
    depth: int
    param_count: int


@dataclass(frozen=True)
class Discovery:
    """The result of :func:`find_layers`: the layers plus what was skipped and why."""

    layers: tuple[Layer, ...]
    notes: tuple[str, ...]


def find_layers(
    graph: onnx.GraphProto,
    initializer_shapes: Mapping[str, tuple[int, ...]],
    *,
    torch_names: bool = False,
) -> Discovery:
    """Find the quantizable layers of the top-level ``graph``.

    ``initializer_shapes`` maps every constant tensor (initializer) name to its shape; a
    Conv/Gemm/MatMul input found there is a weight, anything else is an activation.
    Nodes inside If/Loop/Scan bodies are not looked at (the loader says so in its notes).
    ``torch_names``: the graph comes from PyTorch, so a weight named ``<path>.weight`` names
    its module.
    """
    layers: list[Layer] = []
    notes: list[str] = []
    joins = quantizable_joins(graph, initializer_shapes, _layer_inputs(initializer_shapes))
    for depth, node in enumerate(graph.node):
        if depth in joins:
            found: tuple[str | None, int | None, int | None, tuple[str, ...]] | None = (
                _activation_product(node.input[0], node.input[1])
            )
        elif node.op_type not in LAYER_OP_TYPES or node.domain not in ("", "ai.onnx"):
            continue
        else:
            found = _describe(node, initializer_shapes)
        name = onnx_graph.node_name(node, depth)
        if found is None:
            notes.append(
                f"{node.op_type} node '{name}' is not analysed: its weight is computed in "
                "the graph, not stored as a constant"
            )
            continue
        weight, channel_axis, reduction_axis, activations = found
        shape = initializer_shapes[weight] if weight is not None else None
        layers.append(
            Layer(
                name=name,  # replaced by the display name below
                node_name=name,
                op_type=node.op_type,
                weight=weight,
                weight_shape=shape,
                channel_axis=channel_axis,
                reduction_axis=reduction_axis,
                activations=activations,
                depth=depth,
                param_count=_param_count(node, weight, initializer_shapes),
            )
        )
    names = _display_names([graph.node[layer.depth] for layer in layers], layers, torch_names)
    layers = [replace(layer, name=name) for layer, name in zip(layers, names, strict=True)]
    return Discovery(tuple(layers), tuple(notes))


def _describe(
    node: onnx.NodeProto, consts: Mapping[str, tuple[int, ...]]
) -> tuple[str | None, int | None, int | None, tuple[str, ...]] | None:
    """(weight, channel axis, reduction axis, activations) of a layer node, or None to skip."""
    inputs = list(node.input)
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        if len(inputs) < 2 or inputs[1] not in consts or inputs[0] in consts:
            return None
        # Conv weight [O, I/g, k...]: output channels on axis 0, summed over axis 1.
        # ConvTranspose weight [I, O/g, k...]: the other way round.
        channel, reduction = (0, 1) if op == "Conv" else (1, 0)
        return inputs[1], channel, reduction, (inputs[0],)
    if op == "Gemm":
        a, b = inputs[0], inputs[1]
        if a in consts and b in consts:
            return None  # constant folding material, not a layer
        if b in consts:
            # B is [K, N] (transB=0): N output channels on axis 1, K reduced on axis 0.
            trans_b = _int_attr(node, "transB", 0)
            channel, reduction = (0, 1) if trans_b else (1, 0)
            return b, channel, reduction, (a,)
        if a in consts:
            # Rare: the constant is A ([M, K], or [K, M] with transA=1); M rows are outputs.
            trans_a = _int_attr(node, "transA", 0)
            channel, reduction = (1, 0) if trans_a else (0, 1)
            return a, channel, reduction, (b,)
        return _activation_product(a, b)
    if op == "MatMul":
        a, b = inputs[0], inputs[1]
        if a in consts and b in consts:
            return None
        if b in consts:
            rank = len(consts[b])
            if rank == 1:  # x @ w with w [K]: a dot product, no output-channel axis
                return b, None, 0, (a,)
            # [..., K, N]: N output channels on the last axis, K reduced on the one before.
            return b, rank - 1, rank - 2, (a,)
        if a in consts:
            rank = len(consts[a])
            if rank == 1:
                return a, None, 0, (b,)
            # W @ x with W [..., M, K]: M outputs on axis -2, K reduced on the last axis.
            return a, rank - 2, rank - 1, (b,)
        return _activation_product(a, b)
    return None


def _layer_inputs(
    consts: Mapping[str, tuple[int, ...]],
) -> Callable[[onnx.NodeProto], tuple[str, ...] | None]:
    """The activations a (weighted or activation-product) layer node quantizes; None for a
    node that is no such layer."""

    def inputs(node: onnx.NodeProto) -> tuple[str, ...] | None:
        if node.op_type not in LAYER_OP_TYPES or node.domain not in ("", "ai.onnx"):
            return None
        found = _describe(node, consts)
        return None if found is None else found[3]

    return inputs


def _activation_product(a: str, b: str) -> tuple[None, None, None, tuple[str, ...]]:
    """A product of two activations: nothing constant to analyse, two inputs to quantize."""
    return None, None, None, (a, b)


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _param_count(
    node: onnx.NodeProto, weight: str | None, consts: Mapping[str, tuple[int, ...]]
) -> int:
    """Weight elements plus the bias (input 2 of Conv/ConvTranspose/Gemm) when it is constant."""
    if weight is None:
        return 0
    count = _numel(consts[weight])
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
        bias = node.input[2]
        if bias and bias in consts:
            count += _numel(consts[bias])
    return count


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def module_path(node: onnx.NodeProto) -> str | None:
    """The PyTorch module path the exporter recorded for ``node``, or None.

    Reads ``pkg.torch.onnx.name_scopes`` first (a list literal, last entry the op itself),
    then falls back to parsing ``namespace``. The root module's own scope is "", so ops in the
    top-level ``forward`` have no path.
    """
    props = {p.key: p.value for p in node.metadata_props}
    scopes: list[str] | None = None
    raw = props.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            scopes = value
    if scopes is None and props.get("namespace"):
        # ": __main__.Net/features: torch...Sequential/features.3: ...Conv2d/conv2d_1: aten..."
        scopes = [part.split(": ", 1)[0] for part in props["namespace"].split("/")]
    if not scopes or len(scopes) < 2:
        return None
    modules = [s for s in scopes[:-1] if s not in _SYNTHETIC_SCOPES]
    return modules[-1] if modules else None


def _op_local_name(node: onnx.NodeProto) -> str | None:
    """The exporter's name for the op inside its module ("matmul_1"), if recorded."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(value, list) and value and isinstance(value[-1], str):
                return value[-1] or None
    return None


def _base_name(node: onnx.NodeProto, layer: Layer, torch_names: bool) -> str:
    if torch_names and layer.weight is not None:
        match = _PARAM_PATH.match(layer.weight)
        if match:
            return match.group(1)
    path = module_path(node)
    if path:
        return path
    return layer.node_name


def _display_names(
    nodes: Sequence[onnx.NodeProto], layers: Sequence[Layer], torch_names: bool
) -> list[str]:
    """Unique display names, in layer order.

    Two layers can share a base name: a weight used twice (tied embeddings), or several
    matmuls inside one attention module. Those get the op's own name appended
    ("attn (matmul_1)"), then a counter if that still collides.
    """
    bases = [_base_name(n, layer, torch_names) for n, layer in zip(nodes, layers, strict=True)]
    counts: dict[str, int] = {}
    for b in bases:
        counts[b] = counts.get(b, 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for node, layer, base in zip(nodes, layers, bases, strict=True):
        name = base
        if counts[base] > 1:
            local = _op_local_name(node) or layer.node_name
            name = f"{base} ({local})" if local != base else base
        candidate, k = name, 2
        while candidate in used:
            candidate = f"{name} #{k}"
            k += 1
        used.add(candidate)
        names.append(candidate)
    return names
