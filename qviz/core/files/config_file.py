"""qviz's own configuration file: what the user chose, and the exact numbers it produced.

The file is JSON so it can be read, diffed and reviewed. It records the choices (defaults,
per-tensor overrides) *and* the resulting scales and zero points of every quantized tensor, so a
pipeline can rebuild the same Q/DQ graph without the calibration data. Loading it back gives
the same scales bit for bit: each float32 scale is stored twice, as a readable decimal and as
the hex of its IEEE-754 bits; the hex is what is loaded, the decimal is checked against it so a
hand edit of one but not the other is caught instead of silently ignored.

Every file carries `schema_version`. `load_config` upgrades older files one version at a time
through `MIGRATIONS`, and refuses files written by a newer qviz rather than guessing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import qviz
from qviz.core.calibration.analysis import TensorResult, quant_tensors
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.metrics import TensorMetrics
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open
from qviz.core.files.validate import (
    MAX_GROUP_SIZE,
    read_json,
    want_finite,
    want_int,
    want_str,
)
from qviz.core.files.validate import migrate as migrate_document
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import (
    DEFAULT_GROUP_SIZE,
    FormatKind,
    Granularity,
    NumberFormat,
    PerAxis,
    PerGroup,
)
from qviz.core.quant.qparams import QParams, blocked_shape

SCHEMA_VERSION = 1
FILE_TYPE = "qviz-config"

JsonDict = dict[str, Any]
# MIGRATIONS[n] upgrades a schema_version n document to n + 1. A new schema version adds one
# entry here and keeps its predecessor's golden file under tests/data loading.
MIGRATIONS: dict[int, Callable[[JsonDict], JsonDict]] = {}


@dataclass(frozen=True)
class SavedTensor:
    """One quantized tensor as saved: its configuration and the exact parameters it got."""

    name: str
    kind: TensorKind
    layer: str
    config: TensorConfig
    qparams: QParams
    metrics: TensorMetrics


@dataclass(frozen=True)
class SavedConfig:
    """A configuration file, loaded and upgraded to the current schema."""

    quant_config: QuantConfig
    tensors: tuple[SavedTensor, ...]
    model_source: str
    model_sha256: str
    qviz_version: str
    schema_version: int = SCHEMA_VERSION  # of the file as it was on disk, before migration
    origin: str = "the config file"  # where it was read from, for messages

    def tensor(self, name: str) -> SavedTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# --- scalars and arrays ---------------------------------------------------------------------


def float32_hex(value: float | np.floating) -> str:
    """The 8 hex digits of a float32's bits, most significant first (as TensorRT writes them)."""
    return np.asarray(value, dtype=">f4").tobytes().hex()


def float32_from_hex(text: str) -> np.float32:
    """Inverse of `float32_hex`."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 4:
        raise QvizError(f"'{text}' is not the 8 hex digits of a float32")
    return np.frombuffer(raw, dtype=">f4")[0].astype(np.float32)


def encode_float(value: float) -> float | str:
    """Strict JSON has no Infinity/NaN; an exact tensor's SQNR is +inf, so spell those out."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QvizError(f"{what}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise QvizError(f"{what}: expected a number, got {value!r}") from None


def encode_array(a: np.ndarray) -> JsonDict:
    """A small numeric array as {dtype, shape, values}; float values as exact decimals."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        values: list[Any] = [int(v) for v in a.reshape(-1)]
    else:
        # repr of the float64 of a float16/32/64 (or float8) value reads back to the same value.
        values = [encode_float(v) for v in a.astype(np.float64).reshape(-1)]
    return {"dtype": a.dtype.name, "shape": list(a.shape), "values": values}


def decode_array(d: Mapping[str, Any], what: str, dtype: np.dtype | None = None) -> np.ndarray:
    if not isinstance(d, Mapping):
        raise QvizError(f"{what}: malformed array (needs dtype, shape and values)")
    try:
        shape = tuple(want_int(s, f"{what}: shape", 0) for s in d["shape"])
        raw = d["values"]
        dt = np.dtype(dtype if dtype is not None else d["dtype"])
    except (KeyError, TypeError, ValueError):
        raise QvizError(f"{what}: malformed array (needs dtype, shape and values)") from None
    if dt.kind not in "biuf":
        raise QvizError(f"{what}: arrays hold numbers, not {dt.name}")
    if not isinstance(raw, list):
        raise QvizError(f"{what}: values must be a list")
    if len(raw) != math.prod(shape):
        raise QvizError(f"{what}: {len(raw)} values for shape {list(shape)}")
    values = [decode_float(v, what) for v in raw]
    return np.asarray(values, dtype=np.float64).astype(dt).reshape(shape)


# --- configuration choices ------------------------------------------------------------------


def encode_tensor_config(cfg: TensorConfig) -> JsonDict:
    """The user's choices for one tensor, in the words the CLI and `NumberFormat.parse` use."""
    # Only the parameters that apply are written (a group size for per-group, a percentile
    # for the percentile method...): a reader never has to guess which ones count.
    spec = cfg.spec
    gran = cfg.granularity
    doc: JsonDict = {
        "format": cfg.fmt.spec,
        "symmetric": cfg.fmt.symmetric,
        "pow2_scale": cfg.fmt.pow2_scale,
        "granularity": gran.kind.value,
    }
    if isinstance(gran, PerGroup):
        doc["group_size"] = gran.group_size
    if isinstance(gran, PerAxis) and gran.axis is not None:
        doc["granularity_axis"] = gran.axis
    doc["method"] = spec.method.value
    if spec.percentile is not None:
        doc["percentile"] = float(spec.percentile)
    if spec.manual_range is not None:
        doc["manual_range"] = [float(v) for v in spec.manual_range]
    doc["quantize"] = cfg.quantize
    return doc


def _bool(d: Mapping[str, Any], key: str, default: bool, what: str) -> bool:
    # bool("false") is True: a hand-written string must not silently flip a setting.
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise QvizError(f"{what}: '{key}' must be true or false, got {value!r}")
    return value


def decode_tensor_config(d: Mapping[str, Any], what: str) -> TensorConfig:
    if not isinstance(d, Mapping):
        raise QvizError(f"{what}: must be an object")
    try:
        fmt = NumberFormat.parse(
            want_str(d["format"], f"{what}: format"),
            symmetric=_bool(d, "symmetric", True, what),
            pow2_scale=_bool(d, "pow2_scale", False, what),
        )
        group_size = want_int(
            d.get("group_size", DEFAULT_GROUP_SIZE), f"{what}: group_size", 1, MAX_GROUP_SIZE
        )
        granularity = Granularity.parse(
            want_str(d["granularity"], f"{what}: granularity"), group_size
        )
        if isinstance(granularity, PerAxis) and d.get("granularity_axis") is not None:
            granularity = PerAxis(want_int(d["granularity_axis"], f"{what}: granularity_axis",
                                           0, 64))
        method = Method(d["method"])
    except KeyError as exc:
        raise QvizError(f"{what}: missing '{exc.args[0]}'") from None
    except (ValueError, TypeError) as exc:
        raise QvizError(f"{what}: {exc}") from None
    manual = d.get("manual_range")
    manual_range = None
    if manual is not None:
        if not isinstance(manual, list) or len(manual) != 2:
            raise QvizError(f"{what}: manual_range must be [low, high]")
        low = want_finite(manual[0], f"{what}: manual_range low")
        high = want_finite(manual[1], f"{what}: manual_range high")
        if not low < high:
            raise QvizError(f"{what}: manual_range [{low:g}, {high:g}] must have low < high")
        manual_range = (low, high)
    # Files written before the parameters were kept apart carry a percentile (and maybe a
    # range) for every method: only the one that applies is read, but each must be valid.
    percentile = d.get("percentile")
    if percentile is not None:
        percentile = want_finite(percentile, f"{what}: percentile")
        if not 0.0 < percentile <= 100.0:
            raise QvizError(f"{what}: percentile must be in (0, 100], got {percentile:g}")
    spec = MethodSpec.of(method, percentile=percentile, manual_range=manual_range)
    return TensorConfig(spec, granularity, fmt, quantize=_bool(d, "quantize", True, what))


def encode_quant_config(config: QuantConfig) -> JsonDict:
    return {
        "defaults": {
            "weights": encode_tensor_config(config.weights),
            "activations": encode_tensor_config(config.activations),
        },
        "overrides": {
            name: encode_tensor_config(cfg) for name, cfg in sorted(config.overrides.items())
        },
    }


def decode_quant_config(doc: Mapping[str, Any], source: str = "config file") -> QuantConfig:
    defaults = doc.get("defaults")
    overrides = doc.get("overrides", {})
    if not isinstance(defaults, Mapping) or not isinstance(overrides, Mapping):
        raise QvizError(f"{source}: 'defaults' and 'overrides' must be objects")
    try:
        weights = decode_tensor_config(defaults["weights"], f"{source}: defaults.weights")
        activations = decode_tensor_config(
            defaults["activations"], f"{source}: defaults.activations"
        )
    except KeyError as exc:
        raise QvizError(f"{source}: defaults lack '{exc.args[0]}'") from None
    return QuantConfig(
        weights=weights,
        activations=activations,
        overrides={
            str(name): decode_tensor_config(cfg, f"{source}: override '{name}'")
            for name, cfg in overrides.items()
        },
    )


# --- quantization parameters and metrics ------------------------------------------------------


def encode_qparams(qp: QParams) -> JsonDict:
    scale = np.asarray(qp.scale, dtype=np.float32)
    zp = np.asarray(qp.zero_point)
    if zp.dtype.kind in "iu":
        zp_values: list[Any] = [int(v) for v in zp.reshape(-1)]
    else:  # FP8 zero points: stored as the exact decimal of their (always representable) value
        zp_values = [float(v) for v in zp.astype(np.float64).reshape(-1)]
    return {
        "axis": qp.axis,
        "block_size": qp.block_size,
        "shape": list(scale.shape),
        "scale": [float(v) for v in scale.reshape(-1)],
        "scale_hex": [float32_hex(v) for v in scale.reshape(-1)],
        "zero_point": zp_values,
        "zero_point_dtype": zp.dtype.name,
    }


def zero_point_range(fmt: NumberFormat) -> tuple[int, int]:
    """The zero points a format can hold: its integer type's range (0 only for FP8 and NF4)."""
    if fmt.kind is FormatKind.INT:
        if fmt.signed:
            half = 2 ** (fmt.bits - 1)
            return -half, half - 1
        return 0, 2**fmt.bits - 1
    return 0, 0


def decode_qparams(d: Mapping[str, Any], fmt: NumberFormat, what: str) -> QParams:
    try:
        shape = tuple(want_int(s, f"{what}: shape", 0) for s in d["shape"])
        hexes = list(d["scale_hex"])
        decimals = list(d["scale"])
        zps = list(d["zero_point"])
    except (KeyError, TypeError, ValueError):
        raise QvizError(f"{what}: needs shape, scale, scale_hex and zero_point") from None
    n = math.prod(shape)
    if not len(hexes) == len(decimals) == len(zps) == n:
        raise QvizError(f"{what}: scale/zero_point lengths do not match shape {list(shape)}")
    scale = np.array([float32_from_hex(str(h)) for h in hexes], dtype=np.float32)
    bad = np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))
    if bad.size:
        i = int(bad[0])
        raise QvizError(
            f"{what}: scale[{i}] is {float(scale[i])!r}; scales must be finite and positive"
        )
    readable = np.array([decode_float(v, what) for v in decimals], dtype=np.float64)
    # The decimals were written from these very float32 values, so they must map back onto
    # them exactly; a mismatch means one of the two was edited by hand.
    with np.errstate(over="ignore"):  # a huge hand-edited decimal is a mismatch, not a warning
        mismatch = np.flatnonzero(readable.astype(np.float32) != scale)
    if mismatch.size:
        i = int(mismatch[0])
        raise QvizError(
            f"{what}: scale[{i}] is {decimals[i]} but scale_hex[{i}] is {hexes[i]} "
            f"({float(scale[i])!r}); edit both or neither"
        )
    storage = np.dtype(fmt.storage_dtype)
    if d.get("zero_point_dtype", storage.name) != storage.name:
        raise QvizError(
            f"{what}: zero points are {d.get('zero_point_dtype')}, but {fmt.spec} stores "
            f"{storage.name}"
        )
    low, high = zero_point_range(fmt)
    zp_values = []
    for i, v in enumerate(zps):
        value = want_finite(v, f"{what}: zero_point[{i}]")
        if not value.is_integer() or not low <= value <= high:
            span = "0" if low == high == 0 else f"an integer in [{low}, {high}]"
            raise QvizError(f"{what}: zero_point[{i}] is {v!r}; {fmt.spec} takes {span}")
        zp_values.append(value)
    zp = np.array(zp_values, dtype=np.float64).astype(storage)
    axis = d.get("axis")
    block = d.get("block_size")
    try:
        return QParams(
            scale=scale.reshape(shape),
            zero_point=zp.reshape(shape),
            axis=None if axis is None else want_int(axis, f"{what}: axis", 0, 64),
            block_size=None if block is None else want_int(block, f"{what}: block_size", 1,
                                                           MAX_GROUP_SIZE),
        )
    except (ValueError, TypeError) as exc:  # QParams' own consistency checks
        raise QvizError(f"{what}: {exc}") from None


# TensorMetrics repeats the qparams' scale and zero point; the file keeps them once.
_METRICS_FROM_QPARAMS = ("scale", "zero_point")


def encode_metrics(m: TensorMetrics) -> JsonDict:
    out: JsonDict = {}
    for f in dataclasses.fields(m):
        if f.name in _METRICS_FROM_QPARAMS:
            continue
        value = getattr(m, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = encode_array(value)
        elif isinstance(value, int | float | np.integer | np.floating):
            out[f.name] = encode_float(float(value))
    return out


def decode_metrics(d: Mapping[str, Any], qp: QParams, what: str) -> TensorMetrics:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(TensorMetrics):
        if f.name in _METRICS_FROM_QPARAMS:
            kwargs[f.name] = getattr(qp, f.name)
        elif f.name in d:
            raw = d[f.name]
            kwargs[f.name] = (
                decode_array(raw, f"{what}.{f.name}")
                if isinstance(raw, Mapping)
                else decode_float(raw, f"{what}.{f.name}")
            )
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        else:
            # A field added to TensorMetrics after the file was written: unknown, not zero.
            kwargs[f.name] = math.nan
    return TensorMetrics(**kwargs)


# --- whole file ----------------------------------------------------------------------------


def encode_result(r: TensorResult) -> JsonDict:
    return {
        "name": r.name,
        "kind": r.kind.value,
        "layer": r.layer.name,
        **encode_tensor_config(r.config),
        **encode_qparams(r.qparams),
        "metrics": encode_metrics(r.metrics),
    }


def config_document(
    model: LoadedModel, config: QuantConfig, results: Sequence[TensorResult]
) -> JsonDict:
    """The JSON document `save_config` writes (exposed for tests and for the Export dialog)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "file": FILE_TYPE,
        "qviz_version": qviz.__version__,
        "model": {"source": str(model.source), "sha256": model.sha256},
        **encode_quant_config(config),
        "tensors": [encode_result(r) for r in results],
    }


def save_config(
    path: str | Path, model: LoadedModel, config: QuantConfig, results: Sequence[TensorResult]
) -> None:
    """Write the configuration and its exact quantization parameters, atomically."""
    doc = config_document(model, config, results)
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


def read_document(path: str | Path) -> JsonDict:
    """The raw JSON of a config file, not yet migrated."""
    doc = read_json(path, "a qviz config file")
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise QvizError(f"{path}: not a qviz config file (no schema_version)")
    return doc


def migrate(doc: JsonDict, source: str = "config file") -> JsonDict:
    """Upgrade a document to SCHEMA_VERSION through MIGRATIONS, one version at a time."""
    return migrate_document(doc, MIGRATIONS, SCHEMA_VERSION, source, "config")


def decode_document(doc: JsonDict, source: str = "config file") -> SavedConfig:
    on_disk = doc.get("schema_version")
    doc = migrate(doc, source)
    if doc.get("file", FILE_TYPE) != FILE_TYPE:
        raise QvizError(f"{source}: is a '{doc.get('file')}' file, not a qviz config")
    model = doc.get("model")
    if not isinstance(model, Mapping) or "sha256" not in model:
        raise QvizError(f"{source}: lacks the model's source and sha256")
    quant_config = decode_quant_config(doc, source)
    entries = doc.get("tensors", [])
    if not isinstance(entries, list):
        raise QvizError(f"{source}: 'tensors' must be a list")
    tensors = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise QvizError(f"{source}: tensors[{i}] has no name")
        name = want_str(entry["name"], f"{source}: tensors[{i}].name")
        what = f"{source}: tensor '{name}'"
        try:
            kind = TensorKind(entry["kind"])
        except (KeyError, ValueError, TypeError):
            raise QvizError(f"{what}: kind must be 'weight' or 'activation'") from None
        cfg = decode_tensor_config(entry, what)
        qp = decode_qparams(entry, cfg.fmt, what)
        metrics_doc = entry.get("metrics", {})
        if not isinstance(metrics_doc, Mapping):
            raise QvizError(f"{what}: metrics must be an object")
        try:
            metrics = decode_metrics(metrics_doc, qp, f"{what} metrics")
        except (ValueError, TypeError) as exc:  # TensorMetrics' own consistency checks
            raise QvizError(f"{what} metrics: {exc}") from None
        tensors.append(
            SavedTensor(name, kind, str(entry.get("layer", "")), cfg, qp, metrics)
        )
    return SavedConfig(
        quant_config=quant_config,
        tensors=tuple(tensors),
        model_source=str(model.get("source", "")),
        model_sha256=str(model["sha256"]),
        qviz_version=str(doc.get("qviz_version", "")),
        schema_version=int(on_disk),  # type: ignore[arg-type]  # checked by migrate()
        origin=source,
    )


def load_config(path: str | Path) -> SavedConfig:
    """Read a config file of any supported schema version (QvizError otherwise)."""
    return decode_document(read_document(path), f"{path}: config file")


def is_config_file(path: str | Path) -> bool:
    """Cheap sniff: a JSON object (config) rather than a zip (stats file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


def check_qparams_fit(qp: QParams, shape: tuple[int, ...] | None, what: str) -> None:
    """The scales' shape must be what the tensor's shape and granularity give (one scale per
    tensor, per channel along ``axis``, or per block); a hand edit must not reach ONNX."""
    scale_shape = tuple(np.shape(qp.scale))
    if qp.axis is None:
        if int(np.size(qp.scale)) != 1:
            raise QvizError(f"{what}: {np.size(qp.scale)} scales but no axis")
        return
    if shape is None:  # an activation: its shape is known only when it runs
        if len(scale_shape) != 1 or qp.block_size is not None:
            raise QvizError(f"{what}: activations take one scale per channel on one axis")
        return
    if qp.axis >= len(shape):
        raise QvizError(f"{what}: axis {qp.axis} is outside the tensor's shape {list(shape)}")
    want = (
        (shape[qp.axis],) if qp.block_size is None
        else blocked_shape(shape, qp.axis, qp.block_size)
    )
    if scale_shape != want:
        raise QvizError(
            f"{what}: {list(scale_shape)} scales do not fit the tensor {list(shape)} "
            f"(axis {qp.axis}{'' if qp.block_size is None else f', blocks of {qp.block_size}'}"
            f": {list(want)})"
        )


def results_from_saved(model: LoadedModel, saved: SavedConfig) -> list[TensorResult]:
    """TensorResults carrying exactly the saved qparams (and saved metrics), in graph order.

    This is what rebuilding a Q/DQ graph, an ORT overrides file or a TensorRT cache from a config
    file goes through, so those exports match the file bit for bit, not a fresh recalibration.
    """
    if saved.model_sha256 != model.sha256:
        raise QvizError(
            f"the config file was made for a different model file ({saved.model_source}, "
            f"sha256 {saved.model_sha256[:12]}…), not {model.source}"
        )
    by_key = {(t.name, t.kind): t for t in quant_tensors(model)}
    dims = {t.name: tuple(int(d) for d in t.dims) for t in model.model.graph.initializer}
    results = []
    for saved_tensor in saved.tensors:
        tensor = by_key.get((saved_tensor.name, saved_tensor.kind))
        if tensor is None:
            raise QvizError(
                f"the config file quantizes {saved_tensor.kind.value} '{saved_tensor.name}', "
                f"which this model does not have"
            )
        check_qparams_fit(saved_tensor.qparams, dims.get(saved_tensor.name),
                          f"{saved.origin}: tensor '{saved_tensor.name}'")
        results.append(
            TensorResult(
                name=saved_tensor.name,
                layer=tensor.layer,
                kind=saved_tensor.kind,
                config=saved_tensor.config,
                qparams=saved_tensor.qparams,
                metrics=saved_tensor.metrics,
            )
        )
    order = {key: i for i, key in enumerate(by_key)}
    results.sort(key=lambda r: order[(r.name, r.kind)])
    return results
