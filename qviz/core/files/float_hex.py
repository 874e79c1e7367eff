"""float32 values as the 8 hex digits of their IEEE-754 bits (config files, TensorRT caches)."""

from __future__ import annotations

import numpy as np

from qviz.core.errors import QvizError

__all__ = ["float32_from_hex", "float32_hex"]


def float32_hex(value: float | np.floating) -> str:
    """The 8 hex digits of a float32's bits, most significant first (as TensorRT writes them)."""
    return np.asarray(value, dtype=">f4").tobytes().hex()


def float32_from_hex(text: str) -> np.float32:
    """Inverse of `float32_hex`."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 4:
        raise QvizError(f"'{text}' is not the 8 hex digits of a float32")
    return np.frombuffer(raw, dtype=">f4")[0].astype(np.float32)
