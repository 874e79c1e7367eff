"""The evaluation data's statistics, kept beside the calibration statistics, and what they say
about each activation's range (see `qviz.core.calibration.representative`)."""

from __future__ import annotations

from dataclasses import replace

from qviz.core.calibration.analysis import TensorKey, TensorResult
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.representative import Representativeness, compare, convergence
from qviz.core.document.events import DocumentEvents
from qviz.core.errors import QvizError
from qviz.core.layerdata.deferred import Pending
from qviz.core.layerdata.layer import LayerData
from qviz.core.model.loading import TensorKind
from qviz.core.stats.collect import CalibrationStats

_CONVERGENCE_ENTRIES = 256


class EvaluationStats:
    """Held by a `Document`: the evaluation data's statistics and the comparisons made."""

    def __init__(self, events: DocumentEvents) -> None:
        self._events = events
        self.stats: CalibrationStats | None = None
        self._cache: dict[
            tuple[TensorKey, TensorConfig, int, bool], Representativeness | None
        ] = {}
        # Convergence per tensor and settings, for the calibration statistics it was found
        # on: a search per snapshot, and the layer view asks on every redraw.
        self._convergence: dict[tuple[TensorKey, TensorConfig], list[tuple[int, float, float]]]
        self._convergence = {}
        self._convergence_of: CalibrationStats | None = None

    def set(self, stats: CalibrationStats | None) -> None:
        self.stats = stats
        self._cache.clear()
        self._events.eval_stats.emit()

    def compare(
        self,
        key: TensorKey,
        cfg: TensorConfig,
        cal: CalibrationStats | None,
        result: TensorResult | None = None,
        *,
        eval_alone: bool = False,
        defer: list[Pending] | None = None,
    ) -> Representativeness | None:
        """The activation's calibration range against the evaluation data (None: no
        statistics for one of them, a weight, a tensor kept float). `result`: the analysis of
        `cfg` already made (its range is not chosen again); `eval_alone`: with the range the
        evaluation data alone would choose (a second search: only for the tensor on view).
        `defer`: when not known yet, add the comparison to this list and return None."""
        ev = self.stats
        if (
            ev is None or cal is None or key.kind is not TensorKind.ACTIVATION
            or not cfg.quantize or key.name not in cal.tensors or key.name not in ev.tensors
        ):
            return None
        ckey = (key, cfg, id(cal), eval_alone)
        if ckey not in self._cache:
            chosen = None
            if result is not None and result.config == cfg:
                chosen = (result.qparams, result.metrics)

            def build() -> Representativeness | None:
                assert ev is not None and cal is not None
                try:
                    return compare(
                        cal.tensors[key.name], ev.tensors[key.name], cfg, ev.n_samples,
                        chosen=chosen, eval_alone=eval_alone,
                    )
                except QvizError:
                    return None

            def store(found: Representativeness | None) -> bool:
                if self.stats is not ev:
                    return False  # compared with evaluation data replaced since
                self._cache[ckey] = found
                return True

            if defer is not None:
                # Failing, it is left out as a QvizError leaves it (the dialog says why).
                defer.append(Pending(("representativeness", *ckey),
                                     f"the evaluation data's range for {key.name}", build,
                                     store, lambda _exc: store(None)))
                return None
            store(build())
        return self._cache[ckey]

    def convergence(
        self, key: TensorKey, cfg: TensorConfig, cal: CalibrationStats | None,
        defer: list[Pending] | None = None,
    ) -> list[tuple[int, float, float]] | None:
        """The activation's range after 16, 32, 64 … calibration samples (empty without
        snapshots). `defer`: when not known yet, add the search to this list and return
        None."""
        if cal is None or not cal.snapshots or key.name not in cal.tensors or not cfg.quantize:
            return []
        if cal is not self._convergence_of:
            self._convergence.clear()
            self._convergence_of = cal
        hit = self._convergence.get((key, cfg))
        if hit is not None:
            return list(hit)

        def build() -> list[tuple[int, float, float]]:
            assert cal is not None
            try:
                return convergence(cal.snapshots, cal.tensors[key.name], cal.n_samples, cfg)
            except QvizError:
                return []

        def store(points: list[tuple[int, float, float]]) -> bool:
            if cal is not self._convergence_of:
                return False  # searched on calibration statistics replaced since
            if len(self._convergence) >= _CONVERGENCE_ENTRIES:
                self._convergence.pop(next(iter(self._convergence)))
            self._convergence[(key, cfg)] = points
            return True

        if defer is not None:
            defer.append(Pending(("convergence", key, cfg, id(cal)),
                                 f"the convergence of {key.name}", build, store,
                                 lambda _exc: store([])))
            return None
        points = build()
        store(points)
        return list(points)


def with_evaluation_view(
    data: LayerData,
    eval_stats: CalibrationStats | None,
    representativeness: Representativeness | None,
    convergence_points: list[tuple[int, float, float]] | None,
) -> LayerData:
    """`data` with the activation's evaluation histogram (scaled to the calibration data's
    total, to compare shapes), evaluation-only range and convergence added (None: still
    being computed)."""
    a = data.activation
    if a is None:
        return data
    eval_t = None if eval_stats is None else eval_stats.tensors.get(a.result.name)
    hist, band = None, None
    if eval_t is not None and eval_t.histogram.total > 0:
        h = eval_t.histogram
        hist = (h.edges, h.counts * (a.stats.histogram.total / h.total))
        band = None if representativeness is None else representativeness.eval_range
    return replace(data, activation=replace(
        a, eval_hist=hist, eval_band=band,
        convergence=() if convergence_points is None else tuple(convergence_points),
        convergence_waiting=convergence_points is None,
    ))
