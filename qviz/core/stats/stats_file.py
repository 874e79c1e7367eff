"""The stats file: calibration statistics that travel between machines.

A zip holding `meta.json` (versioned, human-readable) and one `.npy` per array. No pickle: a
stats file from anywhere is safe to open. Written to a temporary file and renamed into place.

Schema history:

* 1 — per-tensor histograms, exact min/max, per-channel min/max.
* 2 — per-channel moments and histograms of every activation (``channel_*`` arrays beside a
  tensor's others), and the Gram matrices GPTQ needs (``grams``: one matrix per group of
  weights sharing an input). A version-1 file still opens; transforms that need the new data
  say "recollect to use this".
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
from qviz.core.stats.gram import GramStats
from qviz.core.stats.tensor_stats import TensorStats

SCHEMA_VERSION = 2
STATS_SUFFIX = ".qvstats"



def _migrate_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    # Version 1 has no per-channel moments (their arrays are simply absent) and no grams.
    return {**document, "schema_version": 2, "grams": []}


# Each entry upgrades meta.json from version N to N + 1; golden files under tests/data pin them.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_1_to_2}


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
        document = {
            "schema_version": SCHEMA_VERSION,
            "qviz_version": __version__,
            "model": {"source": stats.model_source, "sha256": stats.model_sha256},
            "data": {"description": stats.data_description, "is_random": stats.data_is_random},
            "n_samples": stats.n_samples,
            "notes": list(stats.notes),
            "tensors": tensors_meta,
            "grams": grams_meta,
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
            grams = {}
            for entry in document["grams"]:
                gram = GramStats(_read_array(zf, entry["matrix"]), int(entry["rows"]),
                                 int(entry.get("kernel", 1)))
                for weight in entry["weights"]:
                    grams[str(weight)] = gram
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
        grams=grams,
    )


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
