"""Variants of a sensitivity sweep already measured, kept as they finish.

A sweep is 2n+1 runs; when it is cancelled, a worker is lost for good or the cluster goes
away, the runs that finished are not thrown away: each is written beside the cache
(``<key digest>.partial.json``, atomically, keyed like the report) and the next sweep with the
same key measures only the rest. The file is removed once the whole report is stored.
Unreadable or foreign files are ignored (at worst a run is measured again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open
from qviz.core.files.validate import parse_json
from qviz.core.search.measure import Measurement
from qviz.core.search.sensitivity_cache import CacheKey, SensitivityCache

__all__ = ["PartialRuns"]

PARTIAL_SCHEMA_VERSION = 1
FILE_TYPE = "qviz-sensitivity-partial"


class PartialRuns:
    """The measured variants of one sweep (by run label); a no-op without a cache."""

    def __init__(self, cache: SensitivityCache | None, key: CacheKey) -> None:
        self.key = key
        self.path: Path | None = (
            None if cache is None else cache.directory / f"{key.digest}.partial.json"
        )
        self._runs: dict[str, Measurement] = {}

    def load(self) -> dict[str, Measurement]:
        """What an earlier, unfinished sweep with this key measured."""
        if self.path is None:
            return {}
        try:
            doc = parse_json(self.path.read_bytes(), str(self.path))
            if (
                doc.get("file") != FILE_TYPE
                or doc.get("schema_version") != PARTIAL_SCHEMA_VERSION
                or doc.get("key") != self.key.to_json()
            ):
                return {}
            self._runs = {k: Measurement.from_json(v) for k, v in doc["runs"].items()}
        except (OSError, QvizError, AttributeError, KeyError, TypeError, ValueError):
            return {}
        return dict(self._runs)

    def store(self, label: str, measurement: Measurement) -> None:
        if self.path is None:
            return
        self._runs[label] = measurement
        doc: dict[str, Any] = {
            "schema_version": PARTIAL_SCHEMA_VERSION,
            "file": FILE_TYPE,
            "key": self.key.to_json(),
            "runs": {k: m.to_json() for k, m in self._runs.items()},
        }
        # The first run of a sweep may finish before the cache's folder exists.
        with atomic_open(self.path, "w", make_parents=True) as f:
            json.dump(doc, f, indent=1, allow_nan=False)

    def drop(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
