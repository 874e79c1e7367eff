"""Sensitivity reports on disk: a versioned JSON file per measurement, so re-opening a session
(or re-running the CLI, or a mixed-precision search) does not re-run 2n+1 models.

A report is keyed by everything its numbers depend on — the model file (sha256), exactly what
was quantized (`results_digest`: each tensor's settings and the bits of its scales, which
covers the statistics and the configuration, or a saved config file), the samples used (their
bytes and labels, not just a file name), and how the graphs were run (native or simulation,
int8 kernel precision). The metric is not part of the key: every metric is measured and kept,
and the report is re-ranked on load.

Files are written atomically (`qviz.core.files.atomic`) and carry ``schema_version``; a file that
cannot be read — corrupt, from a newer qviz, or for another key — is a cache miss, never an
error: the worst a bad cache can do is cost a re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open
from qviz.core.files.validate import parse_json
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.sensitivity_report import (
    SensitivityReport,
    report_from_json,
    report_to_json,
)

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "CacheKey",
    "SensitivityCache",
    "default_cache_dir",
    "report_from_json",  # re-exported: the codec lives with the report
    "report_to_json",
]

CACHE_SCHEMA_VERSION = 1
FILE_TYPE = "qviz-sensitivity"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qviz/sensitivity``, else ``~/.cache/qviz/sensitivity``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qviz" / "sensitivity"


@dataclass(frozen=True)
class CacheKey:
    """What a sensitivity report's numbers depend on."""

    model_sha256: str
    results_digest: str
    data_digest: str
    data_description: str
    n_samples: int
    native: bool
    precision: KernelPrecision

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["precision"] = self.precision.value
        return doc

    @property
    def digest(self) -> str:
        """The file name stem: sha256 of the key's canonical JSON."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class SensitivityCache:
    """A folder of sensitivity reports, one ``<key digest>.json`` each.

    ``load`` returns None on any miss; ``store`` writes atomically and returns the path.
    ``hits`` and ``stores`` count loads that hit and reports written (tests, benchmark).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.stores = 0

    def path_for(self, key: CacheKey) -> Path:
        return self.directory / f"{key.digest}.json"

    def load(self, key: CacheKey) -> SensitivityReport | None:
        path = self.path_for(key)
        try:
            doc = parse_json(path.read_bytes(), str(path))
        except (OSError, QvizError):
            return None
        if not isinstance(doc, dict) or doc.get("file") != FILE_TYPE:
            return None
        if doc.get("schema_version") != CACHE_SCHEMA_VERSION or doc.get("key") != key.to_json():
            return None  # another qviz's layout, or a digest collision: just re-run
        try:
            report = report_from_json(doc["report"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        self.hits += 1
        return report

    def store(self, key: CacheKey, report: SensitivityReport) -> Path:
        path = self.path_for(key)
        doc = {
            "schema_version": CACHE_SCHEMA_VERSION,
            "file": FILE_TYPE,
            "key": key.to_json(),
            "report": report_to_json(report),
        }
        with atomic_open(path, "w", make_parents=True) as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.write("\n")
        self.stores += 1
        return path
