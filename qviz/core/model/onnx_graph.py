"""Walking and rewriting ONNX graphs: the helpers model loading and the Q/DQ builder share.

* walkers over a graph and every control-flow body inside it (``If``/``Loop``/``Scan``);
* node names: qviz refers to nodes by name (layers, ORT's reports), so unnamed nodes get the
  ``{op_type}_{index}`` name layer discovery gives them, and duplicates are made unique;
* fresh tensor/node names that collide with nothing in the graph or its bodies;
* the default-domain opset, and upgrading it with ``onnx.version_converter`` on a copy whose
  large weights are placeholders (:func:`strip_weights`), so models past protobuf's 2 GB
  limit convert and weights are not serialized again for every rewrite.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import onnx
from onnx import helper, version_converter

from qviz.core.errors import QvizError, first_line

__all__ = [
    "PROTOBUF_LIMIT",
    "FreshNames",
    "all_graphs",
    "all_nodes",
    "all_tensors",
    "default_opset",
    "name_nodes",
    "node_name",
    "restore_weights",
    "strip_weights",
    "subgraph_references",
    "unique_node_names",
    "upgrade_opset",
]

#: protobuf's limit on one serialized message: a model past it cannot be one ModelProto.
PROTOBUF_LIMIT = 2**31 - 1
# Tensors at least this big are swapped for placeholders during graph rewrites.
STRIP_BYTES = 1024
STRIPPED_LOCATION = "__qviz_stripped__"
# Below this size a model is copied whole before stripping (simpler, and cheap enough).
COPY_WHOLE_BYTES = 64 << 20


# --------------------------------------------------------------------------------- walkers


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph inside it, at any depth (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_graphs(g)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.node


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of ``graph`` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names read inside the subgraphs of ``graph`` (they may refer to outer-scope tensors)."""
    bodies = all_graphs(graph)
    next(bodies)  # the graph itself
    return {name for g in bodies for n in g.node for name in n.input}


# ----------------------------------------------------------------------------------- names


def node_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``{op_type}_{index}`` (its position in the graph) when it has none."""
    return node.name or f"{node.op_type}_{index}"


def name_nodes(graph: onnx.GraphProto) -> None:
    """Name the unnamed nodes of ``graph`` as layer discovery does (:func:`node_name`)."""
    for i, n in enumerate(graph.node):
        n.name = node_name(n, i)


def unique_node_names(graph: onnx.GraphProto) -> None:
    """Give every node of ``graph`` a unique name: ORT reports and qviz maps layers back by
    node name. Later duplicates get ``_1``, ``_2``... appended."""
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            base = node_name(n, i)
            name, k = base, 1
            while name in seen:
                name = f"{base}_{k}"
                k += 1
            n.name = name
        seen.add(n.name)


class FreshNames:
    """Tensor and node names that collide with nothing in a graph (or its subgraphs)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = set()
        for g in all_graphs(graph):
            self.used.update(i.name for i in g.input)
            self.used.update(o.name for o in g.output)
            self.used.update(i.name for i in g.initializer)
            self.used.update(v.name for v in g.value_info)
            for n in g.node:
                self.used.update(n.input)
                self.used.update(n.output)
                self.used.add(n.name)

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... if taken; the name is taken from then on."""
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name


# ----------------------------------------------------------------------------------- opset


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain ("" or "ai.onnx") opset, None if it imports none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def upgrade_opset(model: onnx.ModelProto, opset: int, why: str = "") -> onnx.ModelProto:
    """``model`` at default-domain ``opset``: converted when its own is lower, else itself.

    Conversion runs on a copy with placeholder weights (:func:`strip_weights`) and the IR
    version is raised to what the new opset needs. ``why`` (e.g. " (needed for these
    formats)") is put into the QvizError raised when the converter fails.
    """
    current = default_opset(model)
    if current is None:
        raise QvizError("the model imports no default ONNX opset")
    if current >= opset:
        return model
    light, originals = strip_weights(model)
    try:
        converted = version_converter.convert_version(light, opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise QvizError(
            f"cannot upgrade ONNX opset {current} to {opset}{why}: {first_line(exc)}"
        ) from exc
    restore_weights(converted, originals)
    needed = helper.find_min_ir_version_for(list(converted.opset_import), True)
    converted.ir_version = max(converted.ir_version, needed)
    return converted


# ------------------------------------------------------------------------ placeholder weights


def strip_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy whose big top-level initializers are placeholders, and the originals by name.

    The placeholders keep dtype and dims (all that conversion and shape inference read) and
    point at a fake external file, so protobuf's 2 GB limit and repeated serialization of
    the weights are avoided. :func:`restore_weights` puts the originals back.
    """
    light = onnx.ModelProto()
    if model.ByteSize() < COPY_WHOLE_BYTES:
        light.CopyFrom(model)
    else:
        _copy_without_weights(model, light)
    originals: dict[str, onnx.TensorProto] = {}
    by_name = {t.name: t for t in model.graph.initializer}
    for tensor in light.graph.initializer:
        source = by_name[tensor.name]
        if source.ByteSize() < STRIP_BYTES:
            continue
        originals[tensor.name] = source
        dims, dtype, name = list(source.dims), source.data_type, source.name
        tensor.Clear()
        tensor.name, tensor.data_type = name, dtype
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", STRIPPED_LOCATION
    return light, originals


def _copy_without_weights(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    """CopyFrom for huge models: copy everything but initializer payloads."""
    graph = model.graph
    saved = list(graph.initializer)
    del graph.initializer[:]
    try:
        light.CopyFrom(model)
    finally:
        graph.initializer.extend(saved)
    for t in saved:
        shell = light.graph.initializer.add()
        shell.name, shell.data_type = t.name, t.data_type
        shell.dims.extend(t.dims)
        if t.ByteSize() < STRIP_BYTES:
            shell.CopyFrom(t)


def restore_weights(light: onnx.ModelProto, originals: Mapping[str, onnx.TensorProto]) -> None:
    """Put the weights :func:`strip_weights` replaced back into ``light`` (in place)."""
    for tensor in light.graph.initializer:
        if tensor.name in originals and any(
            e.value == STRIPPED_LOCATION for e in tensor.external_data
        ):
            tensor.CopyFrom(originals[tensor.name])
