"""Which weights are analysed from their statistics, and where those statistics come from.

Small weights are analysed exactly from their values (milliseconds). A weight of at least
``STATS_MIN_VALUES`` values is analysed from its :class:`WeightStats` (per-tensor and
per-channel granularities): taken from the statistics file when ``qviz collect`` stored them
there, otherwise computed from the memory-mapped weight on first use, and kept for the open
model in a cache bounded in bytes (least recently used first out), so exploring a model of
any size holds at most ``CACHE_BYTES`` of weight statistics besides the one being computed.
Kept whichever way they came: the statistics file reads them from its zip when asked (tens of
milliseconds for a large weight), and a view keyed by the statistics object wants the same
one back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from weakref import WeakKeyDictionary

from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.weight_collect import STATS_MIN_VALUES, uses_stats
from qviz.core.stats.weight_stats import WeightStats, compute_weight_stats

__all__ = [
    "CACHE_BYTES", "STATS_MIN_VALUES", "kept_weight_stats", "uses_stats", "weight_stats",
]

#: Weight statistics kept per open model, at most (bytes of their arrays).
CACHE_BYTES = 512 << 20


class _ModelCache:
    def __init__(self) -> None:
        self.items: OrderedDict[str, WeightStats | None] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, name: str) -> tuple[bool, WeightStats | None]:
        with self.lock:
            if name not in self.items:
                return False, None
            self.items.move_to_end(name)
            return True, self.items[name]

    def put(self, name: str, ws: WeightStats | None) -> None:
        with self.lock:
            self.items[name] = ws
            self.items.move_to_end(name)
            while len(self.items) > 1 and _bytes(self.items.values()) > CACHE_BYTES:
                self.items.popitem(last=False)


def _bytes(items: object) -> int:
    total = 0
    for ws in items:  # type: ignore[attr-defined]
        if ws is not None:
            total += ws.rows.counts.nbytes + 3 * ws.channel_min.nbytes
    return total


_CACHES: WeakKeyDictionary[LoadedModel, _ModelCache] = WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def weight_stats(
    model: LoadedModel, layer: Layer, stats: CalibrationStats | None = None
) -> WeightStats | None:
    """The statistics of `layer`'s weight: from `stats` when it holds them, else computed
    (once per open model, while the cache keeps them). None when the weight holds values
    the statistics cannot describe (non-finite or extreme), which the exact analysis
    reports instead."""
    name = layer.weight
    assert name is not None
    with _CACHES_LOCK:
        cache = _CACHES.get(model)
        if cache is None:
            cache = _CACHES[model] = _ModelCache()
    found, ws = cache.get(name)
    if found and ws is not None:
        return ws
    stored = None if stats is None else stats.weights.get(name)
    if stored is not None:
        ws = stored
    elif not found:  # (found and None: the weight has values statistics cannot describe)
        ws = compute_weight_stats(model.weight(name), name, layer.channel_axis)
    cache.put(name, ws)
    return ws


def kept_weight_stats(model: LoadedModel, layer: Layer) -> tuple[bool, WeightStats | None]:
    """What `weight_stats` keeps for `layer`'s weight, without reading or computing anything:
    (False, None) when nothing is kept, (True, None) for a weight statistics cannot describe."""
    name = layer.weight
    with _CACHES_LOCK:
        cache = _CACHES.get(model)
    if name is None or cache is None:
        return False, None
    return cache.get(name)
