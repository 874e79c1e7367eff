"""The node builder of the Q/DQ graph: the graph edits behind :func:`qviz.core.graph.qdq.build_qdq`.

Each ``quantize_*`` method adds the nodes and initializers for one tensor (weight, activation,
bias, layer output) and returns what it did; :meth:`QdqBuilder.finish` puts the new nodes in
order, drops the float weights nothing reads any more and validates the result. Why each
tensor is represented the way it is: see :mod:`qviz.core.graph.qdq`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.errors import QvizError, first_line
from qviz.core.graph.containers import (
    container_dtype,
    container_format,
    format_text,
    in_container,
    onnx_array,
    required_opset,
)
from qviz.core.graph.qdq_files import INLINE_NEW_BYTES, QdqFolder, checkable
from qviz.core.graph.qdq_types import QdqMode, QdqTensor
from qviz.core.graph.transform_edits import apply_bias_corrections, weight_values
from qviz.core.model.external_data import read_tensor
from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.model.onnx_graph import (
    FreshNames,
    name_nodes,
    subgraph_references,
    upgrade_opset,
)
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import dequantize, quantize_in_chunks

if TYPE_CHECKING:  # analysis imports the calibration stack; the graph builder needs none of it
    from qviz.core.calibration.analysis import TensorResult

__all__ = ["QdqBuilder"]

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



def _added_bytes(results: Sequence[TensorResult]) -> int:
    """About what the quantized weights of `results` take (float32 for formats stored
    dequantized)."""
    from qviz.core.graph.qdq_files import new_tensor_bytes
    from qviz.core.model.loading import TensorKind

    sizes = []
    for r in results:
        if r.kind is TensorKind.WEIGHT and r.layer.weight_shape:
            bits = 32.0 if container_dtype(r.config.fmt) is None else float(r.config.fmt.bits)
            sizes.append((tuple(int(d) for d in r.layer.weight_shape), bits))
    return new_tensor_bytes(sizes)


class QdqBuilder:
    """Mutable state of one `build_qdq` call: the copied graph and the nodes and
    initializers added to it, put in place by :meth:`finish`. For a model whose weights are
    in files, new large tensors go to a temporary folder as they are made (`QdqFolder`)."""

    def __init__(self, model: LoadedModel, results: Sequence[TensorResult]) -> None:
        self.loaded = model
        self.results = list(results)
        self.folder = None
        if model.data_dir is not None and _added_bytes(self.results) > INLINE_NEW_BYTES:
            self.folder = QdqFolder(model.data_dir)
        # Where the graph's external tensors are: the folder, or the source's (inline mode).
        self.data_dir = model.data_dir if self.folder is None else self.folder.path
        proto = onnx.ModelProto()
        proto.CopyFrom(model.model)
        name_nodes(proto.graph)  # before any conversion, so layer node names still match
        self.proto = upgrade_opset(
            proto, required_opset(self.results), " (needed for these formats)"
        )
        self.graph = self.proto.graph
        self.names = FreshNames(self.graph)
        # Bias correction (qviz.core.transforms): corrected biases in place before the maps.
        self.notes = apply_bias_corrections(self.graph, self.names, self.results)
        self.nodes_by_name = {n.name: n for n in self.graph.node}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.subgraph_refs = subgraph_references(self.graph)
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
        tensor = numpy_helper.from_array(array, name)
        self.new_inits.append(tensor if self.folder is None else self.folder.add(tensor))
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
        simulated = in_container(fmt)
        store_fmt = container_format(fmt) if simulated else fmt
        scale = self.add_init(f"{tensor}_scale", np.asarray(qp.scale, np.float32))
        zp = self.add_init(
            f"{tensor}_zero_point", onnx_array(np.asarray(qp.zero_point), store_fmt)
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
        w = weight_values(r, self.loaded.weight)  # GPTQ's rounded values, if any
        fmt, qp = r.config.fmt, r.qparams
        if container_dtype(fmt) is None:  # NF4, MXFP4, NVFP4: stored dequantized
            fq = quantize_in_chunks(w, qp, fmt, fake=True)
            out = self.add_init(f"{r.name}_fake_quantized", fq)
            return QdqTensor.of(r, QdqMode.SIMULATED, out, stored_name=out)
        # 2..7-bit INT: quantize saturates to the narrow range, stored in int8/uint8.
        q = onnx_array(quantize_in_chunks(w, qp, fmt), fmt)
        stored = self.add_init(f"{r.name}_quantized", q)
        scale = self.add_init(f"{r.name}_scale", np.asarray(qp.scale, np.float32))
        zp = self.add_init(f"{r.name}_zero_point", onnx_array(np.asarray(qp.zero_point), fmt))
        out = self.names.fresh(f"{r.name}_dequantized")
        dq = helper.make_node(
            "DequantizeLinear",
            [stored, scale, zp],
            [out],
            name=self.names.fresh(f"{r.name}_DequantizeLinear"),
        )
        # In make_node's (sorted) attribute order.
        if qp.axis is not None:
            dq.attribute.append(helper.make_attribute("axis", qp.axis))
        if qp.block_size is not None:
            dq.attribute.append(helper.make_attribute("block_size", qp.block_size))
        self.head.append(dq)
        return QdqTensor.of(r, QdqMode.NATIVE, out, stored_name=stored)

    # -- activations ---------------------------------------------------------------------
    def quantize_activation(self, r: TensorResult) -> QdqTensor:
        fmt, qp = r.config.fmt, r.qparams
        if fmt.weight_only:
            raise QvizError(
                f"activation '{r.name}': {fmt.spec.upper()} is a weight-only format"
            )
        if qp.axis is not None:
            raise QvizError(
                f"activation '{r.name}': activations are quantized per tensor, not "
                f"{r.config.granularity.label}"
            )
        out = self.names.fresh(f"{r.name}_dequantized")
        nodes, _ = self.qdq_nodes(r.name, qp, fmt, out)
        self.place_after(r.name, nodes)
        mode = QdqMode.SIMULATED if in_container(fmt) else QdqMode.NATIVE
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
        bias = read_tensor(self.initializers[name], self.loaded.data_dir).astype(np.float32)
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
        cur = start
        chain: list[onnx.NodeProto] = []
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
                        f"the next input '{cur}' is {format_text(target.fmt)}, not 8-bit int",
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
        subject: onnx.ModelProto | str = self.proto
        if self.folder is not None:
            self.folder.finish(self.proto)
            # The checker looks for external data beside the file it is given (with a proto,
            # in the working directory): check the copy saved in the folder.
            subject = str(self.folder.write_graph(self.proto))
        elif self.data_dir is not None:
            subject = checkable(self.proto)
        try:
            onnx.checker.check_model(subject)
        except onnx.checker.ValidationError as exc:
            raise QvizError(f"the Q/DQ graph does not validate: {first_line(exc)}") from exc
        return self.proto
