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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Metric, RunMode
from qviz.core.files.atomic import atomic_open
from qviz.core.files.validate import parse_json
from qviz.core.jsonnum import json_number as _num
from qviz.core.runtime.fusion import KernelPrecision
from qviz.core.search.sensitivity import LayerSensitivity, Measurement, SensitivityReport

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "CacheKey",
    "SensitivityCache",
    "default_cache_dir",
    "report_from_json",
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


# --------------------------------------------------------------------------- JSON



def _float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _count(value: Any, low: int = 0) -> int:
    """A JSON integer >= low (files are untrusted: "5", 2.5, true and -1 are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"expected an integer >= {low}, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _metrics_json(m: Mapping[Metric, float]) -> dict[str, Any]:
    return {k.value: _num(v) for k, v in m.items()}


def _metrics_from(d: Mapping[str, Any]) -> dict[Metric, float]:
    out: dict[Metric, float] = {}
    for k, v in d.items():
        value = _float(v)
        if value is not None:
            out[Metric(k)] = value
    return out


def measurement_to_json(m: Measurement) -> dict[str, Any]:
    return {
        "metrics": _metrics_json(m.metrics),
        "mode": None if m.mode is None else m.mode.value,
        "size_bytes": m.size_bytes,
        "samples": m.n_samples,
        "precision": m.precision.value,
    }


def measurement_from_json(d: Mapping[str, Any]) -> Measurement:
    return Measurement(
        metrics=_metrics_from(d["metrics"]),
        mode=None if d["mode"] is None else RunMode(d["mode"]),
        size_bytes=_count(d["size_bytes"]),
        n_samples=_count(d["samples"], 1),
        precision=KernelPrecision(d["precision"]),
    )


def report_to_json(r: SensitivityReport) -> dict[str, Any]:
    """A JSON-ready dict of a report (also what a session file can embed)."""
    return {
        "metric": r.metric.value,
        "float_value": _num(r.float_value),
        "quantized_value": _num(r.quantized_value),
        "float_metrics": _metrics_json(r.float_metrics),
        "quantized": measurement_to_json(r.quantized),
        "samples": r.n_samples,
        "data": r.data_description,
        "data_digest": r.data_digest,
        "results_digest": r.results_digest,
        "model_sha256": r.model_sha256,
        "float_size_bytes": r.float_size_bytes,
        "native": r.native,
        "precision": r.precision.value,
        "runs": r.n_runs,
        "elapsed_s": _num(r.elapsed_s),
        "notes": list(r.notes),
        "cached": r.cached,
        "layers": [
            {
                "name": s.name,
                "node_name": s.node_name,
                "op_type": s.op_type,
                "depth": s.depth,
                "module_path": s.module_path,
                "tensors": list(s.tensors),
                "param_count": s.param_count,
                "weight_sqnr_db": _num(s.weight_sqnr_db),
                "activation_sqnr_db": _num(s.activation_sqnr_db),
                "drop": _num(s.drop),
                "recovery": _num(s.recovery),
                "quantized_only": measurement_to_json(s.quantized_only),
                "float_only": measurement_to_json(s.float_only),
            }
            for s in r.layers
        ],
    }


def report_from_json(d: Mapping[str, Any]) -> SensitivityReport:
    """The report `report_to_json` wrote (``cached=True``); KeyError/ValueError/TypeError if
    malformed (counts must be non-negative integers, at least one sample, numbers numbers)."""
    if not isinstance(d["layers"], list) or not isinstance(d["notes"], list):
        raise ValueError("layers and notes must be lists")
    layers = tuple(
        LayerSensitivity(
            name=_text(s["name"]),
            node_name=_text(s["node_name"]),
            op_type=_text(s["op_type"]),
            depth=_count(s["depth"]),
            module_path=None if s["module_path"] is None else _text(s["module_path"]),
            tensors=tuple(_text(t) for t in s["tensors"]),
            param_count=_count(s["param_count"]),
            weight_sqnr_db=_float(s["weight_sqnr_db"]),
            activation_sqnr_db=_float(s["activation_sqnr_db"]),
            quantized_only=measurement_from_json(s["quantized_only"]),
            float_only=measurement_from_json(s["float_only"]),
        )
        for s in d["layers"]
    )
    report = SensitivityReport(
        metric=Metric(d["metric"]),
        layers=layers,
        quantized=measurement_from_json(d["quantized"]),
        float_metrics=_metrics_from(d["float_metrics"]),
        n_samples=_count(d["samples"], 1),
        data_description=_text(d["data"]),
        data_digest=_text(d["data_digest"]),
        results_digest=_text(d["results_digest"]),
        model_sha256=_text(d["model_sha256"]),
        float_size_bytes=_count(d["float_size_bytes"]),
        native=d["native"] is True,
        precision=KernelPrecision(d["precision"]),
        n_runs=_count(d["runs"]),
        elapsed_s=max(0.0, float(_float(d["elapsed_s"]) or 0.0)),
        notes=tuple(_text(n) for n in d["notes"]),
        cached=True,
    )
    # drop/recovery are derived: recompute them rather than trust the file.
    return report.with_metric(report.metric)
