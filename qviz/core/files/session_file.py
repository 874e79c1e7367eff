"""The session file: the open document written down, and what kind of file a path is.

The session file is JSON (`*.qviz.json`) with a `schema_version`. Older versions are upgraded
one step at a time through `MIGRATIONS`; a file from a newer qviz is refused, not guessed at.

Schema history:

* 1 — first format: `model`, `data` (paths), `weights`/`activations`/`overrides` (the tensor
  configs, flat), `selected` (a tensor name).
* 2 — groups the paths under `files` (adding the stats file and the model's sha256, so a
  changed model is noticed), reuses the config file's `defaults`/`overrides` encoding, records
  the selected tensor's kind (a name can be both a weight and an activation in odd graphs) and
  view settings. A session may also embed the last sensitivity report (`sensitivity`, written
  with `report_to_json`), so re-opening it does not re-run the model; older readers ignore the
  key, and a report that cannot be read is dropped (it is a cache, never a reason to fail).
* 3 — adds the evaluation data (`files.eval_data`), how evaluation is kept apart from
  calibration when there is one data set (`evaluation.holdout_every`: one sample in N held out;
  null evaluates on the calibration data, a choice made explicitly) and the acceptance criteria
  the user typed (`criteria`; null keeps the defaults).

Paths are written relative to the session file's folder, so a folder holding a model, its data
and a session can be moved or shared as a whole; absolute paths are kept when there is no
relative path (another drive).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import qviz
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.split import DEFAULT_EVERY
from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open
from qviz.core.files.config_file import decode_quant_config, encode_quant_config
from qviz.core.files.validate import migrate, read_json, want_bool, want_str
from qviz.core.model.loading import TensorKind
from qviz.core.search.sensitivity import SensitivityReport
from qviz.core.search.sensitivity_cache import report_from_json, report_to_json
from qviz.core.stats.stats_file import is_stats_file

SCHEMA_VERSION = 3
FILE_TYPE = "qviz-session"
SESSION_SUFFIX = ".qviz.json"
MODEL_SUFFIXES = frozenset({".onnx", ".pt", ".pth", ".ts", ".pt2"})
DATA_SUFFIXES = frozenset({".npz", ".npy"})

JsonDict = dict[str, Any]


# --- what a path is -------------------------------------------------------------------------


class PathKind(Enum):
    MODEL = "model"
    DATA = "data"
    STATS = "stats"
    SESSION = "session"


def classify_path(path: str | Path) -> PathKind:
    """What a file the user opened or dropped is, by name first and by content when needed."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(SESSION_SUFFIX):
        return PathKind.SESSION
    if p.is_dir():
        return PathKind.DATA  # a folder of .npz samples or of images
    suffix = p.suffix.lower()
    if suffix in MODEL_SUFFIXES:
        return PathKind.MODEL
    if suffix in DATA_SUFFIXES:
        return PathKind.DATA
    if suffix == ".json" and _looks_like_session(p):
        return PathKind.SESSION
    if is_stats_file(p):
        return PathKind.STATS
    raise QvizError(
        f"{p.name}: not a file qviz opens (models: .onnx .pt .pth .ts .pt2; data: .npz .npy "
        f"or a folder; statistics: .qvstats; sessions: {SESSION_SUFFIX})"
    )


def _looks_like_session(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return FILE_TYPE.encode() in head or (b'"schema_version"' in head and b'"model"' in head)


# --- the session file -----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionFile:
    """A session as stored: where things are, and every choice the user made."""

    model_path: Path | None
    data_path: Path | None = None
    stats_path: Path | None = None
    eval_data_path: Path | None = None
    model_sha256: str | None = None
    config: QuantConfig = field(default_factory=QuantConfig)
    selection: tuple[str, TensorKind | None] | None = None
    log_counts: bool = False
    schema_version: int = SCHEMA_VERSION  # of the file as it was on disk, before migration
    sensitivity: SensitivityReport | None = None  # the last report, so it is not re-run
    criteria: str | None = None  # as typed; None keeps the defaults
    holdout_every: int | None = DEFAULT_EVERY  # None: evaluate on the calibration data
    notes: tuple[str, ...] = ()  # what loading dropped (a damaged sensitivity report)


def _migrate_1_to_2(doc: JsonDict) -> JsonDict:
    """v1 kept paths and tensor configs flat; v2 groups them (see the module docstring)."""
    selected = doc.get("selected")
    return {
        "schema_version": 2,
        "file": FILE_TYPE,
        "qviz_version": doc.get("qviz_version", ""),
        "files": {
            "model": doc.get("model"),
            "model_sha256": None,  # v1 did not record it
            "data": doc.get("data"),
            "stats": None,
        },
        "config": {
            "defaults": {"weights": doc["weights"], "activations": doc["activations"]},
            "overrides": doc.get("overrides", {}),
        },
        # v1 selected by name only; the kind is resolved against the model when it loads.
        "selection": None if selected is None else {"tensor": selected, "kind": None},
        "view": {"log_counts": False},
    }


def _migrate_2_to_3(doc: JsonDict) -> JsonDict:
    """v3 adds the evaluation data, the hold-out and the typed criteria; a v2 session had
    none, and measured on its calibration data: it opens with the default hold-out."""
    files = dict(doc["files"])
    files["eval_data"] = None
    evaluation = {"holdout_every": DEFAULT_EVERY}
    return {**doc, "schema_version": 3, "files": files, "criteria": None,
            "evaluation": evaluation}


# MIGRATIONS[n] upgrades a schema_version n document to n + 1. Each old version keeps a golden
# file under tests/data that must keep loading.
MIGRATIONS: dict[int, Callable[[JsonDict], JsonDict]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


def migrate_session(doc: JsonDict, source: str = "session file") -> JsonDict:
    return migrate(doc, MIGRATIONS, SCHEMA_VERSION, source, "session")


def _rel(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:  # different drive on Windows: no relative path exists
        return str(Path(path).resolve())


def _abs(text: Any, base: Path, what: str, source: str = "session file") -> Path | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text or "\x00" in text:
        raise QvizError(f"{source}: '{what}' must be a path, got {text!r}")
    p = Path(text)
    return p if p.is_absolute() else (base / p).resolve()


def session_document(session: SessionFile, base_dir: Path) -> JsonDict:
    """The JSON `save_session` writes; paths relative to `base_dir` (the file's folder)."""
    selection = None
    if session.selection is not None:
        name, kind = session.selection
        selection = {"tensor": name, "kind": None if kind is None else kind.value}
    doc: JsonDict = {
        "schema_version": SCHEMA_VERSION,
        "file": FILE_TYPE,
        "qviz_version": qviz.__version__,
        "files": {
            "model": _rel(session.model_path, base_dir),
            "model_sha256": session.model_sha256,
            "data": _rel(session.data_path, base_dir),
            "eval_data": _rel(session.eval_data_path, base_dir),
            "stats": _rel(session.stats_path, base_dir),
        },
        "config": encode_quant_config(session.config),
        "criteria": session.criteria,
        "evaluation": {"holdout_every": session.holdout_every},
        "selection": selection,
        "view": {"log_counts": bool(session.log_counts)},
    }
    if session.sensitivity is not None:
        doc["sensitivity"] = report_to_json(session.sensitivity)
    return doc


def _decode_sensitivity(value: Any, source: str) -> tuple[SensitivityReport | None, str | None]:
    """An embedded sensitivity report, or None when absent; an unreadable one is dropped
    (it is a cache, never a reason to fail) and a note says so."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        return None, f"{source}: the saved sensitivity report is not an object; it is dropped"
    try:
        return report_from_json(value), None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, (
            f"{source}: the saved sensitivity report is damaged ({exc!r}); it is dropped, "
            "run the sensitivity again"
        )


def decode_session(doc: JsonDict, base_dir: Path, source: str = "session file") -> SessionFile:
    on_disk = doc.get("schema_version")
    doc = migrate_session(doc, source)
    if doc.get("file", FILE_TYPE) != FILE_TYPE:
        raise QvizError(f"{source}: is a '{doc.get('file')}' file, not a qviz session")
    files = doc.get("files")
    if not isinstance(files, Mapping):
        raise QvizError(f"{source}: lacks 'files'")
    config_doc = doc.get("config")
    if not isinstance(config_doc, Mapping):
        raise QvizError(f"{source}: lacks 'config'")
    config = decode_quant_config(config_doc, source)
    selection = None
    sel = doc.get("selection")
    if sel is not None and not isinstance(sel, Mapping):
        raise QvizError(f"{source}: 'selection' must be an object")
    if isinstance(sel, Mapping) and sel.get("tensor"):
        kind_text = sel.get("kind")
        tensor = want_str(sel["tensor"], f"{source}: selection.tensor")
        try:
            kind = None if kind_text is None else TensorKind(kind_text)
        except (ValueError, TypeError):
            raise QvizError(f"{source}: selection kind must be weight or activation") from None
        selection = (tensor, kind)
    view = doc.get("view", {})
    if not isinstance(view, Mapping):
        raise QvizError(f"{source}: 'view' must be an object")
    log_counts = want_bool(view.get("log_counts", False), f"{source}: view.log_counts")
    sha = files.get("model_sha256")
    if sha is not None:
        sha = want_str(sha, f"{source}: files.model_sha256")
    criteria = doc.get("criteria")
    if criteria is not None and not isinstance(criteria, str):
        raise QvizError(f"{source}: 'criteria' must be text, got {criteria!r}")
    evaluation = doc.get("evaluation", {"holdout_every": DEFAULT_EVERY})
    if not isinstance(evaluation, Mapping):
        raise QvizError(f"{source}: 'evaluation' must be an object, got {evaluation!r}")
    every = evaluation.get("holdout_every")
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int) or not 2 <= every <= 1_000_000
    ):
        raise QvizError(
            f"{source}: evaluation.holdout_every must be an integer from 2 or null, got {every!r}"
        )
    sensitivity, note = _decode_sensitivity(doc.get("sensitivity"), source)
    return SessionFile(
        model_path=_abs(files.get("model"), base_dir, "files.model", source),
        data_path=_abs(files.get("data"), base_dir, "files.data", source),
        stats_path=_abs(files.get("stats"), base_dir, "files.stats", source),
        eval_data_path=_abs(files.get("eval_data"), base_dir, "files.eval_data", source),
        model_sha256=sha,
        config=config,
        selection=selection,
        log_counts=log_counts,
        schema_version=int(on_disk),  # type: ignore[arg-type]  # checked by migrate_session
        sensitivity=sensitivity,
        criteria=criteria,
        holdout_every=every,
        notes=() if note is None else (note,),
    )


def save_session(path: str | Path, session: SessionFile) -> None:
    """Write the session atomically: a crash mid-save leaves the previous file intact."""
    target = Path(path)
    doc = session_document(session, target.parent)
    with atomic_open(target, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


def load_session(path: str | Path) -> SessionFile:
    """Read a session file of any supported version (QvizError with one clear line otherwise)."""
    p = Path(path)
    if not p.exists():
        raise QvizError(f"session file not found: {p}")
    doc = read_json(p, "a qviz session")
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise QvizError(f"{p.name}: not a qviz session (no schema_version)")
    return decode_session(doc, p.parent, p.name)


__all__ = [
    "SCHEMA_VERSION",
    "SESSION_SUFFIX",
    "PathKind",
    "SessionFile",
    "classify_path",
    "decode_session",
    "load_session",
    "save_session",
    "session_document",
]
