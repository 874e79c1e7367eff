"""The large weights' statistics, computed in one pass over the model (``qviz collect``).

Which weights: those with at least ``STATS_MIN_VALUES`` values (smaller ones are analysed
exactly from their values in milliseconds). Each is memory-mapped, reduced to its
:class:`WeightStats` chunk by chunk and dropped, so the pass holds one weight's statistics
beyond what it returns, whatever the model's size.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Generator, Mapping
from typing import Any

import numpy as np

from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock
from qviz.core.stats.weight_stats import WeightStats, compute_weight_stats

__all__ = [
    "STATS_MIN_VALUES", "WeightStatsMeanwhile", "collect_weight_stats", "large_weights",
    "uses_stats",
]

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
    model: LoadedModel, *, should_stop: Callable[[], bool] = lambda: False,
    have: Mapping[str, WeightStats | None] | None = None,
) -> Generator[Progress, None, dict[str, WeightStats]]:
    """Statistics of every large weight, yielding Progress (in weight values) after each.
    Weights in `have` (from an earlier, stopped run; None: no statistics possible) are not
    read again."""
    layers = large_weights(model)
    total = sum(math.prod(int(d) for d in layer.weight_shape or ()) for layer in layers)
    clock = ProgressClock(total, "weight statistics")
    known = have or {}
    out: dict[str, WeightStats] = {}
    done = 0
    yield clock.report(0)
    for layer in layers:
        if should_stop():
            break
        assert layer.weight is not None
        if layer.weight in known:
            ws = known[layer.weight]
        else:
            ws = compute_weight_stats(model.weight(layer.weight), layer.weight,
                                      layer.channel_axis)
        if ws is not None:
            out[layer.weight] = ws
        done += math.prod(int(d) for d in layer.weight_shape or ())
        yield clock.report(done)
    return out


class WeightStatsMeanwhile:
    """The weights' statistics computed on a helper thread while ONNX Runtime builds its
    session for calibration: building it reads the external data and optimizes the graph on
    one core for seconds (5.5 s for the 2.7 GB chain), and the statistics' compiled passes
    release the GIL. Stopped (after the weight at hand) when calibration starts running
    batches, which want every core; :meth:`finish` computes the rest.

    Use: ``meanwhile = WeightStatsMeanwhile(model)``, build the session, ``meanwhile.stop()``,
    run the batches, then ``yield from meanwhile.finish()``. Any error on the thread is left
    to :meth:`finish`, which meets it again on the caller's thread."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._stop = threading.Event()
        # Kept as the statistics file stores them (counts in the narrowest integer type):
        # held while calibration runs, a 4 GB model's would be 0.8 GB as float64 histograms.
        self._done: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]] | None] = {}
        self._thread = threading.Thread(target=self._run, name="qviz-weight-stats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # met again by finish() on the caller's thread
            for layer in large_weights(self._model):
                if self._stop.is_set():
                    return
                assert layer.weight is not None
                ws = compute_weight_stats(
                    self._model.weight(layer.weight), layer.weight, layer.channel_axis)
                self._done[layer.weight] = None if ws is None else ws.to_arrays()

    def stop(self) -> None:
        """Stop after the weight at hand and wait for it."""
        self._stop.set()
        self._thread.join()

    @property
    def done(self) -> int:
        """Weights whose statistics the thread computed (after :meth:`stop`)."""
        return len(self._done)

    def finish(self) -> Generator[Progress, None, dict[str, WeightStats]]:
        """Stop the thread, then every large weight's statistics (the thread's, and the rest
        computed here), yielding Progress as :func:`collect_weight_stats` does."""
        self.stop()
        have = {name: None if kept is None else WeightStats.from_arrays(*kept)
                for name, kept in self._done.items()}
        return (yield from collect_weight_stats(self._model, have=have))
