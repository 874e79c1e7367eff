"""Will it fit? The memory a session needs against what the system has available.

ONNX Runtime holds a model's weights in memory while it runs it, so a model whose weights
exceed the memory available cannot run: the session would die with the process (or thrash
the machine) part way through. qviz compares the two before building a session and says so
in one line instead. "Available" is what the kernel reports as ``MemAvailable`` (free memory
plus the page cache it can drop) plus free swap; where that is unknown, nothing is refused.
``QVIZ_MEMORY_LIMIT_MB`` replaces the measured figure (tests, or a user who wants qviz to
stay within a budget on a shared machine).
"""

from __future__ import annotations

import os
from pathlib import Path

from qviz.core.errors import QvizError

__all__ = ["ENV_LIMIT", "available_bytes", "check_fits"]

ENV_LIMIT = "QVIZ_MEMORY_LIMIT_MB"
_MEMINFO = Path("/proc/meminfo")


def available_bytes() -> int | None:
    """Memory a new allocation can get without failing, or None when it cannot be known."""
    override = os.environ.get(ENV_LIMIT)
    if override:
        try:
            return int(float(override) * (1 << 20))
        except ValueError:
            raise QvizError(
                f"{ENV_LIMIT} must be a number of megabytes, not {override!r}"
            ) from None
    try:
        fields = dict(
            (line.split(":")[0], int(line.split()[1]) * 1024)
            for line in _MEMINFO.read_text().splitlines()
            if line.split()[-1:] == ["kB"]
        )
    except (OSError, ValueError, IndexError):
        return None
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


def check_fits(nbytes: int, what: str) -> None:
    """QvizError when `nbytes` (a session's weights) exceed the memory available."""
    available = available_bytes()
    if available is None or nbytes <= available:
        return
    raise QvizError(
        f"{what} does not fit in memory: its weights take {nbytes / 2**30:.2f} GiB and "
        f"{available / 2**30:.2f} GiB are available"
    )
