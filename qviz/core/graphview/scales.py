"""Colour scales for node measures: continuous (interpolated between stops, optionally on a
log axis) or categorical (one colour per code), each with its legend."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

__all__ = ["FLOAT_FILL", "NO_READING", "ColourScale"]

#: A quantized node without a number yet (not measured), and a node that stays float.
NO_READING = "#ffffff"
FLOAT_FILL = "#e6e6e6"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _mix(a: str, b: str, t: float) -> str:
    ra, rb = _rgb(a), _rgb(b)
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(ra, rb, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


@dataclass(frozen=True)
class ColourScale:
    """``stops`` are (value, colour) in increasing value, each with its legend ``labels``
    entry. Continuous: colours are interpolated between stops (in log10 of the value when
    ``log``) and held beyond the ends. Categorical: each value is a stop's code exactly."""

    title: str
    stops: tuple[tuple[float, str], ...]
    labels: tuple[str, ...]
    log: bool = False
    categorical: bool = False

    def __post_init__(self) -> None:
        if not self.stops or len(self.labels) != len(self.stops):
            raise ValueError("a colour scale needs one label per stop")
        values = [v for v, _ in self.stops]
        if values != sorted(values):
            raise ValueError("colour scale stops must increase")

    def colour(self, value: float) -> str:
        if self.categorical:
            for v, c in self.stops:
                if v == value:
                    return c
            raise ValueError(f"{value} is not a category of {self.title!r}")
        if math.isnan(value):
            return NO_READING
        pos = self._axis(value)
        stops = [(self._axis(v), c) for v, c in self.stops]
        if pos <= stops[0][0]:
            return stops[0][1]
        for (v0, c0), (v1, c1) in itertools.pairwise(stops):
            if pos <= v1:
                return _mix(c0, c1, (pos - v0) / (v1 - v0) if v1 > v0 else 1.0)
        return stops[-1][1]

    def _axis(self, value: float) -> float:
        if not self.log:
            return value
        return math.log10(value) if value > 0 else -math.inf

    def legend(self) -> tuple[tuple[str, str], ...]:
        """(colour, label) per stop, in increasing value."""
        return tuple((c, label) for (_, c), label in zip(self.stops, self.labels, strict=True))
