"""Where qviz may write: one check for every file a command or a save dialog writes.

`check_output` refuses, in one line, anything that would lose data or fail half-way: an empty
path, a folder (unless a folder is what is written), a missing or unwritable parent folder, a
path under a file, a FIFO, a device or a socket, a read-only file, and any path that resolves
(after symlinks, or as a hard link) to one of the command's inputs or lies inside an input
folder. A symlink is written through: the file it points at is replaced and the link kept.

Writes then go through `qviz.core.files.atomic`, which writes a temporary file beside the target
and renames it into place. Temporary names carry the writer's process id, so a write killed
half-way (SIGKILL, power loss) leaves a temporary that the next write to the same target
recognises and removes (`remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from qviz.core.errors import QvizError

__all__ = [
    "check_output",
    "check_outputs",
    "remove_stale_temporaries",
    "temporary_prefix",
    "write_error",
]

#: Temporaries in the old name form (no process id) are removed once they are this old.
LEGACY_TEMP_AGE_S = 3600.0
# Room for ".", ".", the pid, the random part and ".tmp" within NAME_MAX (255).
_TEMP_NAME_CHARS = 200
_TEMP_RE = re.compile(r"\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY_TEMP_RE = re.compile(r"\.[A-Za-z0-9_]{6,12}\.tmp$")


def _describe(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _input_paths(inputs: Iterable[str | Path | None]) -> list[Path]:
    out = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        p = Path(item)
        if p.exists():
            out.append(p)
    return out


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _collides(target: Path, inputs: list[Path]) -> Path | None:
    """The input that `target` would overwrite or write into, or None."""
    resolved = target.resolve()
    try:
        target_stat: os.stat_result | None = os.stat(target)
    except OSError:
        target_stat = None
    for item in inputs:
        real = item.resolve()
        if real == resolved:
            return item
        try:
            item_stat = os.stat(item)
        except OSError:
            continue
        if target_stat is not None and _same_file(target_stat, item_stat):
            return item  # a hard link, or another path to the same file
        if stat.S_ISDIR(item_stat.st_mode) and real in resolved.parents:
            return item
    return None


def check_output(
    path: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    folder: bool = False,
    flag: str = "",
) -> Path:
    """The file (or, with ``folder``, folder) a write to ``path`` will replace, checked.

    Returns the path to write, symlinks resolved (so the link survives and its target is
    replaced). ``inputs`` are the files and folders the reader of this write works from
    (a command's model, data, statistics...; a session's model and data); nothing may resolve
    to one of them. Raises QvizError with one line otherwise: "cannot write PATH: reason", or
    "FLAG PATH: reason" with a command-line ``flag`` such as "-o". Cheap (a few stat calls):
    a save dialog can call it before anything is computed, and again when it writes.
    """
    text = str(path)
    where = f"{flag} {text}" if flag else f"cannot write {text}"
    if not text.strip():
        raise QvizError(f"{flag or 'the output path'} is empty: give the file to write")
    if "\x00" in text:
        raise QvizError(f"{where!r}: a path cannot hold a NUL character")
    target = Path(text)
    try:
        if target.is_symlink():
            # Write through the link: resolve to the file it names (which may not exist yet).
            target = Path(os.path.realpath(target))
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise QvizError(f"{where}: {_first_file(target.parent)} is a file, not a folder") from None
    except OSError as exc:
        raise QvizError(f"{where}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            if not folder:
                raise QvizError(f"{where}: it is a folder; give the file to write")
            if not os.access(target, os.W_OK | os.X_OK):
                raise QvizError(f"{where}: the folder is not writable")
        elif folder and stat.S_ISREG(info.st_mode):
            raise QvizError(f"{where}: it is a file, not a folder")
        elif not stat.S_ISREG(info.st_mode):
            raise QvizError(
                f"{where}: it is {_describe(info.st_mode)}; qviz writes regular files only"
            )
        elif not os.access(target, os.W_OK) or not info.st_mode & 0o222:
            raise QvizError(f"{where}: it is read-only; qviz does not replace it")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent_info = os.stat(parent)
    except FileNotFoundError:
        raise QvizError(f"{where}: the folder {parent} does not exist") from None
    except NotADirectoryError:
        raise QvizError(f"{where}: {_first_file(parent)} is a file, not a folder") from None
    except OSError as exc:
        raise QvizError(f"{where}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(parent_info.st_mode):
        raise QvizError(f"{where}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QvizError(f"{where}: the folder {parent} is not writable")
    hit = _collides(target, _input_paths(inputs))
    if hit is not None:
        same = hit.resolve() == target.resolve() or (
            info is not None and hit.exists() and _same_file(info, os.stat(hit))
        )
        if same:
            raise QvizError(f"{where}: it is {hit}, an input; write elsewhere")
        raise QvizError(f"{where}: it lies inside {hit}, an input folder; write elsewhere")
    return target


def check_outputs(
    paths: Iterable[str | Path], *, inputs: Iterable[str | Path | None] = (), flag: str = ""
) -> tuple[Path, ...]:
    """`check_output` for every file one write produces (a report's page, plots and JSON)."""
    kept = list(inputs)
    return tuple(check_output(p, inputs=kept, flag=flag) for p in paths)


def _first_file(path: Path) -> Path:
    """The first component of ``path`` that exists and is not a folder."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return path


# ------------------------------------------------------------------------- temporaries


def temporary_prefix(target: Path) -> str:
    """Leading part of the name of every temporary written for ``target`` by this process."""
    return f".{target.name[:_TEMP_NAME_CHARS]}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` left by writers that died; return what was removed.

    A temporary is ``.NAME.PID-RANDOM.tmp`` beside the target: stale when no process PID
    runs. Temporaries of the older form ``.NAME.RANDOM.tmp`` carry no id and are removed once
    older than LEGACY_TEMP_AGE_S (a live write takes far less).
    """
    parent = target.parent
    head = f".{target.name[:_TEMP_NAME_CHARS]}"
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(head) or not name.endswith(".tmp"):
            continue
        rest = name[len(head):]
        match = _TEMP_RE.fullmatch(rest)
        if match is not None:
            stale = not _pid_alive(int(match.group("pid")))
        elif _LEGACY_TEMP_RE.fullmatch(rest):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE_S
            except OSError:
                stale = False
        else:
            continue
        if not stale:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass  # another writer cleaned it up first, or it is not ours to remove
    return removed


# ------------------------------------------------------------------------------ errors

_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large for this file system (or the size limit)",
    errno.EROFS: "read-only file system",
}


def write_error(target: Path, exc: OSError, *, existed: bool) -> QvizError:
    """One line for a failed write, saying that the previous file (if any) is untouched."""
    reason = _WRITE_ERRNOS.get(exc.errno or 0) or exc.strerror or str(exc)
    after = "the previous file is unchanged" if existed else "nothing was written"
    return QvizError(f"cannot write {target}: {reason}; {after}")
