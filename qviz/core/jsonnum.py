"""Numbers for strict JSON, which has no Infinity or NaN."""

from __future__ import annotations

import math


def json_number(value: float | None) -> float | str | None:
    """`value` as a JSON number, with non-finite values spelled out (a perfect SQNR is +inf)."""
    if value is None:
        return None
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def json_float(value: float | str | None) -> float | None:
    """The number `json_number` wrote ("inf", "-inf" and "nan" included); None stays None.

    Files are untrusted: any other text, a bool or a container is a ValueError."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def json_count(value: object, low: int = 0) -> int:
    """A JSON integer of at least ``low`` ("5", 2.5, true and -1 are ValueErrors)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"expected an integer >= {low}, got {value!r}")
    return value


def json_text(value: object) -> str:
    """A JSON string (a ValueError for anything else)."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value
