"""Which qviz a worker runs: its version, and a fingerprint of its core's code.

Workers on other machines must compute what this machine would; a version number alone does
not tell two development builds apart, so the core's source files are hashed too (once per
process, a few milliseconds).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from qviz import __version__

__all__ = ["code_fingerprint", "identity"]

_CORE = Path(__file__).resolve().parents[1]


@functools.cache
def code_fingerprint() -> str:
    """sha256 of every ``qviz/core`` source file, by relative path (first 16 hex digits)."""
    h = hashlib.sha256()
    for path in sorted(_CORE.rglob("*.py")):
        h.update(path.relative_to(_CORE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def identity() -> tuple[str, str]:
    """(qviz version, code fingerprint) of this process."""
    return __version__, code_fingerprint()
