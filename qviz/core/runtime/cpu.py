"""What this machine's CPU means for ONNX Runtime's int8 kernels, asked in one place.

On x86-64 CPUs with AVX2 but no VNNI, ORT's default U8S8 kernels add pairs of uint8 x int8
products in 16 bits: 2 x 255 x 127 = 64770 overflows int16 and saturates. CPUs with
AVX512-VNNI, AVX-VNNI or AMX accumulate in 32 bits and cannot saturate; other architectures
do not use that path at all.

`u8s8_may_saturate` is the one answer every part of qviz reads (the fusion report, the
benchmarks, the tests). It can be overridden, in this order of precedence:

* `assume_u8s8_saturation` / `set_u8s8_saturation`: for tests, which check each
  kernel-dependent expectation under both answers (process-wide, so that the worker threads
  of the app see it too);
* the environment variable ``QVIZ_U8S8_SATURATES=0|1``: for users whose ``/proc/cpuinfo`` is
  missing or wrong (containers, emulators), or who want to see the other kind of report.

An override changes what qviz *says* about the kernels (the fusion report's ``saturating``
layers and its note), never what ORT's kernels *do*: measured numbers always come from the
real kernels of the machine.
"""

from __future__ import annotations

import functools
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qviz.core.errors import QvizError

__all__ = [
    "ENV_VAR",
    "assume_u8s8_saturation",
    "cpu_flags",
    "detect_u8s8_saturation",
    "saturates_with",
    "set_u8s8_saturation",
    "u8s8_may_saturate",
]

#: The environment variable that overrides the detection: ``1`` saturates, ``0`` does not.
ENV_VAR = "QVIZ_U8S8_SATURATES"
_ENV_VALUES = {"1": True, "0": False}
# Instructions that give ORT a 32-bit int8 dot product: no 16-bit pair sums to saturate.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

_lock = threading.Lock()
_override: bool | None = None


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text (empty if none)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def saturates_with(flags: frozenset[str]) -> bool | None:
    """The answer for an x86-64 CPU with these flags (None when there are none to go by)."""
    if not flags:
        return None
    return "avx2" in flags and not (flags & _VNNI_FLAGS)


@functools.cache
def detect_u8s8_saturation() -> bool | None:
    """What this machine's CPU says, overrides ignored: True on x86-64 with AVX2 and no VNNI,
    False where the U8S8 path cannot saturate, None where that cannot be told."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return saturates_with(cpu_flags(text))


def _from_env() -> bool | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None or not raw.strip():
        return None
    value = _ENV_VALUES.get(raw.strip())
    if value is None:
        raise QvizError(f"{ENV_VAR} must be 0 or 1 (or unset to detect the CPU), got {raw!r}")
    return value


def u8s8_may_saturate() -> bool | None:
    """Whether ORT's default U8S8 int8 kernels can saturate here: the override if one is set,
    else ``QVIZ_U8S8_SATURATES``, else the CPU's flags (None where they cannot be read).

    QvizError when ``QVIZ_U8S8_SATURATES`` holds anything but 0 or 1.
    """
    override = _override
    if override is not None:
        return override
    from_env = _from_env()
    if from_env is not None:
        return from_env
    return detect_u8s8_saturation()


def set_u8s8_saturation(value: bool | None) -> None:
    """Make `u8s8_may_saturate` answer `value` in every thread; None clears the override."""
    global _override
    with _lock:
        _override = value


@contextmanager
def assume_u8s8_saturation(value: bool) -> Iterator[None]:
    """`u8s8_may_saturate` answers `value` inside the block (in every thread), then whatever
    it answered before."""
    global _override
    with _lock:
        before, _override = _override, value
    try:
        yield
    finally:
        with _lock:
            _override = before
