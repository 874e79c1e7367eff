"""Read the Q/DQ pairs of a quantized ONNX graph: which tensor each quantizes, to which format,
with which scale and zero point.

Any tool's pairs read the same way: per tensor, per axis (``axis``) or blockwise
(``block_size``, opset 21); int4/int8/int16 signed or unsigned, FP8 (e4m3fn, e5m2); the ONNX
domain's QuantizeLinear/DequantizeLinear or ONNX Runtime's ``com.microsoft`` ones. A pair
whose QuantizeLinear and DequantizeLinear disagree on the scale or zero point is refused,
naming both nodes: such a graph does not compute what a pair means.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qviz.core.errors import QvizError
from qviz.core.imported.types import ImportedPair, PairKind
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.imported_params import ImportedParams
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import quantize

__all__ = ["Q_DOMAINS", "is_dq", "is_q", "read_pairs"]

#: Domains whose QuantizeLinear/DequantizeLinear qviz reads (ORT writes com.microsoft ones
#: for 16-bit types below opset 21).
Q_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})

_INT_TYPES: dict[int, tuple[int, bool]] = {
    onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT8: (8, False),
    onnx.TensorProto.INT4: (4, True),
    onnx.TensorProto.UINT4: (4, False),
    onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.UINT16: (16, False),
}
_FP8_TYPES: dict[int, FormatKind] = {
    onnx.TensorProto.FLOAT8E4M3FN: FormatKind.FP8_E4M3FN,
    onnx.TensorProto.FLOAT8E5M2: FormatKind.FP8_E5M2,
}


def is_q(node: onnx.NodeProto) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in Q_DOMAINS


def is_dq(node: onnx.NodeProto) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in Q_DOMAINS


def _type_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.")


@dataclass(frozen=True)
class _Params:
    """A Q or DQ node's scale, zero point and layout, as stored."""

    scale: np.ndarray
    zero_point: np.ndarray
    zp_type: int
    axis: int
    block_size: int
    saturate: int

    def same_as(self, other: _Params) -> bool:
        return (
            self.zp_type == other.zp_type
            and self.scale.shape == other.scale.shape
            and self.scale.tobytes() == other.scale.tobytes()
            and self.zero_point.tobytes() == other.zero_point.tobytes()
            and (self.scale.size == 1 or self.axis == other.axis)
            and self.block_size == other.block_size
        )


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _params(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> _Params:
    what = f"{node.op_type} '{node.name}'"
    if len(node.input) < 2 or node.input[1] not in inits:
        raise QvizError(f"{what}: its scale is computed in the graph, not stored; qviz reads "
                        "Q/DQ pairs with constant scales")
    scale = np.asarray(numpy_helper.to_array(inits[node.input[1]]), dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            raise QvizError(f"{what}: its zero point is computed in the graph, not stored")
        zp_init = inits[node.input[2]]
        zp_type = zp_init.data_type
        zero_point = np.asarray(numpy_helper.to_array(zp_init))
    else:
        # No zero point: uint8, or the type QuantizeLinear-21 names in output_dtype.
        zp_type = _attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8
        zero_point = np.zeros(scale.shape, dtype=np.uint8)
    if zero_point.size == 1 and scale.size == 1:
        zero_point = zero_point.reshape(scale.shape)  # () and (1,) both mean per tensor
    if zero_point.shape != scale.shape:
        raise QvizError(f"{what}: zero point shape {list(zero_point.shape)} differs from scale "
                        f"shape {list(scale.shape)}")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise QvizError(f"{what}: its scale holds zero, negative or non-finite values")
    return _Params(scale, zero_point, zp_type, _attr(node, "axis", 1),
                   _attr(node, "block_size", 0), _attr(node, "saturate", 1))


def _format(p: _Params, what: str) -> NumberFormat:
    if p.zp_type in _INT_TYPES:
        bits, signed = _INT_TYPES[p.zp_type]
        zp = p.zero_point.astype(np.int64)
        middle = 0 if signed else 2 ** (bits - 1)
        return NumberFormat(FormatKind.INT, bits, signed, symmetric=bool(np.all(zp == middle)))
    if p.zp_type in _FP8_TYPES:
        if np.any(p.zero_point.astype(np.float32) != 0):
            raise QvizError(f"{what}: an FP8 zero point must be 0")
        if p.saturate != 1:
            raise QvizError(f"{what}: FP8 without saturation is not supported")
        return NumberFormat(_FP8_TYPES[p.zp_type])
    raise QvizError(f"{what}: quantizes to {_type_name(p.zp_type)}, which qviz does not read "
                    "(int4/8/16, uint4/8/16, float8 e4m3fn/e5m2)")


def _qparams(p: _Params, fmt: NumberFormat | None, rank: int | None, what: str) -> QParams:
    storage = p.zero_point if fmt is None else p.zero_point.astype(fmt.storage_dtype)
    if p.block_size > 0 or (p.scale.size > 1 or p.scale.ndim > 1):
        if rank is None:
            raise QvizError(f"{what}: per-channel activation pairs are not supported")
        axis = p.axis + rank if p.axis < 0 else p.axis
        if not 0 <= axis < rank:
            raise QvizError(f"{what}: axis {p.axis} does not exist in a {rank}-D tensor")
        try:
            return QParams(p.scale, storage, axis=axis,
                           block_size=p.block_size if p.block_size > 0 else None)
        except ValueError as exc:
            raise QvizError(f"{what}: {exc}") from None
    return QParams(p.scale.reshape(()), storage.reshape(()))


def _codes(init: onnx.TensorProto, fmt: NumberFormat | None) -> np.ndarray:
    raw = np.asarray(numpy_helper.to_array(init))
    return raw if fmt is None else raw.astype(fmt.storage_dtype)


def read_pairs(model: onnx.ModelProto) -> list[ImportedPair]:
    """Every Q/DQ pair of the top-level graph, in graph order (nodes must be named).

    Raises QvizError (one line naming the node) for a DequantizeLinear that reads neither
    stored codes nor a QuantizeLinear, a QuantizeLinear read by other ops (QOperator integer
    tensors: convert them first), computed scales, unsupported types, and a Q and DQ that
    disagree."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            if name:
                readers[name].append(n)
    graph_outputs = {o.name for o in graph.output}
    pairs: list[ImportedPair] = []
    for node in graph.node:
        if is_dq(node):
            pair = _stored_pair(node, inits, producer, graph_outputs)
            if pair is not None:
                pairs.append(pair)
        elif is_q(node):
            pairs.append(_q_pair(node, inits, readers, graph_outputs))
    return pairs


def _stored_pair(
    dq: onnx.NodeProto,
    inits: Mapping[str, onnx.TensorProto],
    producer: Mapping[str, onnx.NodeProto],
    graph_outputs: set[str],
) -> ImportedPair | None:
    """A DequantizeLinear of stored codes (None when it reads a QuantizeLinear)."""
    source = dq.input[0]
    what = f"DequantizeLinear '{dq.name}'"
    if source not in inits:
        feeder = producer.get(source)
        if feeder is not None and is_q(feeder):
            return None  # the QuantizeLinear's pair
        origin = "a graph input" if feeder is None else f"{feeder.op_type} '{feeder.name}'"
        raise QvizError(f"{what} reads '{source}' from {origin}, neither stored codes nor a "
                        "QuantizeLinear: not a Q/DQ pair qviz can read")
    p = _params(dq, inits)
    codes_type = inits[source].data_type
    if codes_type == onnx.TensorProto.INT32:
        kind, fmt = PairKind.BIAS, None
    else:
        if codes_type != p.zp_type and len(dq.input) > 2 and dq.input[2]:
            raise QvizError(f"{what}: codes are {_type_name(codes_type)} but the zero point "
                            f"is {_type_name(p.zp_type)}")
        p = _Params(p.scale, p.zero_point, codes_type, p.axis, p.block_size, p.saturate)
        kind, fmt = PairKind.WEIGHT, _format(p, what)
    codes = _codes(inits[source], fmt)
    qp = _qparams(p, fmt, codes.ndim, what)
    return ImportedPair(
        kind=kind,
        source=source,
        fmt=fmt,
        params=ImportedParams(qp, codes),
        q_node=None,
        dq_nodes=(dq.name,),
        outputs=(dq.output[0],),
        to_graph_output=dq.output[0] in graph_outputs,
    )


def _q_pair(
    q: onnx.NodeProto,
    inits: Mapping[str, onnx.TensorProto],
    readers: Mapping[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
) -> ImportedPair:
    """A QuantizeLinear and the DequantizeLinear nodes reading it."""
    what = f"QuantizeLinear '{q.name}'"
    out = q.output[0]
    dqs = readers.get(out, [])
    others = [n for n in dqs if not is_dq(n)]
    if others:
        n = others[0]
        raise QvizError(f"{what} feeds {n.op_type} '{n.name}' with integers: QOperator "
                        "nodes mixed into a Q/DQ graph are not supported")
    if not dqs:
        raise QvizError(f"{what}: no DequantizeLinear reads its output '{out}'")
    if out in graph_outputs:
        raise QvizError(f"{what}: its integer output '{out}' is a model output")
    p = _params(q, inits)
    for dq in dqs:
        d = _params(dq, inits)
        if not p.same_as(d):
            raise QvizError(
                f"inconsistent scales on tensor '{q.input[0]}': QuantizeLinear '{q.name}' "
                f"(scale {_brief(p.scale)}, zero point {_brief(p.zero_point)}) and "
                f"DequantizeLinear '{dq.name}' (scale {_brief(d.scale)}, zero point "
                f"{_brief(d.zero_point)}) differ"
            )
    fmt = _format(p, what)
    source = q.input[0]
    weight = inits.get(source)
    rank = None if weight is None else len(weight.dims)
    qp = _qparams(p, fmt, rank, f"{what} on '{source}'")
    codes = None
    if weight is not None:
        values = np.asarray(numpy_helper.to_array(weight), dtype=np.float32)
        codes = quantize(values, qp, fmt)
    outputs = tuple(dq.output[0] for dq in dqs)
    return ImportedPair(
        kind=PairKind.ACTIVATION if weight is None else PairKind.WEIGHT,
        source=source,
        fmt=fmt,
        params=ImportedParams(qp, codes),
        q_node=q.name,
        dq_nodes=tuple(dq.name for dq in dqs),
        outputs=outputs,
        to_graph_output=any(o in graph_outputs for o in outputs),
    )


def _brief(a: np.ndarray) -> str:
    flat = np.asarray(a).reshape(-1)
    if flat.size == 1:
        return f"{flat[0].item():.6g}"
    return f"[{flat[0].item():.6g}, … ({flat.size})]"
