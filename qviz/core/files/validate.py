"""Reading qviz's JSON documents safely, and the value checks every loader shares.

Files come from anywhere: a hand edit, another tool, an attacker. Each loader reads JSON with
a size and a nesting limit (`read_json`, `parse_json`), upgrades old documents through one
migration loop (`migrate`), and checks each value against its domain with the helpers
below, so a bad value is one QvizError line naming the file, the tensor and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qviz.core.errors import QvizError

__all__ = [
    "MAX_BINS",
    "MAX_GROUP_SIZE",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "json_depth",
    "migrate",
    "parse_json",
    "read_json",
    "want_bool",
    "want_finite",
    "want_int",
    "want_positive",
    "want_str",
]

#: qviz's documents nest about six deep; anything far deeper is not one of them.
MAX_JSON_DEPTH = 64
#: Configs of very large models (per-group scales of every layer) stay well below this.
MAX_JSON_BYTES = 2 << 30
#: Histogram bins per tensor (memory is tensors x bins).
MAX_BINS = 1 << 16
#: Block length of per-group quantization.
MAX_GROUP_SIZE = 1 << 24

JsonDict = dict[str, Any]


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _no_constants(name: str) -> float:
    # Python's json reads NaN/Infinity, which strict JSON (and qviz's writers) never use.
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, what: str) -> Any:
    """Parse JSON text, refusing what would exhaust the parser (deep nesting) in one line."""
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise QvizError(f"{what}: JSON nested too deeply (limit {MAX_JSON_DEPTH})") from None
    except UnicodeDecodeError as exc:
        raise QvizError(f"{what}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise QvizError(f"{what}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    except ValueError as exc:
        raise QvizError(f"{what}: invalid JSON ({exc})") from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise QvizError(f"{what}: JSON nested too deeply (limit {MAX_JSON_DEPTH})")
    return doc


def read_json(path: str | Path, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file (QvizError for a missing, unreadable, huge or bad file)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise QvizError(f"{path}: is a folder, not {what}")
        if size > max_bytes:
            raise QvizError(
                f"{path}: {size / 2**20:.0f} MiB is too large for {what} "
                f"(limit {max_bytes / 2**20:.0f} MiB)"
            )
        data = p.read_bytes()
    except FileNotFoundError:
        raise QvizError(f"{path}: no such file") from None
    except OSError as exc:
        raise QvizError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return parse_json(data, str(path))


def migrate(
    doc: JsonDict,
    migrations: Mapping[int, Callable[[JsonDict], JsonDict]],
    current: int,
    source: str,
    kind: str,
) -> JsonDict:
    """Upgrade ``doc`` to schema version ``current`` one step at a time.

    ``migrations[n]`` turns a version-n document into version n + 1. A newer version than
    ``current`` is refused (never guessed at); a step that fails on a damaged document is
    one line too.
    """
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise QvizError(f"{source}: schema_version must be an integer, got {version!r}")
    if version > current:
        raise QvizError(
            f"{source} is schema_version {version}; this qviz reads up to {current}. "
            "Update qviz to open it."
        )
    while version < current:
        step = migrations.get(version)
        if step is None:
            raise QvizError(f"{source}: {kind} schema_version {version} is not supported")
        try:
            doc = step(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QvizError(
                f"{source}: damaged {kind} file (upgrading version {version}: {exc!r})"
            ) from None
        version = doc["schema_version"]
    return doc


# ------------------------------------------------------------------------------ values


def want_finite(value: Any, what: str) -> float:
    """A finite number (JSON int or float; not a bool, not text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QvizError(f"{what}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise QvizError(f"{what}: must be finite, got {value!r}")
    return number


def want_positive(value: Any, what: str) -> float:
    number = want_finite(value, what)
    if number <= 0:
        raise QvizError(f"{what}: must be positive, got {value!r}")
    return number


def want_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high] (a float with an integral value is accepted)."""
    if isinstance(value, bool):
        raise QvizError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise QvizError(f"{what}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise QvizError(f"{what}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise QvizError(f"{what}: must be at most {high}, got {value}")
    return value


def want_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise QvizError(f"{what}: expected text, got {value!r}")
    return value


def want_bool(value: Any, what: str) -> bool:
    # bool("false") is True: a hand-written string must not silently flip a setting.
    if not isinstance(value, bool):
        raise QvizError(f"{what}: must be true or false, got {value!r}")
    return value
