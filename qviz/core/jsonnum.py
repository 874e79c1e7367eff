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
    """The number `json_number` wrote ("inf", "-inf" and "nan" included); None stays None."""
    if value is None:
        return None
    return float(value)
