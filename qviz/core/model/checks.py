"""Checks on a model file before qviz works on it: a valid graph of a supported opset.
External data is checked in ``external_data``; a model that is already quantized is
imported (``qviz.core.imported``)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import shape_inference

from qviz.core.errors import QvizError, first_line
from qviz.core.model.onnx_graph import PROTOBUF_LIMIT, default_opset

__all__ = [
    "MIN_SUPPORTED_OPSET",
    "check_model",
]

#: The version converter has adapters from opset 7 on; older graphs are refused.
MIN_SUPPORTED_OPSET = 7


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
