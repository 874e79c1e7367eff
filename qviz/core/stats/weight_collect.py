"""The large weights' statistics, computed in one pass over the model (``qviz collect``).

Which weights: those with at least ``STATS_MIN_VALUES`` values (smaller ones are analysed
exactly from their values in milliseconds). Each is memory-mapped, reduced to its
:class:`WeightStats` chunk by chunk and dropped, so the pass holds one weight's statistics
beyond what it returns, whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock
from qviz.core.stats.weight_stats import WeightStats, compute_weight_stats

__all__ = ["STATS_MIN_VALUES", "collect_weight_stats", "large_weights", "uses_stats"]

#: Weights with at least this many values are analysed from statistics (4 M: a 2048 x 2048
#: projection; below it the exact analysis takes tens of milliseconds).
STATS_MIN_VALUES = 1 << 22


def uses_stats(layer: Layer) -> bool:
    """Whether `layer`'s weight is large enough to be analysed from statistics."""
    shape = layer.weight_shape
    if layer.weight is None or not shape:
        return False
    return math.prod(int(d) for d in shape) >= STATS_MIN_VALUES


def large_weights(model: LoadedModel) -> list[Layer]:
    """The first layer reading each large weight, in graph order."""
    seen: dict[str, Layer] = {}
    for layer in model.layers:
        if layer.weight is not None and layer.weight not in seen and uses_stats(layer):
            seen[layer.weight] = layer
    return list(seen.values())


def collect_weight_stats(
    model: LoadedModel, *, should_stop: Callable[[], bool] = lambda: False
) -> Generator[Progress, None, dict[str, WeightStats]]:
    """Statistics of every large weight, yielding Progress (in weight values) after each."""
    layers = large_weights(model)
    total = sum(math.prod(int(d) for d in layer.weight_shape or ()) for layer in layers)
    clock = ProgressClock(total, "weight statistics")
    out: dict[str, WeightStats] = {}
    done = 0
    yield clock.report(0)
    for layer in layers:
        if should_stop():
            break
        assert layer.weight is not None
        ws = compute_weight_stats(model.weight(layer.weight), layer.weight, layer.channel_axis)
        if ws is not None:
            out[layer.weight] = ws
        done += math.prod(int(d) for d in layer.weight_shape or ())
        yield clock.report(done)
    return out
