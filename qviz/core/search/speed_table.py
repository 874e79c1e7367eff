"""Measured per-layer timings at each precision: what the speed objective predicts from.

For each quantized precision a search allows, the model with *every* layer at that precision
is profiled against float (`layer_speed`): each layer's time there — its kernel, the Q/DQ
ORT keeps for it and the layout changes it adds — is that layer's cost at that precision,
and its float time is its cost kept float. A configuration's predicted time is the sum of
its layers' costs plus the float model's other ops. It is a prediction (a layer's Q/DQ
depends on its neighbours' precisions): the search confirms its answer by timing it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from qviz.core.jsonnum import json_number as _num

__all__ = ["FLOAT", "LayerTimes", "SpeedTable"]

#: The precision name of a layer kept float.
FLOAT = "float"


@dataclass(frozen=True)
class LayerTimes:
    """One layer's median milliseconds per run: in float, and at each quantized precision
    (by precision name), with the kernel ORT ran it as there."""

    name: str
    float_ms: float
    level_ms: Mapping[str, float]
    kernels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_ms", MappingProxyType(dict(self.level_ms)))
        object.__setattr__(self, "kernels", MappingProxyType(dict(self.kernels)))

    def ms(self, precision: str) -> float:
        if precision == FLOAT:
            return self.float_ms
        return self.level_ms.get(precision, math.inf)


@dataclass(frozen=True)
class SpeedTable:
    """Every layer's `LayerTimes` at one batch and thread count, and the float model's time
    outside the layers (``other_ms``)."""

    batch_size: int
    threads: int
    layers: tuple[LayerTimes, ...]
    other_ms: float
    _by_name: Mapping[str, LayerTimes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({x.name: x for x in self.layers}))

    def time(self, layer: str, precision: str) -> float:
        """A layer's predicted ms at a precision (a layer never timed costs nothing: it
        quantizes nothing and runs the same in every configuration)."""
        x = self._by_name.get(layer)
        return 0.0 if x is None else x.ms(precision)

    def estimate(self, assignment: Mapping[str, str]) -> float:
        """Predicted ms per run of a configuration (layer → precision name)."""
        return self.other_ms + sum(self.time(n, p) for n, p in assignment.items())

    def fastest(self, layer: str, precisions: Sequence[str]) -> str:
        """The precision, among `precisions`, the layer runs fastest at (the most accurate
        of equal ones: later in the list)."""
        best = precisions[-1]
        for p in reversed(precisions):
            if self.time(layer, p) < self.time(layer, best):
                best = p
        return best

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "other_ms": _num(self.other_ms),
            "layers": [
                {
                    "name": x.name,
                    "float_ms": _num(x.float_ms),
                    "ms": {k: _num(v) for k, v in x.level_ms.items()},
                    "kernels": dict(x.kernels),
                }
                for x in self.layers
            ],
        }

    @classmethod
    def merge(
        cls,
        batch_size: int,
        threads: int,
        per_level: Mapping[str, Mapping[str, tuple[float, float, str]]],
        others: Sequence[float],
    ) -> SpeedTable:
        """The table from each level's profile: ``per_level[precision][layer] = (float ms,
        quantized ms, kernel)``; a layer's float time is the median over the profiles."""
        names: list[str] = []
        for rows in per_level.values():
            names += [n for n in rows if n not in names]
        layers = []
        for n in names:
            floats = [rows[n][0] for rows in per_level.values() if n in rows]
            layers.append(
                LayerTimes(
                    n,
                    float(statistics.median(floats)),
                    {p: rows[n][1] for p, rows in per_level.items() if n in rows},
                    {p: rows[n][2] for p, rows in per_level.items() if n in rows},
                )
            )
        other = float(statistics.median(others)) if others else 0.0
        return cls(batch_size, threads, tuple(layers), other)
