"""The stats file: calibration statistics that travel between machines.

A zip holding `meta.json` (versioned, human-readable) and one `.npy` per array. No pickle: a
stats file from anywhere is safe to open. Written to a temporary file and renamed into place.

Schema 2 adds the statistics of the large weights (``weights`` in meta.json, arrays under
``weights/N/``), read only when a weight is analysed: opening the statistics of a model of
any size reads its activations' histograms and no more. Schema 1 files (no weights) open as
they are.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qviz import __version__
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_path
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.stats.weight_stats import WeightStats

SCHEMA_VERSION = 2
STATS_SUFFIX = ".qvstats"

def _add_weights(document: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: no weight statistics were stored."""
    return {**document, "schema_version": 2, "weights": []}


# Each entry upgrades meta.json from version N to N + 1; golden files under tests/data pin them.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _add_weights}


def _write_arrays(
    zf: zipfile.ZipFile, prefix: str, arrays: dict[str, np.ndarray]
) -> dict[str, str]:
    files = {}
    for key, array in arrays.items():
        member = f"{prefix}/{key}.npy"
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        zf.writestr(member, buf.getvalue())
        files[key] = member
    return files


def save_stats(stats: CalibrationStats, path: str | Path) -> None:
    tensors_meta = []
    weights_meta = []
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for index, tstats in enumerate(stats.tensors.values()):
            meta, arrays = tstats.to_arrays()
            files = _write_arrays(zf, f"tensors/{index}", arrays)
            tensors_meta.append({"meta": meta, "arrays": files})
        # One weight at a time: a lazy mapping reads each from its own file just here.
        for index, name in enumerate(stats.weights):
            meta, arrays = stats.weights[name].to_arrays()
            files = _write_arrays(zf, f"weights/{index}", arrays)
            weights_meta.append({"meta": meta, "arrays": files})
        document = {
            "schema_version": SCHEMA_VERSION,
            "qviz_version": __version__,
            "model": {"source": stats.model_source, "sha256": stats.model_sha256},
            "data": {"description": stats.data_description, "is_random": stats.data_is_random},
            "n_samples": stats.n_samples,
            "notes": list(stats.notes),
            "tensors": tensors_meta,
            "weights": weights_meta,
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
            weights = StoredWeightStats(p, document["weights"])
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
        weights=weights,
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
                arrays = {k: _read_array(zf, m) for k, m in entry["arrays"].items()}
            return WeightStats.from_arrays(entry["meta"], arrays)
        except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
            raise QvizError(
                f"{self._path.name}: cannot read the statistics of weight '{name}' ({exc})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
