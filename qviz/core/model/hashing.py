"""File digests: what a session or config records to recognise the model it was made for.

Apart from model loading so that the PyTorch importer, which loading imports, can use it too
without an import cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from qviz.core.errors import QvizError

__all__ = ["file_sha256", "files_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (model files can be gigabytes)."""
    return files_sha256([path])


def files_sha256(paths: Iterable[Path], salt: str = "") -> str:
    """sha256 of ``salt`` followed by the files' bytes, in order, read in chunks."""
    h = hashlib.sha256(salt.encode())
    for path in paths:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as exc:
            raise QvizError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    return h.hexdigest()
