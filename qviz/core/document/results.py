"""Per-tensor results of the current settings, and earlier settings' results kept for undo.

A result is a pure function of (tensor, its settings, the statistics), so results are keyed by
exactly that: undoing a change finds the previous settings' results at once instead of
measuring again. New statistics invalidate activation results (weights need none).
"""

from __future__ import annotations

from collections import OrderedDict

from qviz.core.calibration.analysis import TensorKey, TensorResult
from qviz.core.calibration.config import TensorConfig
from qviz.core.model.loading import TensorKind

# Results of earlier settings kept for undo/redo, per tensor (each holds per-channel arrays).
KEPT_PER_TENSOR = 8


class ResultStore:
    """`current` results and errors for the settings in force; `earlier` by settings."""

    def __init__(self) -> None:
        self._current: dict[TensorKey, TensorResult] = {}
        self._errors: dict[TensorKey, str] = {}
        self._earlier: OrderedDict[tuple[TensorKey, TensorConfig], TensorResult] = OrderedDict()
        self._limit = KEPT_PER_TENSOR

    def clear(self, kind: TensorKind | None = None) -> None:
        """Forget results of every tensor (or of one kind: new statistics touch activations)."""
        if kind is None:
            self._current.clear()
            self._errors.clear()
            self._earlier.clear()
            return
        for store in (self._current, self._errors):
            for key in [k for k in store if k.kind is kind]:
                del store[key]
        for mkey in [m for m in self._earlier if m[0].kind is kind]:
            del self._earlier[mkey]

    def set_limit(self, n_tensors: int) -> None:
        self._limit = max(64, KEPT_PER_TENSOR * n_tensors)

    def result(self, key: TensorKey) -> TensorResult | None:
        return self._current.get(key)

    def error(self, key: TensorKey) -> str | None:
        return self._errors.get(key)

    def known(self) -> dict[TensorKey, TensorResult]:
        """A copy of the current results (safe to hand to a worker thread)."""
        return dict(self._current)

    def has_outcome(self, key: TensorKey) -> bool:
        return key in self._current or key in self._errors

    def put(self, key: TensorKey, result: TensorResult) -> None:
        self._current[key] = result
        self._errors.pop(key, None)
        self._earlier[(key, result.config)] = result
        self._earlier.move_to_end((key, result.config))
        while len(self._earlier) > self._limit:
            self._earlier.popitem(last=False)

    def put_error(self, key: TensorKey, message: str) -> None:
        self._current.pop(key, None)
        self._errors[key] = message

    def settings_changed(self, key: TensorKey, cfg: TensorConfig) -> bool:
        """The tensor's settings are now `cfg`: drop its result, or restore the one measured
        for `cfg` before. Returns True when a result was restored."""
        self._current.pop(key, None)
        self._errors.pop(key, None)
        earlier = self._earlier.get((key, cfg))
        if earlier is None:
            return False
        self._current[key] = earlier
        return True

    def earlier(self, key: TensorKey, cfg: TensorConfig) -> TensorResult | None:
        """A result measured for these settings before, if still kept."""
        return self._earlier.get((key, cfg))

    def keep(self, key: TensorKey, result: TensorResult) -> None:
        """Keep a result of other settings than the current ones (a pinned configuration)."""
        self._earlier[(key, result.config)] = result
        while len(self._earlier) > self._limit:
            self._earlier.popitem(last=False)

    def current_results(self) -> list[TensorResult]:
        return list(self._current.values())
