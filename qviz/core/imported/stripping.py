"""The float graph inside a quantized one: every Q/DQ pair removed.

`strip_pairs` removes each pair and says what float tensor it quantized: an activation keeps
the QuantizeLinear's input (or the model output's name, when the DequantizeLinear produced a
model output); a weight becomes a float initializer holding its dequantized codes (named as
the original when the tool left a ``<name>_quantized`` trace); an int32 bias becomes the
dequantized float bias. The result is what matching compares with a float model, and — with
the Relus restored that ONNX Runtime's quantizer folds into a QuantizeLinear whose range
starts at zero — the *derived* float model used when no float original is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.model.onnx_graph import FreshNames
from qviz.core.quant.formats import FormatKind
from qviz.core.quant.quantize import dequantize

__all__ = ["Stripped", "dequantized_bias", "restore_folded_relus", "strip_pairs"]

# Layers after which ONNX Runtime's quantizer drops a Relu, quantizing the layer's output to a
# range that starts at zero instead (QDQRemovableActivation).
_RELU_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class Stripped:
    """The graph without its pairs; ``names[i]`` is pair i's float tensor name in it."""

    model: onnx.ModelProto
    names: list[str]
    weights: dict[str, int] = field(default_factory=dict)  # initializer -> pair index
    notes: list[str] = field(default_factory=list)


def dequantized_bias(pair: ImportedPair) -> np.ndarray:
    """An int32 bias as float32: ``(q - zero_point) * scale``, as DequantizeLinear does."""
    qp = pair.params.qparams
    codes = np.asarray(pair.params.codes, dtype=np.int64)
    zp = np.asarray(qp.zero_point, dtype=np.int64)
    scale = np.asarray(qp.scale, dtype=np.float32)
    if qp.axis is not None and codes.ndim > 1:
        shape = [codes.shape[qp.axis] if d == qp.axis else 1 for d in range(codes.ndim)]
        zp, scale = zp.reshape(shape), scale.reshape(shape)
    return (codes - zp).astype(np.float32) * scale


def _weight_values(pair: ImportedPair) -> np.ndarray:
    if pair.kind is PairKind.BIAS:
        return dequantized_bias(pair)
    assert pair.fmt is not None and pair.params.codes is not None
    return dequantize(pair.params.codes, pair.params.qparams, pair.fmt)


def strip_pairs(model: onnx.ModelProto, pairs: Sequence[ImportedPair]) -> Stripped:
    """A copy of `model` without the pairs (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    # Shapes are inferred again on loading; stale entries would also block the weights' names.
    del graph.value_info[:]
    names = FreshNames(graph)
    graph_outputs = {o.name for o in graph.output}
    removed = {n for p in pairs for n in (*p.dq_nodes, *((p.q_node,) if p.q_node else ()))}
    alias: dict[str, str] = {}     # a DequantizeLinear output -> the float tensor it stands for
    renamed: dict[str, str] = {}   # a tensor renamed to the model output a pair produced
    new_inits: list[onnx.TensorProto] = []
    result = Stripped(out, [""] * len(pairs))
    for i, p in enumerate(pairs):
        if p.kind is PairKind.ACTIVATION:
            kept = [o for o in p.outputs if o in graph_outputs]
            if kept:
                renamed[p.source] = kept[0]
                for o in p.outputs:
                    if o != kept[0]:
                        alias[o] = kept[0]
            else:
                for o in p.outputs:
                    alias[o] = p.source
        elif p.kind is PairKind.BIAS or p.stored:
            if p.kind is PairKind.BIAS:
                name = p.outputs[0]
            else:
                base = p.source.removesuffix("_quantized")
                name = names.fresh(base if base != p.source else p.outputs[0])
                alias[p.outputs[0]] = name
            new_inits.append(numpy_helper.from_array(_weight_values(p), name))
            result.weights[name] = i
        else:  # a float constant quantized at run time: it stays, its DQ output stands for it
            for o in p.outputs:
                alias[o] = p.source
            result.weights[p.source] = i

    def resolve(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return renamed.get(name, name)

    for i, p in enumerate(pairs):
        if p.kind is PairKind.ACTIVATION:
            kept = [o for o in p.outputs if o in graph_outputs]
            result.names[i] = kept[0] if kept else resolve(p.source)
        elif p.kind is PairKind.BIAS:
            result.names[i] = p.outputs[0]
        else:
            result.names[i] = resolve(p.outputs[0])

    keep = [n for n in graph.node if n.name not in removed]
    dropped_inputs = {i for n in graph.node if n.name in removed for i in n.input}
    for n in keep:
        for j, name in enumerate(n.input):
            if name:
                n.input[j] = resolve(name)
        for j, name in enumerate(n.output):
            if name in renamed:
                n.output[j] = renamed[name]
    del graph.node[:]
    graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input} | graph_outputs
    inits = [t for t in graph.initializer if t.name in read or t.name not in dropped_inputs]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    graph.initializer.extend(new_inits)
    return result


def restore_folded_relus(stripped: Stripped, pairs: Sequence[ImportedPair]) -> int:
    """Put back the Relus ONNX Runtime's quantizer folds into a QuantizeLinear: an activation
    produced by Conv/Gemm/MatMul whose integer range starts at zero (the type's minimum as
    zero point). Quantized, the Relu changes nothing; in the float model it does. Returns
    how many were restored."""
    graph = stripped.model.graph
    names = FreshNames(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    # A quantization placed before a Relu that is still there (qviz's placement moves it
    # back through Relus) folded nothing.
    into_relu = {i for n in graph.node if n.op_type == "Relu" for i in n.input}
    after: dict[str, list[onnx.NodeProto]] = {}
    restored: set[str] = set()
    count = 0
    for i, p in enumerate(pairs):
        tensor = stripped.names[i]
        node = producer.get(tensor)
        if p.kind is not PairKind.ACTIVATION or node is None or node.op_type not in _RELU_PRODUCERS:
            continue
        if tensor in into_relu or tensor in restored:
            continue
        if p.fmt is None or p.fmt.kind is not FormatKind.INT or not _zero_is_type_minimum(p):
            continue
        before = names.fresh(f"{tensor}_before_relu")
        node.output[list(node.output).index(tensor)] = before
        relu = helper.make_node("Relu", [before], [tensor], name=names.fresh(f"{tensor}_Relu"))
        after.setdefault(node.name, []).append(relu)
        restored.add(tensor)
        count += 1
    if count:
        ordered: list[onnx.NodeProto] = []
        for n in graph.node:
            ordered.append(n)
            ordered.extend(after.get(n.name, []))
        del graph.node[:]
        graph.node.extend(ordered)
    return count


def _zero_is_type_minimum(p: ImportedPair) -> bool:
    assert p.fmt is not None
    low, _ = p.fmt.saturation_range
    return bool(np.all(np.asarray(p.params.qparams.zero_point, dtype=np.float64) == low))
