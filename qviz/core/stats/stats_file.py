"""The stats file: calibration statistics that travel between machines.

A zip holding `meta.json` (versioned, human-readable) and one `.npy` per array. No pickle: a
stats file from anywhere is safe to open. Written to a temporary file and renamed into place.

Schema history:

* 1 — per-tensor histograms, exact min/max, per-channel min/max.
* 2 — per-channel moments and histograms of every activation (``channel_*`` arrays beside a
  tensor's others), and the Gram matrices GPTQ needs (``grams``: one matrix per group of
  weights sharing an input). Every field new in 2 is optional: absent means not collected
  (a file collected without them, or by another collector of schema 2, opens the same way). A
  version-1 file still opens; transforms that need the new data say "recollect to use this".
  Schema 2 also adds ``provenance``: the shard of the data a collect covered, or the files a
  merge read and which of their histogram ranges it rebinned (`qviz.core.stats.provenance`);
  absent, the file is a plain collect. And it may hold the statistics of the large weights
  (``weights`` in meta.json, arrays under ``weights/N/``), read only when a weight is analysed:
  opening the statistics of a model of any size reads its activations' histograms and no more.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qviz import __version__
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_path
from qviz.core.files.validate import (
    MAX_BINS,
    migrate,
    parse_json,
    want_finite,
    want_int,
    want_str,
)
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.gram import GramStats
from qviz.core.stats.provenance import Provenance
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.stats.weight_stats import WeightStats

SCHEMA_VERSION = 2
STATS_SUFFIX = ".qvstats"


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """Schema 2's fields are all optional (absent: not recorded; no provenance is a plain
    collect), so a schema 1 file is a schema 2 file as it is."""
    return {**document, "schema_version": 2}


# Each entry upgrades meta.json from version N to N + 1; golden files under tests/data pin them.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


# zlib's fastest level: histograms of mostly empty bins compress almost as well as at the
# default level 6, in a third of the time (a large model's statistics are written in seconds).
_LEVEL = 1


# Written uncompressed: a large weight's per-channel histograms when their counts fit in a
# byte (a 2048-value channel in 256 bins: mostly under 50) spread over every bin, which
# deflate only halves, at about 150 MB/s (on a 4 GB model 0.6 s of CPU for 90 MB); and
# per-channel float values (ranges, moments), which deflate to 50-95% at about 100 MB/s (0.35 s
# of a 4 GB model's save for 10 MB of file).
_STORED_BYTES = frozenset({"row_counts"})
_STORED_FLOATS = frozenset({
    "row_lo", "row_hi", "channel_min", "channel_max", "channel_sumsq", "channel_mean",
    "channel_mean_sq", "channel_hist_lo", "channel_hist_hi",
})


def _write_arrays(
    zf: zipfile.ZipFile, prefix: str, arrays: dict[str, np.ndarray]
) -> dict[str, str]:
    files = {}
    for key, array in arrays.items():
        member = f"{prefix}/{key}.npy"
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        stored = (key in _STORED_BYTES and array.dtype.itemsize == 1) or (
            key in _STORED_FLOATS and array.dtype.kind == "f"
        )
        kind = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        zf.writestr(member, buf.getvalue(), compress_type=kind)
        files[key] = member
    return files


def save_stats(stats: CalibrationStats, path: str | Path) -> None:
    tensors_meta = []
    weights_meta = []
    with atomic_path(path) as tmp, zipfile.ZipFile(
        tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=_LEVEL
    ) as zf:
        for index, tstats in enumerate(stats.tensors.values()):
            meta, arrays = tstats.to_arrays()
            files = _write_arrays(zf, f"tensors/{index}", arrays)
            tensors_meta.append({"meta": meta, "arrays": files})
        grams_meta: list[dict[str, Any]] = []
        by_object: dict[int, dict[str, Any]] = {}
        for weight, gram in stats.grams.items():
            entry = by_object.get(id(gram))
            if entry is None:
                member = f"grams/{len(grams_meta)}.npy"
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(gram.matrix), allow_pickle=False)
                zf.writestr(member, buf.getvalue())
                entry = {"weights": [], "rows": gram.rows, "kernel": gram.kernel,
                         "matrix": member}
                by_object[id(gram)] = entry
                grams_meta.append(entry)
            entry["weights"].append(weight)
        # One weight at a time: a lazy mapping reads each from its own file just here.
        for index, name in enumerate(stats.weights):
            meta, arrays = stats.weights[name].to_arrays()
            files = _write_arrays(zf, f"weights/{index}", arrays)
            weights_meta.append({"meta": meta, "arrays": files})
        document = {
            "schema_version": SCHEMA_VERSION,
            "qviz_version": __version__,
            "model": {"source": stats.model_source, "sha256": stats.model_sha256,
                      **({"float_source": stats.float_source} if stats.float_source else {})},
            "data": {"description": stats.data_description, "is_random": stats.data_is_random},
            "n_samples": stats.n_samples,
            "notes": list(stats.notes),
            "tensors": tensors_meta,
            "grams": grams_meta,
            "weights": weights_meta,
        }
        if stats.provenance != Provenance():  # absent: a plain collect over all the data
            document["provenance"] = stats.provenance.to_json()
        zf.writestr("meta.json", json.dumps(document, indent=1))


#: A member of a stats file is refused beyond this size (a zip bomb, or not qviz's file).
MAX_MEMBER_BYTES = 1 << 30
MAX_META_BYTES = 256 << 20
#: Gram matrices are d x d float64: d up to about 46 000 (their budget is checked at collection).
GRAM_MEMBER_BYTES = 16 << 30


def load_stats(path: str | Path) -> CalibrationStats:
    """Read a stats file (QvizError with one line naming the file, tensor and field if it is
    not one, or holds values out of their domain)."""
    p = Path(path)
    if not p.is_file():
        raise QvizError(f"stats file not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            document = _read_meta(zf, p)
            return _decode(zf, document, p)
    except zipfile.BadZipFile:
        raise QvizError(f"{p.name} is not a qviz stats file (not a zip archive)") from None
    except (KeyError, TypeError, ValueError, AttributeError, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as exc:
        # zipfile reports a damaged header as an unknown compression method (NotImplemented)
        # or an encrypted member (RuntimeError).
        raise QvizError(f"{p.name} is a damaged qviz stats file ({exc})") from None
    except OSError as exc:
        raise QvizError(f"{p.name}: cannot read the stats file ({exc.strerror or exc})") from None


def _decode(zf: zipfile.ZipFile, document: dict[str, Any], path: Path) -> CalibrationStats:
    name = path.name
    model = document.get("model")
    data = document.get("data")
    if not isinstance(model, dict) or not isinstance(data, dict):
        raise QvizError(f"{name}: 'model' and 'data' must be objects")
    n_samples = want_int(document.get("n_samples"), f"{name}: n_samples", 1)
    entries = document.get("tensors")
    notes = document.get("notes", [])
    if not isinstance(entries, list) or not isinstance(notes, list):
        raise QvizError(f"{name}: 'tensors' and 'notes' must be lists")
    tensors: dict[str, TensorStats] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("meta"), dict):
            raise QvizError(f"{name}: tensors[{i}] lacks its 'meta' object")
        meta = entry["meta"]
        tname = want_str(meta.get("name"), f"{name}: tensors[{i}].name")
        what = f"{name}: tensor '{tname}'"
        members = entry.get("arrays")
        if not isinstance(members, dict):
            raise QvizError(f"{what}: 'arrays' must be an object")
        arrays = {
            want_str(k, f"{what}: array name"): _read_array(zf, want_str(m, f"{what}: {k}"), what)
            for k, m in members.items()
        }
        _check_tensor_meta(meta, arrays, what)
        try:
            tstats = TensorStats.from_arrays(meta, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise QvizError(f"{what}: {exc}") from None
        if tname in tensors:
            raise QvizError(f"{what}: listed twice")
        tensors[tname] = tstats
    provenance = document.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise QvizError(f"{name}: 'provenance' must be an object")
    try:
        origin = Provenance.from_json(provenance)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise QvizError(f"{name}: damaged provenance ({exc})") from None
    weights = StoredWeightStats(path, _weight_entries(document.get("weights", []), name))
    return CalibrationStats(
        model_source=want_str(model.get("source"), f"{name}: model.source"),
        model_sha256=want_str(model.get("sha256"), f"{name}: model.sha256"),
        data_description=want_str(data.get("description"), f"{name}: data.description"),
        data_is_random=bool(data.get("is_random") is True),
        n_samples=n_samples,
        tensors=tensors,
        notes=tuple(want_str(n, f"{name}: notes") for n in notes),
        grams=_decode_grams(zf, document.get("grams", []), name),
        weights=weights,
        float_source=None if model.get("float_source") is None else want_str(
            model.get("float_source"), f"{name}: model.float_source"),
        provenance=origin,
    )


def read_schema_version(path: str | Path) -> int:
    """The ``schema_version`` a stats file was written with (before any migration)."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            if "meta.json" not in zf.namelist():
                raise QvizError(f"{p.name} is not a qviz stats file (no meta.json inside)")
            document = parse_json(_read_member(zf, "meta.json", MAX_META_BYTES, p.name), p.name)
    except (OSError, zipfile.BadZipFile, ValueError):
        raise QvizError(f"{p.name} is not a qviz stats file") from None
    version = document.get("schema_version") if isinstance(document, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise QvizError(f"{p.name} has no schema_version; it is not a qviz stats file")
    return version


def _decode_grams(zf: zipfile.ZipFile, entries: Any, name: str) -> dict[str, GramStats]:
    """The Gram matrices (schema 2; none when absent), by weight; layers sharing an input
    share one."""
    if not isinstance(entries, list):
        raise QvizError(f"{name}: 'grams' must be a list")
    grams: dict[str, GramStats] = {}
    for i, entry in enumerate(entries):
        what = f"{name}: grams[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("weights"), list):
            raise QvizError(f"{what} must name its weights")
        rows = want_int(entry.get("rows"), f"{what}: rows", 0)
        kernel = want_int(entry.get("kernel", 1), f"{what}: kernel", 1)
        member = want_str(entry.get("matrix"), f"{what}: matrix")
        matrix = _read_array(zf, member, what, GRAM_MEMBER_BYTES)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or \
                matrix.dtype.kind != "f" or not np.isfinite(matrix).all():
            raise QvizError(f"{what}: the matrix must be square and finite")
        gram = GramStats(matrix, rows, kernel)
        for weight in entry["weights"]:
            grams[want_str(weight, f"{what}: weight")] = gram
    return grams


def _check_tensor_meta(meta: dict[str, Any], arrays: dict[str, np.ndarray], what: str) -> None:
    """Each statistic within its domain: counts integers >= 0, bounds finite and ordered,
    a histogram of at most MAX_BINS non-negative counts."""
    count = want_int(meta.get("count"), f"{what}: count", 0)
    for key in ("n_extreme", "n_nonfinite"):
        want_int(meta.get(key, 0), f"{what}: {key}", 0)
    lo = want_finite(meta.get("lo"), f"{what}: lo")
    hi = want_finite(meta.get("hi"), f"{what}: hi")
    if not lo < hi:
        raise QvizError(f"{what}: histogram range [{lo:g}, {hi:g}] must have lo < hi")
    low = want_finite(meta.get("min"), f"{what}: min")
    high = want_finite(meta.get("max"), f"{what}: max")
    if count and low > high:
        raise QvizError(f"{what}: min {low:g} is above max {high:g}")
    axis = meta.get("channel_axis")
    if axis is not None:
        want_int(axis, f"{what}: channel_axis", 0, 64)
    counts = arrays.get("counts")
    if counts is None:
        raise QvizError(f"{what}: no histogram counts")
    if counts.ndim != 1 or not 1 <= counts.size <= MAX_BINS:
        raise QvizError(
            f"{what}: counts must hold 1 to {MAX_BINS} bins, not shape {list(counts.shape)}"
        )
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise QvizError(f"{what}: {key} holds {arr.dtype}, not numbers")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise QvizError(f"{what}: counts must be finite and non-negative")
    cmin, cmax = arrays.get("channel_min"), arrays.get("channel_max")
    if (cmin is None) != (cmax is None):
        raise QvizError(f"{what}: channel_min and channel_max come together")
    if cmin is not None and cmax is not None:
        if cmin.shape != cmax.shape or cmin.ndim != 1:
            raise QvizError(f"{what}: channel_min and channel_max must be equal 1-D arrays")
        if np.isnan(cmin).any() or np.isnan(cmax).any():
            raise QvizError(f"{what}: channel_min/channel_max hold NaN")
        seen = np.isfinite(cmin) & np.isfinite(cmax)
        if (cmin[seen] > cmax[seen]).any():
            raise QvizError(f"{what}: a channel's min is above its max")


def is_stats_file(path: str | Path) -> bool:
    p = Path(path)
    if p.suffix == STATS_SUFFIX:
        return True
    try:
        with zipfile.ZipFile(p) as zf:
            return "meta.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _read_member(zf: zipfile.ZipFile, member: str, limit: int, what: str) -> bytes:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise QvizError(f"{what}: the stats file has no member '{member}'") from None
    if info.file_size > limit:
        raise QvizError(
            f"{what}: member '{member}' is {info.file_size / 2**20:.0f} MiB (limit "
            f"{limit / 2**20:.0f} MiB); not a qviz stats file"
        )
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise QvizError(f"{what}: member '{member}' is larger than it says")
    return data


def _read_meta(zf: zipfile.ZipFile, p: Path) -> dict[str, Any]:
    if "meta.json" not in zf.namelist():
        raise QvizError(f"{p.name} is not a qviz stats file (no meta.json inside)")
    document = parse_json(_read_member(zf, "meta.json", MAX_META_BYTES, p.name), p.name)
    if not isinstance(document, dict):
        raise QvizError(f"{p.name} is not a qviz stats file (meta.json is not an object)")
    if not isinstance(document.get("schema_version"), int):
        raise QvizError(f"{p.name} has no schema_version; it is not a qviz stats file")
    return migrate(document, MIGRATIONS, SCHEMA_VERSION, p.name, "stats")


def _read_array(
    zf: zipfile.ZipFile, member: str, what: str, limit: int = MAX_MEMBER_BYTES
) -> np.ndarray:
    data = _read_member(zf, member, limit, what)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy parses the header with ast/tokenize: any error there
        raise QvizError(f"{what}: member '{member}' is not a numeric .npy array ({exc})") from None


def _weight_entries(entries: object, name: str) -> list[dict[str, Any]]:
    """The ``weights`` list of meta.json, each entry's shape checked (its arrays are read and
    checked when the weight is asked for)."""
    if not isinstance(entries, list):
        raise QvizError(f"{name}: 'weights' must be a list")
    checked = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("meta"), dict):
            raise QvizError(f"{name}: weights[{i}] lacks its 'meta' object")
        wname = want_str(entry["meta"].get("name"), f"{name}: weights[{i}].name")
        members = entry.get("arrays")
        if not isinstance(members, dict) or not all(
            isinstance(k, str) and isinstance(m, str) for k, m in members.items()
        ):
            raise QvizError(f"{name}: weight '{wname}': 'arrays' must map names to members")
        if wname in seen:
            raise QvizError(f"{name}: weight '{wname}': listed twice")
        seen.add(wname)
        checked.append(entry)
    return checked


class StoredWeightStats(Mapping[str, WeightStats]):
    """The weight statistics of a stats file, read from the zip when one is asked for (and
    not kept: the analysis keeps what it uses, within its own budget)."""

    def __init__(self, path: Path, entries: list[dict[str, Any]]) -> None:
        self._path = path
        self._entries = {str(e["meta"]["name"]): e for e in entries}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> WeightStats:
        entry = self._entries[name]
        try:
            with self._lock, zipfile.ZipFile(self._path) as zf:
                what = f"{self._path.name}: weight '{name}'"
                arrays = {k: _read_array(zf, m, what) for k, m in entry["arrays"].items()}
            return WeightStats.from_arrays(entry["meta"], arrays)
        except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError, EOFError,
                zlib.error, NotImplementedError, RuntimeError) as exc:
            raise QvizError(
                f"{self._path.name}: cannot read the statistics of weight '{name}' ({exc})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
