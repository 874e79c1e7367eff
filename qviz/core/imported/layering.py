"""Layers for the imported pairs that qviz's own layer discovery does not cover.

qviz quantizes the inputs of Conv, Gemm and MatMul; other tools quantize more — the inputs of
an Add (an attention mask addition), a Softmax, a Reshape, a model output. Each float node
that reads an imported pair becomes a layer whose activations are its quantized inputs (and
whose weight is its quantized constant, if any), so every view, measurement and export
covers every imported pair. A pair that quantizes a model output no node reads gets a layer
of its own, op type ``Output``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.model.layers import Layer, module_path
from qviz.core.model.onnx_graph import node_name

__all__ = ["OUTPUT_OP", "extra_layers"]

#: The op type of the layer standing for a quantized model output.
OUTPUT_OP = "Output"


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def extra_layers(
    float_model: onnx.ModelProto,
    layers: Sequence[Layer],
    pairs: Sequence[ImportedPair],
    quantized: onnx.ModelProto,
    node_map: Mapping[str, str],
) -> list[Layer]:
    """The layers to add to `layers` (qviz's own) so that every mapped pair belongs to one."""
    graph = float_model.graph
    names = [node_name(n, i) for i, n in enumerate(graph.node)]
    index = {name: i for i, name in enumerate(names)}
    to_float = {q: f for f, q in node_map.items()}
    readers: dict[str, list[str]] = {}
    for n in quantized.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.name)
    covered_acts = {(layer.node_name, a) for layer in layers for a in layer.activations}
    covered_weights = {(layer.node_name, layer.weight) for layer in layers if layer.weight}
    # float node -> its quantized activation inputs / weight pairs not covered yet
    acts: dict[str, list[str]] = {}
    weights: dict[str, list[ImportedPair]] = {}
    for p in pairs:
        if not p.tensor or p.kind is PairKind.BIAS:
            continue
        for q_name in {r for o in p.outputs for r in readers.get(o, [])}:
            f_name = to_float.get(q_name)
            if f_name is None:
                continue
            if p.kind is PairKind.ACTIVATION and (f_name, p.tensor) not in covered_acts:
                acts.setdefault(f_name, []).append(p.tensor)
            elif p.kind is PairKind.WEIGHT and (f_name, p.tensor) not in covered_weights:
                weights.setdefault(f_name, []).append(p)
    taken = {layer.name for layer in layers}
    own = {layer.node_name for layer in layers}
    out: list[Layer] = []
    for f_name in sorted(set(acts) | set(weights), key=lambda n: index[n]):
        if f_name in own:
            continue  # a layer of qviz's own reads it elsewhere: covered by the tensor's owner
        depth = index[f_name]
        node = graph.node[depth]
        order = {t: i for i, t in enumerate(node.input)}
        activations = tuple(sorted(set(acts.get(f_name, [])), key=lambda t: order.get(t, 0)))
        w = weights.get(f_name, [])
        weight = w[0] if w else None
        shape = None
        channel = reduction = None
        if weight is not None:
            assert weight.params.codes is not None
            shape = tuple(int(d) for d in weight.params.codes.shape)
            qp = weight.params.qparams
            if qp.block_size is not None:
                reduction = qp.axis
            elif qp.axis is not None:
                channel = qp.axis
        out.append(Layer(
            name=_unique(module_path(node) or f_name, node.op_type, taken),
            node_name=f_name,
            op_type=node.op_type,
            weight=None if weight is None else weight.tensor,
            weight_shape=shape,
            channel_axis=channel,
            reduction_axis=reduction,
            activations=activations,
            depth=depth,
            param_count=0 if shape is None else _numel(shape),
        ))
    read = {a for layer in [*layers, *out] for a in layer.activations}
    end = len(graph.node)
    for p in pairs:
        if p.kind is not PairKind.ACTIVATION or not p.to_graph_output:
            continue
        if p.tensor and p.tensor not in read:
            out.append(Layer(
                name=_unique(f"output {p.tensor}", OUTPUT_OP, taken),
                node_name="",
                op_type=OUTPUT_OP,
                weight=None,
                weight_shape=None,
                channel_axis=None,
                reduction_axis=None,
                activations=(p.tensor,),
                depth=end,
                param_count=0,
            ))
            end += 1
            read.add(p.tensor)
    return out


def _unique(base: str, op_type: str, taken: set[str]) -> str:
    name = base if base not in taken else f"{base} ({op_type})"
    candidate, k = name, 2
    while candidate in taken:
        candidate = f"{name} #{k}"
        k += 1
    taken.add(candidate)
    return candidate
