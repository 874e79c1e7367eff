"""Checks on a model file before qviz works on it: readable external data and a valid graph of
a supported opset. (A model that is already quantized is imported: ``qviz.core.imported``.)"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import external_data_helper, shape_inference

from qviz.core.errors import QvizError, first_line
from qviz.core.model.onnx_graph import PROTOBUF_LIMIT, all_tensors, default_opset

__all__ = [
    "MIN_SUPPORTED_OPSET",
    "check_model",
    "load_external_data",
]

#: The version converter has adapters from opset 7 on; older graphs are refused.
MIN_SUPPORTED_OPSET = 7

def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the external data of the model file ``path`` into ``model``; a missing file is
    a QvizError naming it."""
    base = path.parent
    for tensor in all_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        target = base / info.location
        if not target.is_file():
            raise QvizError(
                f"external data file '{info.location}' (tensor '{tensor.name}') is missing; "
                f"it must lie beside {path.name}"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise QvizError(f"cannot read the external data of '{path.name}': {exc}") from exc


def check_model(model: onnx.ModelProto, path: Path | None) -> list[str]:
    """Run onnx.checker; problems with the structure are errors, strict shape inference not.

    Returns notes. ``path`` is the file the model came from (None for an in-memory model):
    a model past protobuf's limit is checked from it.
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
    try:
        # One pass: structure first, then strict shape inference.
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QvizError(f"the ONNX model is invalid: {first_line(exc)}") from exc
    except shape_inference.InferenceError as exc:
        # Graphs ORT runs fine sometimes fail ONNX's strict inference (custom ops...): the
        # structure must still pass the plain check.
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as inner:
            raise QvizError(f"the ONNX model is invalid: {first_line(inner)}") from inner
        return [
            "strict ONNX shape check failed (activation shapes may be unknown): "
            f"{first_line(exc)}"
        ]
    return []
