"""Write channel rescalings into a copy of the float graph: the transformed float model.

The result computes the same function as the original (up to float rounding): what a
transform changes is only *where* the numbers are large, which is what quantization cares
about. Every tensor keeps its name — weights, layer inputs and outputs — so configurations,
statistics and layer names still apply; new tensors and nodes get fresh names. Node names are
fixed before anything is inserted, so unnamed nodes keep the names layer discovery gave them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.graph.qdq_files import QdqFolder
from qviz.core.model.external_data import read_tensor, uses_external
from qviz.core.model.loading import LoadedModel
from qviz.core.model.onnx_graph import FreshNames, name_nodes
from qviz.core.transforms.sites import FoldKind, ScalingSite

__all__ = ["ModelRewrite", "channel_shape"]


def channel_shape(s: np.ndarray, axis: int, rank: int | None) -> np.ndarray:
    """``s`` laid out to broadcast along ``axis`` of a tensor of ``rank`` (trailing dims)."""
    if rank is None or axis == rank - 1:
        return s.reshape(-1)
    return s.reshape((-1,) + (1,) * (rank - 1 - axis))


class _Graph:
    """The mutable copy being rewritten."""

    def __init__(self, model: LoadedModel) -> None:
        # A model whose weights are in files gets a folder of its own: the rescaled tensors
        # are written there as they are made, the rest copied at the end (`QdqFolder`), so
        # the graph stays small and sessions read every tensor from one place.
        self.data_dir = model.data_dir
        self.folder = QdqFolder(model.data_dir) if model.data_dir is not None else None
        self.new_values: dict[str, np.ndarray] = {}
        # New tensors moved to the folder's file (read back from there when asked for).
        self.in_folder: dict[str, onnx.TensorProto] = {}
        proto = onnx.ModelProto()
        proto.CopyFrom(model.model)
        name_nodes(proto.graph)
        self.proto = proto
        self.graph = proto.graph
        self.names = FreshNames(self.graph)
        self.nodes = {n.name: n for n in self.graph.node}
        self.inits = {t.name: t for t in self.graph.initializer}
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.readers: dict[str, int] = {}
        for n in self.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1

    def value(self, name: str) -> np.ndarray:
        if name in self.new_values:
            return self.new_values[name]
        if name in self.in_folder:
            assert self.folder is not None
            return self.folder.read(self.in_folder[name])
        return read_tensor(self.inits[name], self.data_dir)

    def _stored(self, name: str, value: np.ndarray, dtype: np.dtype) -> onnx.TensorProto:
        array = np.asarray(value).astype(dtype, copy=False)
        tensor = numpy_helper.from_array(array, name)
        if self.folder is not None:
            self.folder.add(tensor)  # its data now in the folder's file, read back from here
        if uses_external(tensor):
            # Not held: a rescaled model's weights would all be in memory at once.
            # A copy: the tensor's protobuf arena still holds the bytes moved to the file.
            ref = onnx.TensorProto()
            ref.CopyFrom(tensor)
            self.in_folder[name] = ref
        else:
            self.new_values[name] = array
        return tensor

    def set_value(self, name: str, value: np.ndarray) -> None:
        old = self.inits[name]
        dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
        old.CopyFrom(self._stored(name, value, dtype))

    def set_input_const(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give `node` the constant `value` as input `index`, copying a shared constant."""
        name = node.input[index]
        if self.readers.get(name, 0) == 1:
            self.set_value(name, value)
            return
        dtype = helper.tensor_dtype_to_np_dtype(self.inits[name].data_type)
        fresh = self.names.fresh(f"{name}_rescaled")
        tensor = self._stored(fresh, value, dtype)
        self.graph.initializer.append(tensor)
        self.inits[fresh] = self.graph.initializer[-1]
        self.readers[name] -= 1
        self.readers[fresh] = 1
        node.input[index] = fresh

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.names.fresh(base)
        self.graph.initializer.append(self._stored(name, value, np.dtype(np.float32)))
        self.inits[name] = self.graph.initializer[-1]
        return name

    def finish(self) -> onnx.ModelProto:
        ordered = []
        for n in list(self.graph.node):
            ordered.append(n)
            ordered.extend(self.after.get(n.name, []))
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        if self.folder is not None:
            self.folder.finish(self.proto)
        return self.proto


def _divide(value: np.ndarray, s: np.ndarray, axis: int, rank: int | None) -> np.ndarray:
    """A scalar or per-channel constant (checked by `find_site`) divided by ``s``."""
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return channel_shape(float(v.reshape(())) / s, axis, rank)
    position = v.ndim - 1 if rank is None else axis - (rank - v.ndim)
    shape = [1] * v.ndim
    shape[position] = s.size
    return v / s.reshape(shape)


def _apply_site(g: _Graph, site: ScalingSite, s: np.ndarray) -> None:
    axis, rank = site.axis, site.rank
    if not site.folded:
        _insert_mul(g, site, s)
        return
    for step in site.folds:
        node = g.nodes[step.node]
        if step.kind is FoldKind.NORM:
            for i in (1, 2):
                if len(node.input) > i and node.input[i]:
                    g.set_input_const(node, i, _divide(g.value(node.input[i]), s, axis, rank))
        elif step.kind in (FoldKind.MUL_CONST, FoldKind.ADD_CONST):
            assert step.const_input is not None
            k = step.const_input
            g.set_input_const(node, k, _divide(g.value(node.input[k]), s, axis, rank))
        elif step.kind is FoldKind.RELU6:
            ceiling = float(g.value(node.input[2]))
            hidden = g.names.fresh(f"{node.output[0]}_relu")
            out = node.output[0]
            g.readers[node.input[2]] = g.readers.get(node.input[2], 1) - 1
            if node.input[1]:
                g.readers[node.input[1]] = g.readers.get(node.input[1], 1) - 1
            node.op_type = "Relu"
            del node.input[1:]
            node.output[0] = hidden
            const = g.add_const(f"{out}_ceiling", channel_shape(ceiling / s, axis, rank))
            name = g.names.fresh(f"{node.name}_Min")
            g.after.setdefault(node.name, []).append(
                helper.make_node("Min", [hidden, const], [out], name=name)
            )
        else:  # LAYER: the weight is in the overlay; the bias is divided here
            has_bias = len(node.input) > 2 and bool(node.input[2])
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and has_bias:
                bias = g.value(node.input[2]).astype(np.float64).reshape(-1)
                g.set_input_const(node, 2, (bias if bias.size > 1 else bias * np.ones_like(s)) / s)


def _insert_mul(g: _Graph, site: ScalingSite, s: np.ndarray) -> None:
    """``X_unscaled -> Mul(1/s) -> X`` right after X's producer; X's other readers read the
    unscaled tensor."""
    x = site.activation
    producer = next(n for n in g.graph.node if x in n.output)
    unscaled = g.names.fresh(f"{x}_unscaled")
    for i, o in enumerate(producer.output):
        if o == x:
            producer.output[i] = unscaled
    consumers = {c.layer.node_name for c in site.consumers}
    for n in g.graph.node:
        if n.name in consumers:
            continue
        for i, name in enumerate(n.input):
            if name == x:
                n.input[i] = unscaled
    inv = g.add_const(f"{x}_inverse_scale", channel_shape(1.0 / s, site.axis, site.rank))
    mul = helper.make_node("Mul", [unscaled, inv], [x], name=g.names.fresh(f"{x}_smooth_Mul"))
    g.after.setdefault(producer.name, []).append(mul)


class ModelRewrite:
    """A rewrite in progress: rescaled weights are stored as they are given (in the new
    folder's data file when the model keeps its weights in files, so they are not all held
    in memory at once), and :meth:`finish` writes each site's scale in."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._graph = _Graph(model)

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Store the final value of weight ``name`` (the caller may drop ``value``)."""
        self._graph.set_value(name, value)

    def finish(self, sites: Sequence[tuple[ScalingSite, np.ndarray]]) -> LoadedModel:
        """The rewritten model, with each site's scale written in."""
        g, model = self._graph, self._model
        for site, s in sites:
            _apply_site(g, site, s)
        proto = g.finish()
        index = {n.name: i for i, n in enumerate(proto.graph.node)}
        layers = tuple(replace(layer, depth=index[layer.node_name]) for layer in model.layers)
        return LoadedModel(
            model=proto,
            source=model.source,
            sha256=model.sha256,
            inputs=model.inputs,
            outputs=model.outputs,
            layers=layers,
            notes=model.notes,
            data_dir=g.folder.path if g.folder is not None else None,
            keepalive=(model.keepalive, g.folder),
        )
