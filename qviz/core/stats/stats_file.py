"""The stats file: calibration statistics that travel between machines.

A zip holding `meta.json` (versioned, human-readable) and one `.npy` per array. No pickle: a
stats file from anywhere is safe to open. Written to a temporary file and renamed into place.

Schema 2 adds ``provenance``: the shard of the data a collect covered, or the files a merge
read and which of their histogram ranges it rebinned (`qviz.core.stats.provenance`). A
schema-1 file reads as a plain collect.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qviz import __version__
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_path
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.provenance import Provenance
from qviz.core.stats.tensor_stats import TensorStats

SCHEMA_VERSION = 2
STATS_SUFFIX = ".qvstats"


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no provenance: every such file is one plain collect."""
    return {**document, "schema_version": 2, "provenance": Provenance().to_json()}


# Each entry upgrades meta.json from version N to N + 1; golden files under tests/data pin them.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def save_stats(stats: CalibrationStats, path: str | Path) -> None:
    tensors_meta = []
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for index, tstats in enumerate(stats.tensors.values()):
            meta, arrays = tstats.to_arrays()
            files = {}
            for key, array in arrays.items():
                member = f"tensors/{index}/{key}.npy"
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
                zf.writestr(member, buf.getvalue())
                files[key] = member
            tensors_meta.append({"meta": meta, "arrays": files})
        document = {
            "schema_version": SCHEMA_VERSION,
            "qviz_version": __version__,
            "model": {"source": stats.model_source, "sha256": stats.model_sha256},
            "data": {"description": stats.data_description, "is_random": stats.data_is_random},
            "n_samples": stats.n_samples,
            "notes": list(stats.notes),
            "provenance": stats.provenance.to_json(),
            "tensors": tensors_meta,
        }
        zf.writestr("meta.json", json.dumps(document, indent=1))


def load_stats(path: str | Path) -> CalibrationStats:
    p = Path(path)
    if not p.is_file():
        raise QvizError(f"stats file not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            document = _read_meta(zf, p)
            tensors = {}
            for entry in document["tensors"]:
                arrays = {k: _read_array(zf, member) for k, member in entry["arrays"].items()}
                tstats = TensorStats.from_arrays(entry["meta"], arrays)
                tensors[tstats.name] = tstats
            provenance = Provenance.from_json(document.get("provenance"))
    except zipfile.BadZipFile:
        raise QvizError(f"{p.name} is not a qviz stats file (not a zip archive)") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise QvizError(f"{p.name} is a damaged qviz stats file ({exc})") from None
    return CalibrationStats(
        model_source=document["model"]["source"],
        model_sha256=document["model"]["sha256"],
        data_description=document["data"]["description"],
        data_is_random=bool(document["data"]["is_random"]),
        n_samples=int(document["n_samples"]),
        tensors=tensors,
        notes=tuple(document.get("notes", ())),
        provenance=provenance,
    )


def read_schema_version(path: str | Path) -> int:
    """The ``schema_version`` a stats file was written with (before any migration)."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            version = json.loads(zf.read("meta.json")).get("schema_version")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, AttributeError):
        raise QvizError(f"{p.name} is not a qviz stats file") from None
    if not isinstance(version, int):
        raise QvizError(f"{p.name} has no schema_version; it is not a qviz stats file")
    return version


def is_stats_file(path: str | Path) -> bool:
    p = Path(path)
    if p.suffix == STATS_SUFFIX:
        return True
    try:
        with zipfile.ZipFile(p) as zf:
            return "meta.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _read_meta(zf: zipfile.ZipFile, p: Path) -> dict[str, Any]:
    try:
        document = json.loads(zf.read("meta.json"))
    except KeyError:
        raise QvizError(f"{p.name} is not a qviz stats file (no meta.json inside)") from None
    version = document.get("schema_version")
    if not isinstance(version, int):
        raise QvizError(f"{p.name} has no schema_version; it is not a qviz stats file")
    if version > SCHEMA_VERSION:
        raise QvizError(
            f"{p.name} is stats schema_version {version}; this qviz reads up to {SCHEMA_VERSION}"
        )
    while version < SCHEMA_VERSION:
        document = MIGRATIONS[version](document)
        version = document["schema_version"]
    return document


def _read_array(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)
