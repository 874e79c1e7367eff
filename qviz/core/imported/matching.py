"""Match an imported model's pairs to the float model they were made from.

The quantized graph with its pairs removed (`stripping`) must be the float graph: the same
nodes with the same attributes, inputs and outputs, except the Relus ONNX Runtime folds into a
QuantizeLinear whose range starts at zero. Each pair then names a float tensor, and each
quantized weight's codes must stand for the float weight (same shape, closely aligned values).
Anything else is refused in one line naming the tensor or node: a pair on a tensor the float
model lacks, a node that is not there or differs, a weight that is not the float one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.imported.stripping import Stripped, dequantized_bias
from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.model.external_data import read_tensor
from qviz.core.model.onnx_graph import node_name
from qviz.core.quant.quantize import dequantize, quantize

__all__ = ["Match", "match_float"]

# Ops ONNX Runtime's quantizer removes after a quantized layer (QDQRemovableActivation).
_FOLDABLE = frozenset({"Relu", "Clip"})
# Below this cosine between the dequantized codes and the float weight, the weights are not
# the same (a rounding of int2 Gaussian weights still scores ~0.94; unrelated weights ~0).
_MIN_WEIGHT_COSINE = 0.9


@dataclass
class Match:
    """Pairs with their float tensors, float node name -> imported node name, notes."""

    pairs: list[ImportedPair]
    node_map: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _attrs(node: onnx.NodeProto) -> dict[str, str]:
    """The node's attributes, defaults filled in from its schema (a tool may write them out or
    leave them implicit)."""
    values = {a.name: repr(helper.get_attribute_value(a)) for a in node.attribute}
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain)
    except onnx.defs.SchemaError:
        return values
    for name, attr in schema.attributes.items():
        default = attr.default_value
        if name not in values and default.type != onnx.AttributeProto.UNDEFINED:
            values[name] = repr(helper.get_attribute_value(default))
    return values


def _pair_word(p: ImportedPair) -> str:
    return f"QuantizeLinear '{p.q_node}'" if p.q_node else f"DequantizeLinear '{p.dq_nodes[0]}'"


class _Float:
    """Lookups over the float graph."""

    def __init__(self, model: onnx.ModelProto, data_dir: Path | None) -> None:
        graph = model.graph
        self.data_dir = data_dir
        self.nodes = list(graph.node)
        self.names = [node_name(n, i) for i, n in enumerate(self.nodes)]
        self.by_name = dict(zip(self.names, self.nodes, strict=True))
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.inits]
        self.outputs = [o.name for o in graph.output]
        self.tensors = set(self.producer) | set(self.inputs) | set(self.inits)
        self.name_of = {id(n): name for n, name in zip(self.nodes, self.names, strict=True)}

    def value(self, name: str) -> np.ndarray:
        """A float initializer's values (memory-mapped when its data lies in a file)."""
        return read_tensor(self.inits[name], self.data_dir)

    def folded_after(self, tensor: str) -> onnx.NodeProto | None:
        """The Relu/Clip that alone reads `tensor`, if there is one."""
        readers = self.readers.get(tensor, [])
        if len(readers) == 1 and readers[0].op_type in _FOLDABLE:
            return readers[0]
        return None


def match_float(
    quantized: onnx.ModelProto,
    pairs: Sequence[ImportedPair],
    stripped: Stripped,
    float_model: onnx.ModelProto,
    data_dir: Path | None = None,
) -> Match:
    """Match `pairs` (read from `quantized`, stripped to `stripped`) to `float_model`
    (`data_dir`: the folder its external tensors lie in)."""
    f = _Float(float_model, data_dir)
    for i, p in enumerate(pairs):
        t = stripped.names[i]
        if p.kind is PairKind.ACTIVATION and t not in f.tensors:
            raise QvizError(
                f"the Q/DQ pair on '{t}' ({_pair_word(p)}) matches no tensor of the float "
                "model: the float model is not this model's source"
            )
    s_graph = stripped.model.graph
    s_constants = {t.name for t in s_graph.initializer}
    s_inputs = [i.name for i in s_graph.input if i.name not in s_constants]
    if sorted(s_inputs) != sorted(f.inputs):
        raise QvizError(f"the float model's inputs {f.inputs} differ from the quantized "
                        f"model's {s_inputs}: it is not this model's source")
    s_outputs = [o.name for o in s_graph.output]
    if s_outputs != f.outputs:
        raise QvizError(f"the float model's outputs {f.outputs} differ from the quantized "
                        f"model's {s_outputs}: it is not this model's source")

    s_inits = {t.name: t for t in s_graph.initializer}
    matched: dict[str, str] = {}   # float node name -> imported node name
    folded: dict[str, onnx.NodeProto] = {}  # float node name -> the folded Relu/Clip
    # A quantized tensor read where the float model reads the output of the Relu/Clip the
    # quantizer folded into its pair (QOperator models keep the layer's own output name).
    refold: dict[str, onnx.NodeProto] = {}
    float_names: dict[int, str] = {}  # weight/bias pair index -> float initializer
    for s in s_graph.node:
        fn = _counterpart(s, f, matched, folded)
        fname = f.name_of[id(fn)]
        matched[fname] = s.name
        _check_node(s, fn, fname, f, stripped, s_inits, float_names, folded, refold)
    for fn, fname in zip(f.nodes, f.names, strict=True):
        if fname not in matched and fname not in folded and fn.op_type not in ("Identity",):
            raise QvizError(f"node '{fname}' ({fn.op_type}) of the float model is not in the "
                            "quantized model: the float model is not its source")

    notes: list[str] = []
    out: list[ImportedPair] = []
    differing: list[str] = []
    folded_at = {n.output[0]: n for n in folded.values()}
    for i, p in enumerate(pairs):
        if p.kind is PairKind.ACTIVATION:
            t = stripped.names[i]
            op: onnx.NodeProto | None
            if t in refold:
                t, op = refold[t].output[0], refold[t]
            else:
                op = folded_at.get(t)
            out.append(replace(p, tensor=t, folded=op))
            continue
        name = float_names.get(i, "")
        if name:
            if _check_weight(p, name, f.value(name)):
                differing.append(name)
        out.append(replace(p, tensor=name))
    if differing:
        notes.append(
            f"{len(differing)} quantized weights hold codes other than the rounded float "
            f"weight (the tool chose its own, e.g. GPTQ/AWQ/QAT): {', '.join(differing[:3])}"
            + (" …" if len(differing) > 3 else "")
        )
    if folded:
        notes.append(f"{len(folded)} Relu/Clip nodes of the float model are folded into the "
                     "quantized model's Q/DQ pairs (their range starts where the op clips)")
    return Match(out, matched, notes)


def _counterpart(
    s: onnx.NodeProto, f: _Float, matched: Mapping[str, str], folded: Mapping[str, object]
) -> onnx.NodeProto:
    """The float node `s` (a node of the stripped graph) stands for."""
    fn = f.by_name.get(s.name)
    if fn is None or fn.op_type != s.op_type:
        fn = None
        for o in s.output:
            cand = f.producer.get(o)
            if cand is not None and cand.op_type == s.op_type:
                fn = cand
                break
            if cand is not None and cand.op_type in _FOLDABLE and cand.input:
                inner = f.producer.get(cand.input[0])
                if inner is not None and inner.op_type == s.op_type:
                    fn = inner
                    break
    if fn is None or f.name_of[id(fn)] in matched:
        raise QvizError(f"node '{s.name}' ({s.op_type}) of the quantized model is not in the "
                        "float model: the float model is not its source")
    return fn


def _check_node(
    s: onnx.NodeProto,
    fn: onnx.NodeProto,
    fname: str,
    f: _Float,
    stripped: Stripped,
    s_inits: Mapping[str, onnx.TensorProto],
    float_names: dict[int, str],
    folded: dict[str, onnx.NodeProto],
    refold: dict[str, onnx.NodeProto],
) -> None:
    where = f"node '{s.name}' ({s.op_type})"
    if _attrs(s) != _attrs(fn):
        diff = sorted(set(_attrs(s).items()) ^ set(_attrs(fn).items()))
        raise QvizError(f"{where} differs from the float model's '{fname}' (attribute "
                        f"'{diff[0][0]}'): the float model is not this model's source")
    s_in = [i for i in s.input]
    f_in = [i for i in fn.input]
    while s_in and not s_in[-1]:
        s_in.pop()
    while f_in and not f_in[-1]:
        f_in.pop()
    if len(s_in) != len(f_in):
        raise QvizError(f"{where} has {len(s_in)} inputs, the float model's {len(f_in)}")
    for j, (si, fi) in enumerate(zip(s_in, f_in, strict=True)):
        if si in stripped.weights:
            k = stripped.weights[si]
            if fi not in f.inits:
                raise QvizError(f"{where}: input {j} is a quantized weight, but the float "
                                f"model computes '{fi}' there")
            if float_names.setdefault(k, fi) != fi:
                raise QvizError(f"quantized weight '{si}' stands for two float weights, "
                                f"'{float_names[k]}' and '{fi}'")
        elif si == fi:
            continue
        elif (after := f.folded_after(si)) is not None and after.output[0] == fi:
            folded[f.name_of[id(after)]] = after
            refold[si] = after
        elif si in s_inits and fi in f.inits:
            a = numpy_helper.to_array(s_inits[si])
            b = f.value(fi)
            if a.shape != b.shape or not np.array_equal(a, b):
                raise QvizError(f"{where}: constant input {j} ('{si}') differs from the float "
                                f"model's ('{fi}')")
        else:
            raise QvizError(f"{where}: input {j} is '{si}' in the quantized model but '{fi}' "
                            "in the float model: the float model is not its source")
    for so, fo in zip(s.output, fn.output, strict=False):
        if so == fo:
            continue
        after = f.folded_after(fo)
        if after is not None and after.output and after.output[0] == so:
            folded[f.name_of[id(after)]] = after
            continue
        raise QvizError(f"{where}: output '{so}' is '{fo}' in the float model")


def _check_weight(p: ImportedPair, name: str, values: np.ndarray) -> bool:
    """QvizError when the pair's codes are not the float weight `name`'s; True when they are
    its, but not its rounding (the tool chose codes of its own)."""
    w = np.asarray(values, dtype=np.float32)
    qp = p.params.qparams
    if p.kind is PairKind.BIAS:
        held = dequantized_bias(p)
    else:
        assert p.fmt is not None and p.params.codes is not None
        held = dequantize(p.params.codes, qp, p.fmt)
    if held.shape != w.shape:
        raise QvizError(f"{p.kind.value} '{name}' has shape {list(w.shape)} in the float model "
                        f"and {list(held.shape)} in the quantized one")
    x = w.astype(np.float64).ravel()
    y = held.astype(np.float64).ravel()
    if p.kind is PairKind.BIAS:
        step = float(np.max(qp.scale))
        if np.linalg.norm(y - x) > 0.1 * np.linalg.norm(x) + step * np.sqrt(x.size):
            raise QvizError(f"bias '{name}' differs from the quantized model's: the float "
                            "model is not this model's source")
        return False
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    cosine = 1.0 if nx == 0 and ny == 0 else float(np.dot(x, y) / max(nx * ny, 1e-300))
    if cosine < _MIN_WEIGHT_COSINE:
        raise QvizError(f"weight '{name}' differs from the quantized model's (cosine "
                        f"{cosine:.3f}): the float model is not this model's source")
    assert p.fmt is not None and p.params.codes is not None
    return not np.array_equal(quantize(w, qp, p.fmt), p.params.codes)
