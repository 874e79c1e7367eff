"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the
previous file as it was.

The data goes to a temporary file beside the target (same folder, so the rename cannot cross
file systems), is flushed to disk, and is renamed onto the target. The target is checked
first (`qviz.core.files.outputs.check_output`, without inputs): a folder, a FIFO, a device or
a read-only file is refused, a symlink is written through. Temporaries left by a killed
write to the same target are removed. A write that fails for lack of space or an I/O error
raises one QvizError line; the temporary is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from qviz.core.files.outputs import (
    check_output,
    remove_stale_temporaries,
    temporary_prefix,
    write_error,
)


def _fsync(path: Path) -> None:
    """Flush a written file to the device: delayed write errors (ENOSPC, EIO) surface here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temporary(target: Path) -> Path:
    prefix = temporary_prefix(target)
    for _ in range(100):
        tmp = target.parent / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)  # created with 0o666 & ~umask: the user's file gets the usual mode
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    ``make_parents`` creates a missing folder (for qviz's own caches; a user's output folder
    must exist).
    """
    if make_parents:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    target = check_output(path)
    existed = target.exists()
    remove_stale_temporaries(target)
    try:
        tmp = _new_temporary(target)
    except OSError as exc:
        raise write_error(target, exc, existed=existed) from exc
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(target, exc, existed=existed) from exc
    except BaseException:
        # KeyboardInterrupt included: Ctrl-C must leave no partial file behind.
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", *, make_parents: bool = False
) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `path` when the block ends cleanly."""
    with atomic_path(path, make_parents=make_parents) as tmp:
        enc = None if "b" in mode else encoding
        with open(tmp, mode, encoding=enc) as f:
            yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
