"""Files production consumes: the Q/DQ ONNX model, ORT quantization overrides, a TensorRT
calibration cache. (qviz's own config file is `config_file.py`; the report is `report.py`.)

Every exporter takes the `TensorResult`s on screen (or rebuilt from a config file by
`config_file.results_from_saved`) so what ships is exactly what was measured, and writes
through `qviz.core.files.atomic`, so a failed export never leaves a half-written file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

import qviz
from qviz.core.calibration.analysis import TensorResult
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open
from qviz.core.files.config_file import float32_from_hex, float32_hex
from qviz.core.files.validate import read_json, want_finite, want_int, want_positive
from qviz.core.graph.qdq import QdqModel, build_qdq, save_qdq_model
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import FormatKind, GranularityKind, NumberFormat

ORT_OVERRIDES_SCHEMA_VERSION = 1
ORT_OVERRIDES_FILE_TYPE = "qviz-ort-overrides"

# TensorRT reads the header's version and calibrator name; a cache whose version differs from
# the running TensorRT is ignored with a warning (and calibration re-runs), so let the caller
# pick. 8601 = TensorRT 8.6.1, the release most deployment containers still carry.
TRT_DEFAULT_VERSION = "8601"
TRT_CALIBRATOR = "EntropyCalibration2"
_TRT_QMAX = 127.0

_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)

# ONNX's protobuf encoding cannot hold a single message over 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 1


class ExportFormat(Enum):
    """What `qviz export --format` (and the app's Export dialog) can write."""

    QDQ = "qdq"
    CONFIG = "config"
    ORT_OVERRIDES = "ort-overrides"
    TRT_CACHE = "trt-cache"
    REPORT = "report"

    @property
    def suffix(self) -> str:
        """Default file suffix ("" for the report: a folder, or a .html/.md page)."""
        return {
            ExportFormat.QDQ: ".onnx",
            ExportFormat.CONFIG: ".json",
            ExportFormat.ORT_OVERRIDES: ".json",
            ExportFormat.TRT_CACHE: ".cache",
            ExportFormat.REPORT: "",
        }[self]

    @property
    def description(self) -> str:
        return {
            ExportFormat.QDQ: "Q/DQ ONNX model (the graph qviz measured)",
            ExportFormat.CONFIG: "qviz configuration file (reloads bit-for-bit)",
            ExportFormat.ORT_OVERRIDES: "ONNX Runtime TensorQuantOverrides (JSON)",
            ExportFormat.TRT_CACHE: "TensorRT INT8 calibration cache",
            ExportFormat.REPORT: "report (HTML or Markdown with SVG plots, and JSON)",
        }[self]


# --- Q/DQ ONNX ------------------------------------------------------------------------------


def export_qdq(
    model: LoadedModel, results: Sequence[TensorResult], path: str | Path
) -> QdqModel:
    """Write the Q/DQ graph as one self-contained .onnx file (weights inside), atomically.

    Returns the built graph's record; its `notes` say what is simulation only (formats with
    no ONNX type are stored fake-quantized in float and never run natively).
    """
    qdq = build_qdq(model, results)
    size = qdq.model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise QvizError(
            f"the Q/DQ model is {size / 2**30:.1f} GiB; a single .onnx file holds at most 2 GiB"
        )
    save_qdq_model(qdq, path)
    return qdq


# --- ONNX Runtime TensorQuantOverrides --------------------------------------------------------

# onnxruntime.quantization.QuantType member names, by (format kind, bits, signed).
_ORT_QUANT_TYPES: dict[tuple[FormatKind, int, bool], str] = {
    (FormatKind.INT, 8, True): "QInt8",
    (FormatKind.INT, 8, False): "QUInt8",
    (FormatKind.INT, 4, True): "QInt4",
    (FormatKind.INT, 4, False): "QUInt4",
    (FormatKind.FP8_E4M3FN, 8, True): "QFLOAT8E4M3FN",
}


def ort_quant_type(fmt: NumberFormat) -> str | None:
    """The `QuantType` name ORT's quantizer knows for `fmt`, or None (e.g. fp8 e5m2, int6)."""
    return _ORT_QUANT_TYPES.get((fmt.kind, fmt.bits, fmt.signed))


def _zp_json(value: ArrayLike) -> int | float:
    """A zero point (one value) as JSON: an int for integer formats, a float for FP8 (always 0)."""
    a = np.asarray(value)
    return int(a.item()) if a.dtype.kind in "iu" else float(a.item())


def ort_overrides(results: Sequence[TensorResult]) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides in JSON types: tensor -> one dict (per tensor) or one per channel.

    Each dict carries `quant_type`, `scale` and `zero_point`; the first dict of a per-channel
    weight also carries `axis`. `symmetric` is deliberately absent: ORT rejects it next to an
    explicit scale and zero point ("invalid with 'scale' and 'zero_point'"), and the zero point
    already says everything symmetry would.
    """
    unsupported = []
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        fmt = r.config.fmt
        qtype = ort_quant_type(fmt)
        if qtype is None:
            unsupported.append(f"{r.name} ({fmt.label})")
            continue
        if r.config.granularity.kind is GranularityKind.PER_GROUP or r.qparams.block_size:
            unsupported.append(f"{r.name} (per-group)")
            continue
        scale = np.asarray(r.qparams.scale, dtype=np.float32)
        zp = np.asarray(r.qparams.zero_point)
        if r.qparams.axis is None:
            out[r.name] = [
                {"quant_type": qtype, "scale": float(scale), "zero_point": _zp_json(zp)}
            ]
            continue
        entries: list[dict[str, Any]] = [
            {"scale": float(s), "zero_point": _zp_json(z)}
            for s, z in zip(scale.reshape(-1), zp.reshape(-1), strict=True)
        ]
        # ORT reads quant_type and axis from the first channel's dict only.
        entries[0] = {"quant_type": qtype, "axis": int(r.qparams.axis), **entries[0]}
        out[r.name] = entries
    if unsupported:
        shown = ", ".join(unsupported[:3]) + (" …" if len(unsupported) > 3 else "")
        raise QvizError(
            f"ONNX Runtime's quantizer cannot express {len(unsupported)} tensor(s): {shown}; "
            f"export a Q/DQ model instead"
        )
    return out


def ort_overrides_document(
    results: Sequence[TensorResult], model: LoadedModel | None = None
) -> dict[str, Any]:
    """The JSON document `export_ort_overrides` writes: the overrides plus the quantize_static
    options that make ORT quantize the same way (QDQ, the same default types, per-channel)."""
    overrides = ort_overrides(results)  # refuses formats ORT's quantizer has no type for
    weights = [r for r in results if r.kind is TensorKind.WEIGHT]
    acts = [r for r in results if r.kind is TensorKind.ACTIVATION]

    def common_type(rs: Sequence[TensorResult]) -> str:
        types = {t for r in rs if (t := ort_quant_type(r.config.fmt)) is not None}
        return types.pop() if len(types) == 1 else "QInt8"

    doc: dict[str, Any] = {
        "schema_version": ORT_OVERRIDES_SCHEMA_VERSION,
        "file": ORT_OVERRIDES_FILE_TYPE,
        "qviz_version": qviz.__version__,
    }
    if model is not None:
        doc["model"] = {"source": str(model.source), "sha256": model.sha256}
    layer_ops = sorted({r.layer.op_type for r in results})
    doc["quantize_static"] = {
        "quant_format": "QDQ",
        "activation_type": common_type(acts),
        "weight_type": common_type(weights),
        "per_channel": any(r.qparams.axis is not None for r in weights),
        # Only the layers qviz analysed: ORT would otherwise also quantize Squeeze/Reshape/...
        # and give their outputs their *input's* parameters, overriding qviz's.
        "op_types_to_quantize": layer_ops,
        "extra_options": {
            # Otherwise ORT may enlarge a weight's scale to keep int32 biases in range,
            # and the weights would no longer be qviz's.
            "QDQDisableWeightAdjustForInt32Bias": True,
            # ORT would also Q/DQ every layer's output with ranges of its own calibration,
            # error qviz never measured. Without it ORT quantizes exactly qviz's tensors (and
            # the result runs bit-identical to qviz's Q/DQ graph in simulation) but cannot
            # fuse into QLinearConv/QLinearMatMul: ship the Q/DQ export for fused kernels.
            "OpTypesToExcludeOutputQuantization": layer_ops,
        },
    }
    doc["TensorQuantOverrides"] = overrides
    return doc


def export_ort_overrides(
    results: Sequence[TensorResult], path: str | Path, model: LoadedModel | None = None
) -> None:
    """Write ONNX Runtime TensorQuantOverrides as JSON (read back with `load_ort_overrides`)."""
    doc = ort_overrides_document(results, model)
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    doc = read_json(path, what)
    if not isinstance(doc, dict):
        raise QvizError(f"{path}: not {what}")
    return doc


def load_ort_overrides(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides ready for `quantize_static(extra_options={"TensorQuantOverrides":
    ...})`: `quant_type` as `QuantType`, `scale` as `np.float32`, `zero_point` in the numpy
    type of the quant type (np.int8, np.uint8, ...), as ORT's quantizer requires.

    Accepts qviz's file or a bare {tensor: [dicts]} mapping in the same JSON spelling. Scales
    must be finite and positive, zero points integers in the quant type's range, an axis a
    non-negative integer: one QvizError line naming the file, tensor and field otherwise.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import ONNX_TYPE_TO_NP_TYPE

    doc = _read_json(path, "an ORT overrides file")
    version = doc.get("schema_version")
    if isinstance(version, int) and version > ORT_OVERRIDES_SCHEMA_VERSION:
        raise QvizError(
            f"{path}: ORT overrides file is schema_version {version}; "
            f"this qviz reads up to {ORT_OVERRIDES_SCHEMA_VERSION}"
        )
    raw = doc.get("TensorQuantOverrides", doc if "schema_version" not in doc else None)
    if not isinstance(raw, Mapping):
        raise QvizError(f"{path}: no TensorQuantOverrides mapping")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entries in raw.items():
        what = f"{path}: tensor '{name}'"
        if not isinstance(entries, list) or not entries:
            raise QvizError(f"{what}: overrides must be a non-empty list")
        if not all(isinstance(e, Mapping) for e in entries):
            raise QvizError(f"{what}: each override must be an object")
        qtype_name = entries[0].get("quant_type", "QInt8")
        try:
            qtype = QuantType[qtype_name]
        except (KeyError, TypeError):
            raise QvizError(f"{what}: unknown quant_type {qtype_name!r}") from None
        np_type = np.dtype(ONNX_TYPE_TO_NP_TYPE[qtype.tensor_type])
        converted = []
        for i, entry in enumerate(entries):
            field = f"{what}[{i}]"
            item = dict(entry)
            if "quant_type" in item:
                item["quant_type"] = qtype
            if "scale" in item:
                scale = want_positive(item["scale"], f"{field}.scale")
                if not _F32_TINY <= scale <= _F32_MAX:
                    raise QvizError(f"{field}.scale: {scale!r} is outside float32's normal range")
                item["scale"] = np.array(scale, dtype=np.float32)
            if "zero_point" in item:
                item["zero_point"] = _zero_point(item["zero_point"], np_type, f"{field}")
            if "axis" in item:
                want_int(item["axis"], f"{field}.axis", 0, 64)
            converted.append(item)
        out[str(name)] = converted
    return out


def _zero_point(value: Any, np_type: np.dtype, field: str) -> np.ndarray:
    number = want_finite(value, f"{field}.zero_point")
    if np_type.kind in "iu":
        info = np.iinfo(np_type)
        if not number.is_integer() or not info.min <= number <= info.max:
            raise QvizError(
                f"{field}.zero_point: {value!r} is not an integer in [{info.min}, {info.max}] "
                f"({np_type.name})"
            )
    elif number != 0:
        raise QvizError(f"{field}.zero_point: {np_type.name} zero points are 0, not {value!r}")
    return np.array(number, dtype=np_type)


def load_ort_quantize_options(path: str | Path) -> dict[str, Any]:
    """Keyword arguments for `onnxruntime.quantization.quantize_static` from qviz's overrides
    file: `quant_format`, `activation_type`, `weight_type`, `per_channel`,
    `op_types_to_quantize` and `extra_options` (with the converted TensorQuantOverrides).
    Add the model paths and a calibration data reader (ORT still calibrates, then uses
    qviz's scales wherever an override gives one).
    """
    from onnxruntime.quantization import QuantFormat, QuantType

    doc = _read_json(path, "an ORT overrides file")
    options = doc.get("quantize_static")
    if not isinstance(options, Mapping):
        raise QvizError(f"{path}: no quantize_static options (not written by qviz?)")
    extra_options = options.get("extra_options") or {}
    ops = options.get("op_types_to_quantize") or []
    if not isinstance(extra_options, Mapping) or not isinstance(ops, list):
        raise QvizError(f"{path}: quantize_static's extra_options/op_types_to_quantize are "
                        "malformed")
    try:
        kwargs: dict[str, Any] = {
            "quant_format": QuantFormat[options.get("quant_format", "QDQ")],
            "activation_type": QuantType[options.get("activation_type", "QInt8")],
            "weight_type": QuantType[options.get("weight_type", "QInt8")],
            "per_channel": bool(options.get("per_channel", False)),
            "op_types_to_quantize": list(options.get("op_types_to_quantize") or []) or None,
        }
    except (KeyError, TypeError) as exc:
        raise QvizError(f"{path}: unknown ORT option value {exc.args[0]!r}") from None
    extra = dict(options.get("extra_options") or {})
    extra["TensorQuantOverrides"] = load_ort_overrides(path)
    kwargs["extra_options"] = extra
    return kwargs


# --- TensorRT calibration cache ---------------------------------------------------------------


def trt_scale(r: TensorResult) -> np.float32:
    """TensorRT's per-tensor scale for an activation: amax / 127.

    TensorRT INT8 is symmetric (zero point 0, scale = amax / 127), so it cannot express an
    asymmetric range. The cache gets amax = max(|lo|, |hi|) of the range qviz's quantizer
    actually represents, lo = (qmin - zp) * scale and hi = (qmax - zp) * scale: the symmetric
    range that covers all of it, so nothing qviz kept is clipped by TensorRT (at the price of
    a coarser step for one-sided ranges such as post-ReLU tensors, which lose one bit). For
    int8 symmetric this is qviz's scale exactly, bit for bit. Computed in float64 (exact for
    the products involved) and rounded once to float32.
    """
    fmt = r.config.fmt
    scale = np.asarray(r.qparams.scale, dtype=np.float64)
    zp = np.asarray(r.qparams.zero_point).astype(np.float64)
    lo = (fmt.qmin - zp) * scale
    hi = (fmt.qmax - zp) * scale
    amax = float(np.max(np.maximum(np.abs(lo), np.abs(hi))))
    return np.float32(amax / _TRT_QMAX)


def trt_cache_text(
    results: Sequence[TensorResult],
    *,
    trt_version: str = TRT_DEFAULT_VERSION,
    calibrator: str = TRT_CALIBRATOR,
) -> str:
    """Header line `TRT-<version>-<calibrator>`, then `tensor: <float32 bits as 8 hex digits>`
    for each activation. Weights are left out: TensorRT computes weight scales itself."""
    lines = [f"TRT-{trt_version}-{calibrator}"]
    for r in results:
        if r.kind is not TensorKind.ACTIVATION:
            continue
        if ":" in r.name or "\n" in r.name:
            # The cache is "name: value" per line; such a name cannot be written unambiguously.
            raise QvizError(f"tensor name {r.name!r} cannot be written in a TensorRT cache")
        lines.append(f"{r.name}: {float32_hex(trt_scale(r))}")
    if len(lines) == 1:
        raise QvizError("no quantized activations: a TensorRT calibration cache would be empty")
    return "\n".join(lines) + "\n"


def export_trt_cache(
    results: Sequence[TensorResult],
    path: str | Path,
    *,
    trt_version: str = TRT_DEFAULT_VERSION,
    calibrator: str = TRT_CALIBRATOR,
) -> None:
    """Write a TensorRT INT8 calibration cache (see `trt_scale` for the range convention)."""
    text = trt_cache_text(results, trt_version=trt_version, calibrator=calibrator)
    with atomic_open(path, "w") as f:
        f.write(text)


def read_trt_cache(path: str | Path) -> tuple[str, dict[str, np.float32]]:
    """Parse a TensorRT calibration cache: (header, tensor -> float32 scale)."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QvizError(f"{path}: cannot read a TensorRT calibration cache ({exc})") from None
    if not lines or not lines[0].startswith("TRT-"):
        raise QvizError(f"{path}: not a TensorRT calibration cache (no TRT- header)")
    scales: dict[str, np.float32] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        if not sep:
            raise QvizError(f"{path}:{i}: expected 'tensor: hex'")
        scales[name.strip()] = float32_from_hex(value.strip())
    return lines[0], scales

