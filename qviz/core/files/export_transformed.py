"""ORT overrides and TensorRT caches for configurations with transforms.

Both formats give scales for the tensors of a float model that another tool then quantizes;
they cannot describe a graph edit. So with transforms, the *transformed* float model is
written beside them (``NAME.transformed.onnx``): SmoothQuant / equalization scales folded in
(or explicit Muls), corrected biases in place, and GPTQ's weights as the float values of
their grid points — ORT's quantizer, given qviz's scale for such a weight, rounds every value
back to GPTQ's code. Quantize that model with the overrides (or build it with the cache).

TensorRT computes weight scales itself (symmetric int8 per channel, from each channel's
largest magnitude), so a cache cannot carry GPTQ's rounding, and bias correction holds only
when qviz's weights are quantized the way TensorRT will: those refuse with one line naming
the export that works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import onnx
from onnx import numpy_helper

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.methods import Method
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_path
from qviz.core.files.export import (
    ExportFormat,
    export_ort_overrides,
    export_trt_cache,
    ort_overrides_document,
    trt_cache_text,
)
from qviz.core.graph.transform_edits import apply_bias_corrections
from qviz.core.model.loading import TensorKind
from qviz.core.model.onnx_graph import PROTOBUF_LIMIT, FreshNames
from qviz.core.quant.formats import FormatKind, GranularityKind
from qviz.core.transforms.plan import TransformPlan

__all__ = ["export_transformed", "transformed_float_model", "transformed_path"]


def transformed_path(path: Path) -> Path:
    """Where the transformed float model goes beside `path`."""
    return path.with_name(f"{path.stem}.transformed.onnx")


def _has_transforms(plan: TransformPlan, results: Sequence[TensorResult]) -> bool:
    return not plan.identity or any(r.applied is not None for r in results)


def transformed_float_model(plan: TransformPlan, results: Sequence[TensorResult]
                            ) -> onnx.ModelProto:
    """The float model the transforms make: rescalings, corrected biases, GPTQ's values."""
    proto = onnx.ModelProto()
    proto.CopyFrom(plan.model.model)
    graph = proto.graph
    apply_bias_corrections(graph, FreshNames(graph), results)
    inits = {t.name: t for t in graph.initializer}
    for r in results:
        if r.kind is TensorKind.WEIGHT and r.applied is not None and r.applied.values is not None:
            inits[r.name].CopyFrom(numpy_helper.from_array(r.applied.values, r.name))
    return proto


def _refuse_for_trt(results: Sequence[TensorResult]) -> None:
    for r in results:
        a = r.applied
        if a is None:
            continue
        if a.values is not None:
            raise QvizError(
                f"TensorRT computes its own weight scales, so GPTQ's rounding ('{r.name}') "
                "cannot ship in a calibration cache: export --file-format qdq instead"
            )
        cfg = r.config
        trt_like = (cfg.fmt.kind is FormatKind.INT and cfg.fmt.bits == 8 and cfg.fmt.signed
                    and cfg.fmt.symmetric and cfg.spec.method is Method.MINMAX
                    and cfg.granularity.kind is GranularityKind.PER_CHANNEL)
        if not trt_like:
            raise QvizError(
                f"bias correction of '{r.name}' was computed for {cfg.label} weights, which "
                "TensorRT does not use (it quantizes int8 per channel from the largest "
                "magnitude): export --file-format qdq instead"
            )


def export_transformed(
    fmt: ExportFormat,
    plan: TransformPlan,
    results: Sequence[TensorResult],
    path: Path,
    trt_version: str,
) -> tuple[Path, ...]:
    """Write an ORT overrides file or a TensorRT cache, and the transformed float model
    beside it when the configuration transforms anything. Returns the files written; all
    are written atomically, together or not at all."""
    if not _has_transforms(plan, results):
        if fmt is ExportFormat.ORT_OVERRIDES:
            export_ort_overrides(results, path, plan.model)
        else:
            export_trt_cache(results, path, trt_version=trt_version)
        return (path,)
    if fmt is ExportFormat.TRT_CACHE:
        _refuse_for_trt(results)
        text = trt_cache_text(results, trt_version=trt_version)
    else:
        doc = ort_overrides_document(results, plan.model)
    proto = transformed_float_model(plan, results)
    size = proto.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise QvizError(f"the transformed float model is {size / 2**30:.1f} GiB; one .onnx file "
                        "holds at most 2 GiB: export --file-format qdq instead")
    beside = transformed_path(path)
    with ExitStack() as stack:
        tmp_model = stack.enter_context(atomic_path(beside))
        tmp_out = stack.enter_context(atomic_path(path))
        tmp_model.write_bytes(proto.SerializeToString())
        if fmt is ExportFormat.TRT_CACHE:
            tmp_out.write_text(text, encoding="ascii")
        else:
            doc["float_model"] = {
                "file": beside.name,
                "note": "the transformed float model: quantize it (not the original) with "
                        "these overrides",
            }
            tmp_out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return (path, beside)
