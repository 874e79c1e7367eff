"""Checks on a model file before qviz works on it: a valid graph of a supported opset, and
float (not already quantized). External data is checked in ``external_data``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
from onnx import shape_inference

from qviz.core.errors import QvizError, first_line
from qviz.core.model.onnx_graph import PROTOBUF_LIMIT, all_nodes, default_opset

__all__ = [
    "MIN_SUPPORTED_OPSET",
    "QUANTIZED_OP_TYPES",
    "check_model",
    "refuse_quantized",
]

#: The version converter has adapters from opset 7 on; older graphs are refused.
MIN_SUPPORTED_OPSET = 7

#: Op types that only appear in graphs that were quantized already (ONNX and ORT contrib ops).
QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
        "QOrderedMatMul",
    }
)


def refuse_quantized(model: onnx.ModelProto) -> None:
    """QvizError if the graph holds quantized ops: they hide the float weights qviz measures."""
    counts = Counter(
        n.op_type
        for n in all_nodes(model.graph)
        if n.op_type in QUANTIZED_OP_TYPES or n.op_type.startswith("QLinear")
    )
    if counts:
        found = ", ".join(f"{n} {op}" for op, n in counts.most_common())
        raise QvizError(
            f"model is already quantized: {found} nodes; open the float model instead"
        )


def check_model(model: onnx.ModelProto, path: Path | None) -> list[str]:
    """Run onnx.checker; problems with the structure are errors, strict shape inference not.

    Returns notes. ``path`` is the file the model came from (None for an in-memory model):
    a model past protobuf's limit, or whose weights are in external files (which the checker
    looks for beside the model), is checked from it.
    """
    opset = default_opset(model)
    if opset is None:
        raise QvizError("the model imports no default ONNX opset")
    if opset < MIN_SUPPORTED_OPSET:
        raise QvizError(
            f"ONNX opset {opset} is too old (qviz supports {MIN_SUPPORTED_OPSET} and newer); "
            "re-export the model with a recent exporter"
        )
    if opset > onnx.defs.onnx_opset_version():
        raise QvizError(
            f"ONNX opset {opset} is newer than this onnx package knows "
            f"({onnx.defs.onnx_opset_version()}); upgrade onnx and onnxruntime"
        )
    if model.ByteSize() > PROTOBUF_LIMIT:
        if path is None:
            raise QvizError("the model is larger than 2 GB; load it from its file")
        try:
            # The checker reads the weights itself when given the path.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise QvizError(f"the ONNX model is invalid: {first_line(exc)}") from exc
        return ["the model is larger than 2 GB: strict shape checks were skipped"]
    # The checker resolves external data files against the model's folder only when it reads
    # the model from its path; given the proto it would look in the working directory.
    external = path is not None and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )
    subject: onnx.ModelProto | str = str(path) if external else model
    try:
        # One pass: structure first, then strict shape inference.
        onnx.checker.check_model(subject, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QvizError(f"the ONNX model is invalid: {first_line(exc)}") from exc
    except shape_inference.InferenceError as exc:
        # Graphs ORT runs fine sometimes fail ONNX's strict inference (custom ops...): the
        # structure must still pass the plain check.
        try:
            onnx.checker.check_model(subject)
        except onnx.checker.ValidationError as inner:
            raise QvizError(f"the ONNX model is invalid: {first_line(inner)}") from inner
        return [
            "strict ONNX shape check failed (activation shapes may be unknown): "
            f"{first_line(exc)}"
        ]
    return []
