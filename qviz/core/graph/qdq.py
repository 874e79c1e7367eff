"""Build the quantized graph: Q/DQ pairs inserted into the float ONNX graph.

The Q/DQ graph is qviz's one quantized artifact. Run op by op (optimizations off) it *is* the
simulation; run with ONNX Runtime's optimizations on, ORT fuses its patterns into real INT8
kernels; saved to disk it is what ships. So every number in it comes from qviz's own
`quantize` with the analysed `QParams`: the graph and the GUI cannot disagree.

What is inserted, per quantized tensor:

* **weights** — the float initializer is replaced by the quantized values in their storage type
  (int8, uint8, int4, uint4, float8) plus a ``DequantizeLinear`` (``axis`` per channel,
  ``axis`` + ``block_size`` per group). INT widths ONNX has no type for (2, 3, 5, 6, 7 bits)
  are stored in an int8/uint8 *container* (`container_dtype`): the values are qviz's
  `quantize` at the narrow width, so they lie within its range, and the DequantizeLinear is
  exact. They run natively like int8 — 7-bit weights are ONNX Runtime's ``reduce_range``, the
  cure for the 16-bit saturation of its u8s8 kernels on AVX2 CPUs without VNNI. Only NF4 has
  no container: it is stored as fake-quantized float32 values, exact in simulation, never
  native.
* **activations** (always per tensor) — ``QuantizeLinear`` → ``DequantizeLinear`` on the
  tensor, feeding only the quantized layers that read it; the float tensor keeps its name, so
  graph inputs, outputs and every other consumer are untouched. INT 2/3/5/6/7-bit activations
  are quantized into int8/uint8 and clipped to their own width *after* dequantization, which
  is bit-identical to qviz's `fake_quantize` at that width, NaN included (QuantizeLinear
  saturates to the container's range). A Clip *before* the QuantizeLinear would leave the
  DQ → layer pattern intact for ORT, but Clip passes NaN, which QuantizeLinear then maps to
  the container's minimum (int8: -128, where int7 wants -64): so they stay simulation only.
* **layer outputs** — ORT fuses ``DQ → Conv → Q`` into ``QLinearConv`` only when the Conv's
  output goes straight into a ``QuantizeLinear``. When a layer's output reaches the next
  quantized layer's input through ops that commute with quantization (Relu, Clip, MaxPool,
  reshapes), a Q/DQ with the *next input's* parameters is also put on the layer's output.
  That is numerically a no-op — re-quantizing values already on the grid returns them, and
  Relu/Clip/max of grid values are grid values — so the simulation is unchanged while ORT gets
  the pattern it needs.
* **biases** of Conv/Gemm layers whose input and weight are both 8-bit integers are stored as
  int32 at scale ``s_input · s_weight`` (zero point 0), as ORT's integer kernels require. This
  is the one value not produced by qviz's formats; its rounding error is at most half of
  ``s_input · s_weight`` per output element.

Layers whose weight the user keeps in float stay float (mixed precision is only a
configuration); see `receives_quantized_input` for the precise rule on shared activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_path
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import dequantize, fake_quantize, quantize

if TYPE_CHECKING:  # analysis imports the calibration stack; the graph builder needs none of it
    from qviz.core.calibration.analysis import TensorResult

__all__ = [
    "QdqLayer",
    "QdqMode",
    "QdqModel",
    "QdqTensor",
    "build_qdq",
    "build_qdq_model",
    "container_dtype",
    "default_opset",
    "initializer_bytes",
    "receives_quantized_input",
    "save_qdq_model",
]

#: Lowest default-domain opset of a Q/DQ graph: per-axis DequantizeLinear needs 13.
MIN_OPSET = 13
#: FP8 QuantizeLinear/DequantizeLinear (with ``saturate``) exist from opset 19.
FP8_OPSET = 19
#: INT4/UINT4 tensors and blocked (per-group) quantization exist from opset 21.
BLOCKED_OPSET = 21

# Ops between a layer and the next quantized layer's input through which a Q/DQ on the layer's
# output changes nothing: each either moves values unchanged (shape ops, MaxPool picks one of
# its inputs) or is piecewise identity/constant (Relu, Clip), so it maps grid values to grid
# values and commutes with rounding to the grid. Anything else (Add, Sigmoid, AveragePool...)
# would change results, so the chain stops there.
_TRANSPARENT_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
    }
)
# Layers ORT quantizes with an int32 bias input.
_BIAS_OPS = {"Conv": 2, "Gemm": 2}
_INT8_ONNX = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def container_dtype(fmt: NumberFormat) -> int | None:
    """The ONNX element type the Q/DQ graph stores `fmt`'s quantized values in, or None (NF4).

    The format's own type where ONNX has one (int8, uint8, int4, uint4, float8); int8/uint8
    for INT widths ONNX has no type for (2, 3, 5, 6, 7 bits), whose values fit in a byte.
    Weights in a container are exact and run natively (QLinearConv, QGemm... read int8/uint8);
    activations in one are exact only with a Clip after the DequantizeLinear (see the module
    docstring), which no integer kernel fuses.
    """
    if fmt.onnx_dtype is not None:
        return fmt.onnx_dtype
    if fmt.kind is FormatKind.INT:
        return onnx.TensorProto.INT8 if fmt.signed else onnx.TensorProto.UINT8
    return None


def _in_container(fmt: NumberFormat) -> bool:
    """INT 2, 3, 5, 6 or 7 bits: stored in an int8/uint8 container narrower than its type."""
    return fmt.kind is FormatKind.INT and fmt.onnx_dtype is None


def _format_text(fmt: NumberFormat) -> str:
    """The format's label without the "(simulation only)" that formats.py puts on every
    width ONNX has no type for: whether a tensor is simulation only is decided here."""
    return fmt.label.removesuffix(" (simulation only)")


class QdqMode(Enum):
    """How a quantized tensor is represented in the graph.

    ``NATIVE``: a plain Q/DQ in the format's ONNX type, or in an int8/uint8 container for
    2..7-bit INT weights; runtimes can execute it with integer/FP8 kernels. ``SIMULATED``: NF4
    weights (fake-quantized float values) and 2..7-bit INT activations (8-bit Q/DQ, then Clip):
    exact, but no integer kernel reads them.
    """

    NATIVE = "native"
    SIMULATED = "simulated"


@dataclass(frozen=True, eq=False)
class QdqTensor:
    """One quantized tensor of the Q/DQ graph.

    ``graph_name`` is the tensor that carries the quantized-then-dequantized values in the Q/DQ
    graph (what the quantized layers read); ``stored_name`` the initializer holding a weight's
    quantized values (None for activations).
    """

    name: str
    kind: TensorKind
    layer: str
    fmt: NumberFormat
    granularity_label: str
    qparams: QParams
    mode: QdqMode
    graph_name: str
    stored_name: str | None = None
    depth: int = 0

    @classmethod
    def of(
        cls, r: TensorResult, mode: QdqMode, graph_name: str, stored_name: str | None = None
    ) -> QdqTensor:
        """The QdqTensor for analysed tensor `r`, carried in the graph by `graph_name`."""
        return cls(
            r.name,
            r.kind,
            r.layer.name,
            r.config.fmt,
            r.config.granularity.label,
            r.qparams,
            mode,
            graph_name,
            stored_name=stored_name,
            depth=r.layer.depth,
        )

    @property
    def is_8bit_int(self) -> bool:
        """A plain Q/DQ stored as int8/uint8 (int8, uint8, and 2..7-bit INT weights in their
        container): the only formats with QLinear kernels on CPU."""
        return self.mode is QdqMode.NATIVE and container_dtype(self.fmt) in _INT8_ONNX

    @property
    def step(self) -> float | None:
        """The quantization step of a per-tensor INT activation (its scale), else None."""
        if self.fmt.kind is not FormatKind.INT or self.qparams.axis is not None:
            return None
        return float(self.qparams.scale)


@dataclass(frozen=True, eq=False)
class QdqLayer:
    """What happened to one quantized layer: its quantized inputs, weight, bias and output.

    ``output`` is the Q/DQ the layer's output goes through (the next quantized layer's input,
    directly or through Relu/MaxPool/reshapes), or None with ``output_note`` saying why not.
    """

    layer: Layer
    weight: QdqTensor | None
    inputs: tuple[QdqTensor, ...]
    float_inputs: tuple[str, ...]
    output: QdqTensor | None
    output_note: str
    bias_int32: bool
    bias_note: str = ""


@dataclass(frozen=True, eq=False)
class QdqModel:
    """The Q/DQ graph and a record of what was quantized, and how.

    ``model`` is a protobuf message and so technically mutable: treat it as read-only (copy it
    before changing it); everything in qviz does.
    """

    model: onnx.ModelProto
    tensors: tuple[QdqTensor, ...]
    layers: tuple[QdqLayer, ...]
    opset: int
    notes: tuple[str, ...] = ()
    _by_key: Mapping[tuple[str, TensorKind], QdqTensor] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_by_key", MappingProxyType({(t.name, t.kind): t for t in self.tensors})
        )

    def tensor(self, name: str, kind: TensorKind) -> QdqTensor:
        return self._by_key[(name, kind)]

    @property
    def activations(self) -> tuple[QdqTensor, ...]:
        """Quantized activation tensors in depth order."""
        acts = [t for t in self.tensors if t.kind is TensorKind.ACTIVATION]
        return tuple(sorted(acts, key=lambda t: t.depth))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(q.layer.name for q in self.layers)

    @property
    def simulated(self) -> tuple[QdqTensor, ...]:
        """Tensors only the simulation can represent (never run natively)."""
        return tuple(t for t in self.tensors if t.mode is QdqMode.SIMULATED)

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


# --------------------------------------------------------------------------- helpers


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _required_opset(results: Iterable[TensorResult]) -> int:
    need = MIN_OPSET
    for r in results:
        fmt = r.config.fmt
        if container_dtype(fmt) is None and r.kind is TensorKind.WEIGHT:
            continue  # NF4, stored as float: no Q/DQ type involved
        if fmt.kind in (FormatKind.FP8_E4M3FN, FormatKind.FP8_E5M2):
            need = max(need, FP8_OPSET)
        if fmt.onnx_dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            need = max(need, BLOCKED_OPSET)
        if r.qparams.block_size is not None:
            need = max(need, BLOCKED_OPSET)
    return need


def _upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` at default-domain `opset` (converted only when it is lower)."""
    current = default_opset(model)
    if current >= opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises assorted C++ error types
        raise QvizError(
            f"cannot upgrade the model from opset {current} to {opset} "
            f"(needed for these formats): {str(exc).strip().splitlines()[0]}"
        ) from exc
    min_ir = helper.find_min_ir_version_for(list(converted.opset_import))
    converted.ir_version = max(converted.ir_version, min_ir)
    return converted


def _onnx_array(values: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Values in the numpy dtype `numpy_helper.from_array` maps to the format's ONNX type:
    qviz keeps int4/uint4 unpacked in int8/uint8; ONNX wants ml_dtypes' 4-bit types."""
    if fmt.onnx_dtype == onnx.TensorProto.INT4:
        return values.astype(ml_dtypes.int4)
    if fmt.onnx_dtype == onnx.TensorProto.UINT4:
        return values.astype(ml_dtypes.uint4)
    return np.asarray(values, dtype=fmt.storage_dtype)


def _container_format(fmt: NumberFormat) -> NumberFormat:
    """The 8-bit ONNX format a 2..7-bit INT activation is quantized into before clipping."""
    return NumberFormat(FormatKind.INT, 8, fmt.signed, fmt.symmetric)


class _Names:
    """Fresh tensor and node names that collide with nothing in the graph (or subgraphs)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = set()
        for g in _all_graphs(graph):
            self.used.update(i.name for i in g.input)
            self.used.update(o.name for o in g.output)
            self.used.update(i.name for i in g.initializer)
            self.used.update(v.name for v in g.value_info)
            for n in g.node:
                self.used.update(n.input)
                self.used.update(n.output)
                self.used.add(n.name)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name


def _all_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_graphs(g)


def _subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (they may refer to outer-scope tensors)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for g in subs:
                for sub in _all_graphs(g):
                    for n in sub.node:
                        names.update(n.input)
    return names


def receives_quantized_input(layer: Layer, owner: str, quantized_weights: set[str]) -> bool:
    """Whether `layer` reads the Q/DQ'd version of an activation owned by layer `owner`.

    A layer whose weight is quantized reads quantized inputs; so does a layer without a weight
    (activation x activation MatMul). A layer whose weight the user kept in float keeps float
    inputs — mixed precision — unless the activation is its own (it is the activation's first
    reader, ``owner``), which is how activation-only quantization of one layer is expressed.
    """
    if layer.weight is None or layer.weight in quantized_weights:
        return True
    return layer.name == owner


# --------------------------------------------------------------------------- builder


class _Builder:
    """Mutable state of one `build_qdq_model` call (kept out of the public API)."""

    def __init__(self, model: LoadedModel, results: Sequence[TensorResult]) -> None:
        self.loaded = model
        self.results = list(results)
        proto = _copy(model.model)
        _name_nodes(proto.graph)  # before any conversion, so layer node names still match
        self.proto = _upgrade_opset(proto, _required_opset(self.results))
        self.graph = self.proto.graph
        self.names = _Names(self.graph)
        self.nodes_by_name = {n.name: n for n in self.graph.node}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.subgraph_refs = _subgraph_references(self.graph)
        self.head: list[onnx.NodeProto] = []  # weight DQs and graph-input Q/DQs
        self.after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> new nodes
        self.new_inits: list[onnx.TensorProto] = []
        self.producer = {o: n for n in self.graph.node for o in n.output if o}

    # -- small graph edits ---------------------------------------------------------------
    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def node_of(self, layer: Layer) -> onnx.NodeProto:
        try:
            return self.nodes_by_name[layer.node_name]
        except KeyError:
            raise QvizError(
                f"layer '{layer.name}' (node '{layer.node_name}') is not in the model graph"
            ) from None

    def add_init(self, base: str, array: np.ndarray) -> str:
        name = self.names.fresh(base)
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def place_after(self, tensor: str, nodes: list[onnx.NodeProto]) -> None:
        """Schedule `nodes` right after the producer of `tensor` (graph start for inputs)."""
        producer = self.producer.get(tensor)
        if producer is None:
            self.head.extend(nodes)
        else:
            self.after.setdefault(producer.name, []).extend(nodes)

    def qdq_nodes(
        self, tensor: str, qp: QParams, fmt: NumberFormat, out_name: str
    ) -> tuple[list[onnx.NodeProto], str]:
        """QuantizeLinear → DequantizeLinear of per-tensor `tensor` (then Clip for 2..7-bit
        INT, held in an int8/uint8 container)."""
        simulated = _in_container(fmt)
        store_fmt = _container_format(fmt) if simulated else fmt
        scale = self.add_init(f"{tensor}_scale", np.asarray(qp.scale, np.float32))
        zp = self.add_init(
            f"{tensor}_zero_point", _onnx_array(np.asarray(qp.zero_point), store_fmt)
        )
        q_out = self.names.fresh(f"{tensor}_quantized")
        nodes = [
            helper.make_node(
                "QuantizeLinear",
                [tensor, scale, zp],
                [q_out],
                name=self.names.fresh(f"{tensor}_QuantizeLinear"),
            ),
        ]
        if not simulated:
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_out, scale, zp],
                    [out_name],
                    name=self.names.fresh(f"{tensor}_DequantizeLinear"),
                )
            )
            return nodes, q_out
        # The 8-bit Q/DQ saturates at the int8/uint8 range; clipping the dequantized value to
        # the dequantized ends of the narrower range equals saturating the integer there first,
        # because dequantization is monotone and the ends are computed the same float32 way.
        lo_code, hi_code = fmt.saturation_range
        ends = dequantize(np.array([lo_code, hi_code]).astype(fmt.storage_dtype), qp, fmt)
        lo = self.add_init(f"{tensor}_clip_min", np.asarray(ends[0], np.float32))
        hi = self.add_init(f"{tensor}_clip_max", np.asarray(ends[1], np.float32))
        wide = self.names.fresh(f"{tensor}_dequantized_8bit")
        nodes += [
            helper.make_node(
                "DequantizeLinear",
                [q_out, scale, zp],
                [wide],
                name=self.names.fresh(f"{tensor}_DequantizeLinear"),
            ),
            helper.make_node(
                "Clip",
                [wide, lo, hi],
                [out_name],
                name=self.names.fresh(f"{tensor}_Clip_{fmt.spec}"),
            ),
        ]
        return nodes, q_out

    # -- weights -------------------------------------------------------------------------
    def quantize_weight(self, r: TensorResult) -> QdqTensor:
        if r.name not in self.initializers:
            raise QvizError(f"weight '{r.name}' is not an initializer of the model")
        w = self.loaded.weight(r.name)
        fmt, qp = r.config.fmt, r.qparams
        if container_dtype(fmt) is None:  # NF4: no ONNX type to hold its codes
            fq = fake_quantize(w, qp, fmt).astype(np.float32)
            out = self.add_init(f"{r.name}_fake_quantized", fq)
            return QdqTensor.of(r, QdqMode.SIMULATED, out, stored_name=out)
        # 2..7-bit INT: quantize saturates to the narrow range, stored in int8/uint8.
        q = _onnx_array(quantize(w, qp, fmt), fmt)
        stored = self.add_init(f"{r.name}_quantized", q)
        scale = self.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
        zp = self.add_init(f"{r.name}_zero_point", _onnx_array(np.asarray(qp.zero_point), fmt))
        out = self.names.fresh(f"{r.name}_dequantized")
        attrs: dict[str, int] = {}
        if qp.axis is not None:
            attrs["axis"] = qp.axis
        if qp.block_size is not None:
            attrs["block_size"] = qp.block_size
        self.head.append(
            helper.make_node(
                "DequantizeLinear",
                [stored, scale, zp],
                [out],
                name=self.names.fresh(f"{r.name}_DequantizeLinear"),
                **attrs,
            )
        )
        return QdqTensor.of(r, QdqMode.NATIVE, out, stored_name=stored)

    # -- activations ---------------------------------------------------------------------
    def quantize_activation(self, r: TensorResult) -> QdqTensor:
        fmt, qp = r.config.fmt, r.qparams
        if fmt.kind is FormatKind.NF4:
            raise QvizError(f"activation '{r.name}': NF4 is a weight-only format")
        if qp.axis is not None:
            raise QvizError(
                f"activation '{r.name}': activations are quantized per tensor, not "
                f"{r.config.granularity.label}"
            )
        out = self.names.fresh(f"{r.name}_dequantized")
        nodes, _ = self.qdq_nodes(r.name, qp, fmt, out)
        self.place_after(r.name, nodes)
        mode = QdqMode.SIMULATED if _in_container(fmt) else QdqMode.NATIVE
        return QdqTensor.of(r, mode, out)

    # -- biases --------------------------------------------------------------------------
    def quantize_bias(self, node: onnx.NodeProto, x: QdqTensor, w: QdqTensor) -> tuple[bool, str]:
        """Store the bias as int32 at scale s_x·s_w when ORT's integer kernels want that."""
        index = _BIAS_OPS.get(node.op_type)
        if index is None or len(node.input) <= index or not node.input[index]:
            return False, ""
        if not (x.is_8bit_int and w.is_8bit_int) or w.qparams.block_size is not None:
            return False, "bias kept float: input or weight is not 8-bit integer"
        if node.op_type == "Gemm" and any(a.name == "beta" and a.f != 1.0 for a in node.attribute):
            return False, "bias kept float: Gemm beta is not 1"
        name = node.input[index]
        if name not in self.initializers:
            return False, "bias kept float: it is not a constant"
        bias = numpy_helper.to_array(self.initializers[name]).astype(np.float32)
        w_scale = np.asarray(w.qparams.scale, np.float32)
        n_out = bias.shape[0] if bias.ndim == 1 else None
        if n_out is None or (w_scale.ndim == 1 and w_scale.shape[0] != n_out):
            return False, "bias kept float: its shape does not match the output channels"
        # As onnxruntime.quantization does: float32 scale product, round half to even.
        b_scale = (np.float32(x.qparams.scale) * w_scale).astype(np.float32)
        b_scale = np.broadcast_to(b_scale, bias.shape).astype(np.float32)
        q = np.rint(bias.astype(np.float64) / b_scale.astype(np.float64))
        limit = float(np.iinfo(np.int32).max)
        if np.abs(q).max(initial=0.0) > limit:
            return False, "bias kept float: too large for int32 at scale s_input·s_weight"
        stored = self.add_init(f"{name}_quantized", q.astype(np.int32))
        scale = self.add_init(f"{name}_scale", b_scale)
        out = self.names.fresh(f"{name}_dequantized")
        self.head.append(
            helper.make_node(
                "DequantizeLinear",
                [stored, scale],
                [out],
                axis=0,
                name=self.names.fresh(f"{name}_DequantizeLinear"),
            )
        )
        node.input[index] = out
        return True, ""

    # -- layer outputs -------------------------------------------------------------------
    def quantize_output(
        self,
        node: onnx.NodeProto,
        act_by_name: Mapping[str, QdqTensor],
        rewired: Mapping[str, set[str]],
    ) -> tuple[QdqTensor | None, str]:
        """Q/DQ the layer's output with the next quantized input's parameters, if it reaches
        that input through transparent ops only (see module docstring)."""
        if not node.output or not node.output[0]:
            return None, "the layer has no output"
        start = node.output[0]
        cur, chain = start, []
        while True:
            target = act_by_name.get(cur)
            consumers = self.consumers(cur)
            if target is not None:
                extra = [c for c in consumers if c.name not in rewired.get(cur, set())]
                if cur in self.graph_outputs or cur in self.subgraph_refs or extra:
                    return None, f"output '{cur}' also feeds ops that stay float"
                if not target.is_8bit_int:
                    return (
                        None,
                        f"the next input '{cur}' is {_format_text(target.fmt)}, not 8-bit int",
                    )
                if not chain:
                    return target, ""  # the output is itself the next layer's Q/DQ'd input
                break
            if cur in self.graph_outputs:
                return None, "output is a model output (kept float)"
            if len(consumers) != 1:
                what = "is not used" if not consumers else f"feeds {len(consumers)} ops"
                return None, f"output '{cur}' {what}; no single path to a quantized layer"
            nxt = consumers[0]
            used_outputs = [o for o in nxt.output if o]
            if (
                nxt.op_type not in _TRANSPARENT_OPS
                or nxt.domain not in ("", "ai.onnx")
                or nxt.input[0] != cur
                or len(used_outputs) != 1
                or cur in self.subgraph_refs
            ):
                return None, f"output feeds {nxt.op_type} ('{nxt.name}'), not a quantized layer"
            chain.append(nxt)
            cur = used_outputs[0]
        out = self.names.fresh(f"{start}_dequantized")
        nodes, _ = self.qdq_nodes(start, target.qparams, target.fmt, out)
        self.after.setdefault(node.name, []).extend(nodes)
        first = chain[0]
        first.input[0] = out
        return target, ""

    # -- assembly ------------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        old_nodes = list(self.graph.node)
        ordered = list(self.head)
        for n in old_nodes:
            ordered.append(n)
            ordered.extend(self.after.get(n.name, []))
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        self.graph.initializer.extend(self.new_inits)
        # Drop float weights nothing reads any more: they would double the model's size.
        read = {i for n in self.graph.node for i in n.input} | self.subgraph_refs
        read |= self.graph_outputs
        keep = [i for i in self.graph.initializer if i.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        # Old IR versions also list initializers as graph inputs: drop the removed ones there.
        graph_inputs = [
            i for i in self.graph.input if i.name in read or i.name not in self.initializers
        ]
        del self.graph.input[:]
        self.graph.input.extend(graph_inputs)
        try:
            onnx.checker.check_model(self.proto)
        except onnx.checker.ValidationError as exc:
            raise QvizError(
                f"the Q/DQ graph does not validate: {str(exc).strip().splitlines()[0]}"
            ) from exc
        return self.proto


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Name unnamed nodes as layer discovery does (``{op_type}_{index}``)."""
    for i, n in enumerate(graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"


def _unique_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: ORT reports and qviz maps layers back by node name."""
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            base = n.name or f"{n.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name = f"{base}_{k}"
                k += 1
            n.name = name
        seen.add(n.name)


def build_qdq_model(model: LoadedModel, results: Sequence[TensorResult]) -> onnx.ModelProto:
    """The Q/DQ graph for `results` (from `analyze` or a saved config), ready to save or run.

    Same as ``build_qdq(model, results).model``; use `build_qdq` for the record of what was
    quantized and how (evaluation and the fusion report need it).
    """
    return build_qdq(model, results).model


def build_qdq(model: LoadedModel, results: Sequence[TensorResult]) -> QdqModel:
    """The Q/DQ graph for `results` (from `analyze` or a saved config), with its record.

    Raises QvizError for a configuration the graph cannot express (NF4 or per-channel
    activations) or when the model cannot be upgraded to the opset the formats need.
    """
    b = _Builder(model, results)
    by_key: dict[tuple[str, TensorKind], TensorResult] = {}
    for r in results:
        if (r.name, r.kind) in by_key:
            raise QvizError(f"{r.kind.value} '{r.name}' is configured twice")
        by_key[(r.name, r.kind)] = r
    quantized_weights = {name for name, kind in by_key if kind is TensorKind.WEIGHT}

    # An activation whose every reader is kept float is not quantized anywhere: no Q/DQ.
    read_quantized = {
        act
        for layer in model.layers
        for act in layer.activations
        if (r := by_key.get((act, TensorKind.ACTIVATION))) is not None
        and receives_quantized_input(layer, r.layer.name, quantized_weights)
    }
    notes: list[str] = []
    weights: dict[str, QdqTensor] = {}
    acts: dict[str, QdqTensor] = {}
    for r in sorted(results, key=lambda r: (r.layer.depth, r.kind.value)):
        if r.kind is TensorKind.WEIGHT:
            weights[r.name] = b.quantize_weight(r)
        elif r.name in read_quantized:
            acts[r.name] = b.quantize_activation(r)
        else:
            notes.append(f"activation '{r.name}' is left float: every layer reading it is float")

    # Rewire each quantized layer to read the dequantized tensors.
    rewired: dict[str, set[str]] = {}
    plans: list[tuple[Layer, onnx.NodeProto, QdqTensor | None, list[QdqTensor], list[str]]] = []
    for layer in model.layers:
        node = b.node_of(layer)
        w = weights.get(layer.weight) if layer.weight is not None else None
        inputs: list[QdqTensor] = []
        floats: list[str] = []
        for act in layer.activations:
            qa = acts.get(act)
            if qa is not None and receives_quantized_input(layer, qa.layer, quantized_weights):
                inputs.append(qa)
                rewired.setdefault(act, set()).add(node.name)
                for i, name in enumerate(node.input):
                    if name == act:
                        node.input[i] = qa.graph_name
            else:
                floats.append(act)
        if w is not None:
            for i, name in enumerate(node.input):
                if name == layer.weight:
                    node.input[i] = w.graph_name
        if w is not None or inputs:
            plans.append((layer, node, w, inputs, floats))

    layers: list[QdqLayer] = []
    for layer, node, w, inputs, floats in plans:
        bias_int32, bias_note = False, ""
        if w is not None and len(inputs) == 1:
            bias_int32, bias_note = b.quantize_bias(node, inputs[0], w)
        output, note = b.quantize_output(node, acts, rewired)
        layers.append(
            QdqLayer(layer, w, tuple(inputs), tuple(floats), output, note, bias_int32, bias_note)
        )

    proto = b.finish()
    _unique_nodes(proto.graph)
    tensors = tuple(sorted([*weights.values(), *acts.values()], key=lambda t: t.depth))
    simulated = sorted(
        {f"{_format_text(t.fmt)} {t.kind.value}s" for t in tensors if t.mode is QdqMode.SIMULATED}
    )
    if simulated:
        notes.append("simulation only (no integer kernel reads them): " + ", ".join(simulated))
    return QdqModel(proto, tensors, tuple(layers), default_opset(proto), tuple(notes))


# --------------------------------------------------------------------------- size and saving


def _element_bytes(data_type: int) -> float:
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 0.5
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0.0
    return float(helper.tensor_dtype_to_np_dtype(data_type).itemsize)


def initializer_bytes(model: onnx.ModelProto, nominal: Mapping[str, float] | None = None) -> int:
    """Bytes of every initializer in its stored type (4-bit types count half a byte each,
    rounded up per tensor). `nominal` maps initializer names to bits per element to count
    instead (fake-quantized weights stored as float but meant for a narrower format)."""
    nominal = nominal or {}
    total = 0.0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1
        per = nominal[init.name] / 8 if init.name in nominal else _element_bytes(init.data_type)
        total += float(np.ceil(n * per))
    return int(total)


def save_qdq_model(qdq: QdqModel, path: str | Path) -> None:
    """Write the Q/DQ graph as one .onnx file, atomically (weights inside, up to 2 GB)."""
    data = qdq.serialized()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
