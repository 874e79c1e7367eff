"""The Q/DQ graph of a configuration of an imported model: the imported graph, repaired.

What is measured is what ships, so an imported model's quantized graph is always the imported
graph itself, edited only where the configuration differs from it:

* a pair whose tensor keeps its imported setting is left exactly as it is (its nodes and
  initializers byte for byte), so the unchanged configuration *is* the imported file, and
  ONNX Runtime runs it exactly as it runs that file;
* a pair whose tensor is kept float is removed: its readers read the float tensor (a weight,
  the float original's values);
* a pair whose tensor gets other settings gets new parameters (a weight is quantized again
  from the float original) in new initializers, as qviz's own builder would write them;
* a tensor the import left float and the configuration quantizes gets a new pair;
* an int32 bias follows its layer: kept while the layer's input and weight pairs are, stored
  again at the new scale ``s_input · s_weight`` when both stay 8-bit integers, float otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import onnx

from qviz.core.calibration.analysis import TensorKey, quant_tensors
from qviz.core.calibration.methods import Method
from qviz.core.errors import QvizError
from qviz.core.graph.containers import (
    INT8_ONNX,
    container_dtype,
    container_format,
    in_container,
    onnx_array,
    required_opset,
)
from qviz.core.graph.qdq_types import QdqLayer, QdqMode, QdqModel, QdqTensor
from qviz.core.imported.configs import granularity_of
from qviz.core.imported.editing import GraphEditor
from qviz.core.imported.layering import OUTPUT_OP
from qviz.core.imported.qoperator import MOVING_OPS
from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.model.onnx_graph import default_opset, node_name, upgrade_opset
from qviz.core.quant.formats import FormatKind
from qviz.core.quant.imported_params import qparams_digest
from qviz.core.quant.quantize import dequantize, fake_quantize, quantize

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult

__all__ = ["as_imported", "repair_qdq"]


class _Fate(Enum):
    KEEP = "kept"
    CHANGE = "changed"
    REMOVE = "removed"


def _kind(p: ImportedPair) -> TensorKind:
    return TensorKind.WEIGHT if p.kind is PairKind.WEIGHT else TensorKind.ACTIVATION


def _fate(model: LoadedModel, p: ImportedPair, r: TensorResult | None) -> _Fate:
    if r is None:
        return _Fate.REMOVE
    spec = r.config.spec
    if r.config.fmt != p.fmt:
        return _Fate.CHANGE
    if spec.method is Method.IMPORTED and spec.imported == p.params:
        return _Fate.KEEP
    # Other settings that land on the very same parameters change nothing, unless a weight's
    # codes differ (the tool that made the model may not have rounded to nearest).
    if qparams_digest(r.qparams) != p.params.digest:
        return _Fate.CHANGE
    if p.kind is PairKind.ACTIVATION:
        return _Fate.KEEP
    codes = p.params.codes
    same = codes is not None and np.array_equal(quantize(model.weight(r.name), r.qparams,
                                                         r.config.fmt), codes)
    return _Fate.KEEP if same else _Fate.CHANGE


def repair_qdq(model: LoadedModel, results: Sequence[TensorResult]) -> QdqModel:
    """The imported graph repaired to quantize as `results` say (see the module docstring)."""
    imported = model.imported
    if imported is None:
        raise QvizError(f"{model.source} was not imported from a quantized model")
    by_key: dict[TensorKey, TensorResult] = {}
    for r in results:
        key = TensorKey(r.name, r.kind)
        if key in by_key:
            raise QvizError(f"{r.kind.value} '{r.name}' is configured twice")
        by_key[key] = r
    configurable = {t.key for t in quant_tensors(model)}
    fates: dict[int, _Fate] = {}
    paired: set[TensorKey] = set()
    for i, p in enumerate(imported.pairs):
        if p.kind is PairKind.BIAS:
            continue
        key = TensorKey(p.tensor, _kind(p))
        if not p.tensor or key not in configurable:
            fates[i] = _Fate.KEEP  # qviz cannot configure it: it stays as imported
            continue
        paired.add(key)
        fates[i] = _fate(model, p, by_key.get(key))
    added = [r for key, r in by_key.items() if key not in paired]
    touched = [by_key[TensorKey(p.tensor, _kind(p))] for i, p in enumerate(imported.pairs)
               if fates.get(i) is _Fate.CHANGE] + added

    proto = onnx.ModelProto()
    proto.CopyFrom(imported.quantized)
    need = required_opset(touched) if touched else 0
    current = default_opset(proto) or 0
    if need > current:
        proto = upgrade_opset(proto, need, " (needed for the changed formats)")
    ed = GraphEditor(proto)
    tensors: dict[TensorKey, QdqTensor] = {}
    by_output: dict[str, int] = {o: i for i, p in enumerate(imported.pairs) for o in p.outputs}
    for i, p in enumerate(imported.pairs):
        fate = fates.get(i)
        if fate is None:
            continue
        key = TensorKey(p.tensor, _kind(p))
        result = by_key.get(key)
        if p.folded is not None and fate is not _Fate.KEEP:
            ed.restore_op(p.source, p.folded, _constants(model, p.folded))
        if fate is _Fate.REMOVE:
            _remove(ed, model, p)
        elif result is not None:
            change = fate is _Fate.CHANGE
            tensors[key] = _change(ed, model, p, result) if change else _keep(p, result)
    for r in added:
        tensors[TensorKey(r.name, r.kind)] = _add(ed, model, r)
    bias_int32 = _biases(ed, model, fates, by_output, tensors)
    ed.finish()

    layers = _layer_records(model, tensors, bias_int32)
    counts = {f: sum(1 for v in fates.values() if v is f) for f in _Fate}
    notes = []
    if counts[_Fate.CHANGE] or counts[_Fate.REMOVE] or added:
        notes.append(
            f"imported model repaired: {counts[_Fate.KEEP]} pairs kept, "
            f"{counts[_Fate.CHANGE]} changed, {counts[_Fate.REMOVE]} removed, "
            f"{len(added)} added"
        )
    opset = default_opset(proto)
    assert opset is not None
    ordered = tuple(sorted(tensors.values(), key=lambda t: t.depth))
    return QdqModel(proto, ordered, tuple(layers), opset, tuple(notes))


# ------------------------------------------------------------------------------ the edits


def _constants(model: LoadedModel, node: onnx.NodeProto) -> dict[str, np.ndarray]:
    """The values of `node`'s constant inputs in the float model."""
    inits = {t.name for t in model.model.graph.initializer}
    return {i: model.weight(i) for i in node.input[1:] if i in inits}


def _keep(p: ImportedPair, r: TensorResult) -> QdqTensor:
    stored = p.source if p.kind is PairKind.WEIGHT else None
    return QdqTensor.of(r, QdqMode.NATIVE, p.outputs[0], stored_name=stored)


def _remove(ed: GraphEditor, model: LoadedModel, p: ImportedPair) -> None:
    if p.kind is PairKind.ACTIVATION:
        for o in p.outputs:
            ed.bypass(o, p.source)
    elif p.stored:
        name = ed.add_init(p.tensor, model.weight(p.tensor))
        ed.bypass(p.outputs[0], name)
    else:
        for o in p.outputs:
            ed.bypass(o, p.source)
    ed.delete(*p.dq_nodes, *((p.q_node,) if p.q_node else ()))


def _change(ed: GraphEditor, model: LoadedModel, p: ImportedPair, r: TensorResult) -> QdqTensor:
    fmt, qp = r.config.fmt, r.qparams
    if p.kind is PairKind.ACTIVATION:
        if fmt.kind is FormatKind.NF4 or qp.axis is not None:
            raise QvizError(f"activation '{r.name}': {r.config.label} cannot be an activation's")
        store = container_format(fmt) if in_container(fmt) else fmt
        scale = ed.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
        zp = ed.add_init(f"{r.name}_zero_point", onnx_array(np.asarray(qp.zero_point), store))
        assert p.q_node is not None
        ed.set_params(p.q_node, scale, zp, qp)
        for dq in p.dq_nodes:
            ed.set_params(dq, scale, zp, qp)
        if in_container(fmt):
            lo_code, hi_code = fmt.saturation_range
            ends = dequantize(np.array([lo_code, hi_code]).astype(fmt.storage_dtype), qp, fmt)
            for o in p.outputs:
                ed.clip_after(o, float(ends[0]), float(ends[1]), fmt.spec)
            return QdqTensor.of(r, QdqMode.SIMULATED, p.outputs[0])
        return QdqTensor.of(r, QdqMode.NATIVE, p.outputs[0])
    w = model.weight(r.name)
    if container_dtype(fmt) is None:  # NF4: no ONNX type, fake-quantized float values
        name = ed.add_init(f"{r.name}_fake_quantized", fake_quantize(w, qp, fmt))
        for o in p.outputs:
            ed.bypass(o, name)
        ed.delete(*p.dq_nodes, *((p.q_node,) if p.q_node else ()))
        return QdqTensor.of(r, QdqMode.SIMULATED, name, stored_name=name)
    codes = ed.add_init(f"{r.name}_quantized", onnx_array(quantize(w, qp, fmt), fmt))
    scale = ed.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
    zp = ed.add_init(f"{r.name}_zero_point", onnx_array(np.asarray(qp.zero_point), fmt))
    if p.q_node is not None:
        ed.delete(p.q_node)
    for dq in p.dq_nodes:
        ed.set_params(dq, scale, zp, qp, data=codes)
    return QdqTensor.of(r, QdqMode.NATIVE, p.outputs[0], stored_name=codes)


def _add(ed: GraphEditor, model: LoadedModel, r: TensorResult) -> QdqTensor:
    """A new pair on a tensor the import left float."""
    imported = model.imported
    assert imported is not None
    fmt, qp = r.config.fmt, r.qparams
    layer = r.layer
    if r.kind is TensorKind.WEIGHT:
        node = ed.node(imported.node_map.get(layer.node_name, ""), f"layer '{layer.name}'")
        float_node = model.model.graph.node[layer.depth]
        spots = [j for j, name in enumerate(float_node.input) if name == r.name]
        if not spots:
            raise QvizError(f"weight '{r.name}' is not an input of '{layer.name}'")
        w = model.weight(r.name)
        if container_dtype(fmt) is None:
            out = ed.add_init(f"{r.name}_fake_quantized", fake_quantize(w, qp, fmt))
            for j in spots:
                node.input[j] = out
            return QdqTensor.of(r, QdqMode.SIMULATED, out, stored_name=out)
        codes = ed.add_init(f"{r.name}_quantized", onnx_array(quantize(w, qp, fmt), fmt))
        scale = ed.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
        zp = ed.add_init(f"{r.name}_zero_point", onnx_array(np.asarray(qp.zero_point), fmt))
        out = ed.dq_node(codes, scale, zp, qp, f"{r.name}_dequantized")
        for j in spots:
            node.input[j] = out
        return QdqTensor.of(r, QdqMode.NATIVE, out, stored_name=codes)
    if fmt.kind is FormatKind.NF4 or qp.axis is not None:
        raise QvizError(f"activation '{r.name}': {r.config.label} cannot be an activation's")
    if not ed.has_tensor(r.name):
        raise QvizError(f"activation '{r.name}' does not exist in the imported model: it "
                        "cannot be quantized there")
    store = container_format(fmt) if in_container(fmt) else fmt
    scale = ed.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
    zp = ed.add_init(f"{r.name}_zero_point", onnx_array(np.asarray(qp.zero_point), store))
    readers = [imported.node_map[ly.node_name] for ly in model.layers
               if r.name in ly.activations and ly.node_name in imported.node_map]
    out = ed.qdq_on(r.name, scale, zp, qp, readers, to_output=layer.op_type == OUTPUT_OP)
    if in_container(fmt):
        lo_code, hi_code = fmt.saturation_range
        ends = dequantize(np.array([lo_code, hi_code]).astype(fmt.storage_dtype), qp, fmt)
        ed.clip_after(out, float(ends[0]), float(ends[1]), fmt.spec)
        return QdqTensor.of(r, QdqMode.SIMULATED, out)
    return QdqTensor.of(r, QdqMode.NATIVE, out)


def _biases(
    ed: GraphEditor,
    model: LoadedModel,
    fates: dict[int, _Fate],
    by_output: dict[str, int],
    tensors: dict[TensorKey, QdqTensor],
) -> set[str]:
    """Keep, store again or float each int32 bias; returns the names of the float nodes whose
    bias is int32 in the repaired graph."""
    imported = model.imported
    assert imported is not None
    to_float = {q: f for f, q in imported.node_map.items()}
    float_nodes = {node_name(n, i): n for i, n in enumerate(model.model.graph.node)}
    int32: set[str] = set()
    for p in imported.pairs:
        if p.kind is not PairKind.BIAS:
            continue
        for reader in ed.readers(p.outputs[0]):
            if reader.op_type not in ("Conv", "Gemm") or len(reader.input) < 3:
                continue
            x_i, w_i = by_output.get(reader.input[0]), by_output.get(reader.input[1])
            fx = None if x_i is None else fates.get(x_i)
            fw = None if w_i is None else fates.get(w_i)
            f_name = to_float.get(reader.name, "")
            if fx is _Fate.KEEP and fw is _Fate.KEEP:
                int32.add(f_name)
                continue
            if x_i is None or w_i is None or fx is None or fw is None:
                continue  # not a layer qviz configures: left as imported
            f_node = float_nodes.get(f_name)
            if f_node is None or len(f_node.input) < 3:
                continue
            bias = model.weight(f_node.input[2])
            x = tensors.get(TensorKey(imported.pairs[x_i].tensor, TensorKind.ACTIVATION))
            w = tensors.get(TensorKey(imported.pairs[w_i].tensor, TensorKind.WEIGHT))
            new = _requantized_bias(bias, x, w)
            if new is None:
                name = ed.add_init(f_node.input[2], bias)
                ed.bypass(p.outputs[0], name)
                ed.delete(*p.dq_nodes)
            else:
                codes, scale = new
                c = ed.add_init(f"{f_node.input[2]}_quantized", codes)
                s = ed.add_init(f"{f_node.input[2]}_scale", scale)
                ed.set_bias(p.dq_nodes[0], c, s)
                int32.add(f_name)
    return int32


def _requantized_bias(
    bias: np.ndarray, x: QdqTensor | None, w: QdqTensor | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """An int32 bias at s_x · s_w, as onnxruntime.quantization stores it, or None when the
    layer's input and weight are not both 8-bit integers (the bias stays float)."""
    if x is None or w is None or not (x.is_8bit_int and w.is_8bit_int):
        return None
    if w.qparams.block_size is not None or container_dtype(x.fmt) not in INT8_ONNX:
        return None
    w_scale = np.asarray(w.qparams.scale, np.float32)
    if bias.ndim != 1 or (w_scale.ndim == 1 and w_scale.shape[0] != bias.shape[0]):
        return None
    scale = np.broadcast_to((np.float32(x.qparams.scale) * w_scale).astype(np.float32),
                            bias.shape).astype(np.float32)
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    if np.abs(q).max(initial=0.0) > float(np.iinfo(np.int32).max):
        return None
    return q.astype(np.int32), scale


def _output_pair(
    graph: onnx.GraphProto, node: onnx.NodeProto, tensors: dict[TensorKey, QdqTensor]
) -> QdqTensor | None:
    """The pair on the layer's output, or on the Relu/Clip output it was folded into."""
    if not node.output:
        return None
    out = node.output[0]
    found = tensors.get(TensorKey(out, TensorKind.ACTIVATION))
    if found is None:
        readers = [n for n in graph.node if out in n.input]
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip"):
            found = tensors.get(TensorKey(readers[0].output[0], TensorKind.ACTIVATION))
    return found


def _layer_records(
    model: LoadedModel, tensors: dict[TensorKey, QdqTensor], bias_int32: set[str]
) -> list[QdqLayer]:
    imported = model.imported
    assert imported is not None
    graph = model.model.graph
    out = []
    for layer in model.layers:
        # Ops that only move values run on integers without a kernel of their own: no
        # fusion to report for them (nor for a model output).
        if layer.op_type == OUTPUT_OP or layer.op_type in MOVING_OPS:
            continue
        w = tensors.get(TensorKey(layer.weight, TensorKind.WEIGHT)) if layer.weight else None
        inputs = [tensors[k] for a in layer.activations
                  if (k := TensorKey(a, TensorKind.ACTIVATION)) in tensors]
        if w is None and not inputs:
            continue
        floats = [a for a in layer.activations
                  if TensorKey(a, TensorKind.ACTIVATION) not in tensors]
        output = _output_pair(graph, graph.node[layer.depth], tensors)
        note = "" if output is not None else "the layer's output is not quantized"
        renamed = replace(layer, node_name=imported.node_map.get(layer.node_name, layer.node_name))
        out.append(QdqLayer(renamed, w, tuple(inputs), tuple(floats), output, note,
                            layer.node_name in bias_int32))
    return out



def as_imported(model: LoadedModel) -> QdqModel:
    """The imported graph as it is, with its record, for measuring it without statistics
    (`qviz evaluate` on a quantized model): what ``repair_qdq`` returns for the imported
    configuration, without analysing any tensor."""
    imported = model.imported
    if imported is None:
        raise QvizError(f"{model.source} was not imported from a quantized model")
    tensors: dict[TensorKey, QdqTensor] = {}
    for t in quant_tensors(model):
        p = imported.pair(t.name, PairKind.WEIGHT if t.kind is TensorKind.WEIGHT
                          else PairKind.ACTIVATION)
        if p is None or p.fmt is None:
            continue
        granularity = granularity_of(p, t.layer)
        tensors[t.key] = QdqTensor(
            t.name, t.kind, t.layer.name, p.fmt, granularity.label, p.params.qparams,
            QdqMode.NATIVE, p.outputs[0],
            stored_name=p.source if p.kind is PairKind.WEIGHT else None, depth=t.layer.depth,
        )
    layers = _layer_records(model, tensors, _int32_bias_layers(model))
    ordered = tuple(sorted(tensors.values(), key=lambda t: t.depth))
    opset = default_opset(imported.quantized)
    assert opset is not None
    return QdqModel(imported.quantized, ordered, tuple(layers), opset, ())


def _int32_bias_layers(model: LoadedModel) -> set[str]:
    """Float node names whose bias the imported graph stores as int32."""
    imported = model.imported
    assert imported is not None
    to_float = {q: f for f, q in imported.node_map.items()}
    outputs = {p.outputs[0] for p in imported.pairs if p.kind is PairKind.BIAS}
    return {to_float.get(n.name, "") for n in imported.quantized.graph.node
            if len(n.input) > 2 and n.input[2] in outputs}
