"""A histogram's count axis that stays honest in log mode."""

from __future__ import annotations

import math

import pyqtgraph as pg


class CountAxis(pg.AxisItem):
    """Left axis that stays honest in log mode.

    In log mode the curve plots log10(1 + count) (zero-count bins must stay drawable), and this
    axis puts its ticks where count = 0, 1, 10, 100, ... and labels them with the counts
    themselves, so a reader never has to undo the transform in their head.
    """

    def __init__(self) -> None:
        super().__init__("left")
        self.log = False
        self.enableAutoSIPrefix(False)

    def tickValues(
        self, minVal: float, maxVal: float, size: float
    ) -> list[tuple[float, list[float]]]:
        if not self.log:
            return super().tickValues(minVal, maxVal, size)
        top = max(maxVal, 1.0)
        kmax = math.floor(top)
        major = [0.0] + [math.log10(1 + 10**k) for k in range(0, kmax + 1)]
        major = [v for v in major if minVal - 1e-9 <= v <= maxVal + 1e-9]
        # "0" and "1" sit 0.3 decades apart: drop "1" when they would overlap.
        px_per_decade = size / max(maxVal - minVal, 1e-9)
        if math.log10(2.0) * px_per_decade < 14 and math.log10(2.0) in major:
            major.remove(math.log10(2.0))
        # Thin out labels when many decades are visible on a short axis.
        stride = max(1, math.ceil(len(major) / max(2.0, size / 22.0)))
        return [(1.0, major[::stride])]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        if not self.log:
            return [si_count(v) for v in values]
        return [si_count(round(10**v - 1)) for v in values]


def si_count(v: float) -> str:
    """Counts with k / M / G suffixes: '2.5M' reads faster than '2500000'."""
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.4g}"
