"""Graph rewrites at load time: old opsets upgraded, Constant weights made initializers,
activation shapes inferred. Each works in place (or returns the converted model) and returns
the notes the user should read."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from qviz.core.errors import first_line
from qviz.core.model.onnx_graph import default_opset, strip_weights, upgrade_opset

__all__ = [
    "MIN_KEPT_OPSET",
    "UPGRADE_TO_OPSET",
    "constants_to_initializers",
    "infer_shapes",
    "upgrade_old_opset",
]

#: Models whose default-domain opset is below this are upgraded to UPGRADE_TO_OPSET: 13 is
#: the first opset whose QuantizeLinear/DequantizeLinear take a per-channel ``axis``.
MIN_KEPT_OPSET = 13
#: Widely supported by runtimes, and converts cleanly from 7..12.
UPGRADE_TO_OPSET = 17


def upgrade_old_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` at opset UPGRADE_TO_OPSET if it was below MIN_KEPT_OPSET, else unchanged."""
    opset = default_opset(model)
    if opset is None or opset >= MIN_KEPT_OPSET:
        return model, []
    converted = upgrade_opset(model, UPGRADE_TO_OPSET)
    return converted, [f"ONNX opset {opset} was upgraded to {UPGRADE_TO_OPSET}"]


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, or None for sparse/string forms we leave alone."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


def constants_to_initializers(graph: onnx.GraphProto) -> list[str]:
    """Move top-level Constant nodes into initializers.

    Weights some exporters emit as Constant nodes must be initializers for layer discovery
    (and for ORT's quantization passes) to see them as weights.
    """
    keep: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and not node.domain else None
        if value is None or len(node.output) != 1:
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if not moved:
        return []
    del graph.node[:]
    graph.node.extend(keep)
    return [f"{moved} Constant nodes were turned into initializers"]


def infer_shapes(model: onnx.ModelProto) -> list[str]:
    """Fill ``value_info`` with inferred activation shapes; failure is a note, not an error."""
    light, _ = strip_weights(model)
    try:
        inferred = shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # InferenceError, or C++ errors surfacing as RuntimeError
        return [f"shape inference failed, activation shapes are unknown: {first_line(exc)}"]
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    # Outputs get their inferred types too, when the file left them blank.
    by_name = {o.name: o for o in inferred.graph.output}
    for out in model.graph.output:
        if not out.type.HasField("tensor_type") and out.name in by_name:
            out.type.CopyFrom(by_name[out.name].type)
    return []
