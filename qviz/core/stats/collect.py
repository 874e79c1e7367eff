"""Calibration: run the model once over the data and fold every activation into statistics.

The graph is augmented so the tensors feeding quantizable layers are also graph outputs; each
batch's values are folded into streaming histograms and dropped, so memory is
tensors x bins whatever the number of samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from qviz.core.data.dataset import Dataset
from qviz.core.data.feeding import StateCarry
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock
from qviz.core.progress import run_to_completion as run_to_completion  # re-exported
from qviz.core.runtime.sessions import SessionConfig, build_session, with_outputs
from qviz.core.stats.channel_stats import DEFAULT_CHANNEL_BINS
from qviz.core.stats.gram import DEFAULT_GRAM_BUDGET, GramCollector, GramStats, gram_specs
from qviz.core.stats.provenance import Provenance
from qviz.core.stats.snapshots import Snapshot, coarse, snapshot_bins, snapshot_points
from qviz.core.stats.tensor_stats import TensorStats, TensorStatsAccumulator
from qviz.core.stats.weight_stats import WeightStats


@dataclass(frozen=True)
class CalibrationStats:
    """Everything calibration keeps: per-tensor statistics plus where they came from.

    ``grams`` maps a weight name to the Gram matrix of its layer's input rows (GPTQ), when
    collected (``collect_stats(gram=True)``); layers reading one activation share one.
    ``weights`` holds the statistics of the large weights (``weight_stats``), when they were
    computed with the activations; a stats file reads them on demand, so it may be a lazy
    mapping."""

    model_source: str
    model_sha256: str
    data_description: str
    data_is_random: bool
    n_samples: int
    tensors: Mapping[str, TensorStats] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    grams: Mapping[str, GramStats] = field(default_factory=dict)
    weights: Mapping[str, WeightStats] = field(default_factory=dict)
    #: The float original given with a quantized model (None: none, or derived from it).
    float_source: str | None = None
    #: Coarse statistics after 16, 32, 64 … samples (when asked for): how ranges converge.
    snapshots: tuple[Snapshot, ...] = ()
    #: A shard of the data, or a merge of several files (`qviz.core.stats.merge`).
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        object.__setattr__(self, "grams", MappingProxyType(dict(self.grams)))
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", MappingProxyType(self.weights))


#: One batch's collected tensors up to this size: the next batch runs while this one is
#: folded in (two batches in memory). Beyond it (a large model's hundreds of activations)
#: batches run one after another, so memory holds one batch's tensors, not two.
OVERLAP_BYTES = 128 << 20

#: Threads that fold a batch run one after another (ONNX Runtime is idle meanwhile): the
#: compiled passes release the GIL and each tensor's accumulator is folded by one thread.
FOLD_THREADS = max(1, min(4, os.cpu_count() or 1))


def _fold(
    pairs: Sequence[tuple[TensorStatsAccumulator, np.ndarray]],
    helpers: ThreadPoolExecutor | None,
) -> None:
    """Fold each value into its accumulator, spread over `helpers` and this thread (largest
    first, each to the least loaded share): the same statistics as one after another."""
    if helpers is None or len(pairs) < 2:
        for acc, value in pairs:
            acc.update(value)
        return
    n = FOLD_THREADS
    shares: list[list[tuple[TensorStatsAccumulator, np.ndarray]]] = [[] for _ in range(n)]
    loads = [0] * n
    for pair in sorted(pairs, key=lambda p: -p[1].size):
        i = loads.index(min(loads))
        shares[i].append(pair)
        loads[i] += pair[1].size

    def fold_share(share: list[tuple[TensorStatsAccumulator, np.ndarray]]) -> None:
        for acc, value in share:
            acc.update(value)

    futures = [helpers.submit(fold_share, share) for share in shares[1:] if share]
    try:
        fold_share(shares[0])
    finally:
        for future in futures:
            future.result()  # raises what its share raised, after every share is done


def activation_tensors(model: LoadedModel) -> list[str]:
    """The activation tensors that feed quantizable layers, in graph order, each once."""
    seen: dict[str, None] = {}
    for layer in model.layers:
        for name in layer.activations:
            seen.setdefault(name, None)
    return list(seen)


def collect_stats(
    model: LoadedModel,
    data: Dataset,
    *,
    batch_size: int = 32,
    bins: int = 2048,
    should_stop: Callable[[], bool] = lambda: False,
    channel_bins: int | None = DEFAULT_CHANNEL_BINS,
    gram: bool = False,
    gram_budget: int = DEFAULT_GRAM_BUDGET,
    snapshots: bool = False,
) -> Generator[Progress, None, CalibrationStats]:
    """Run `model` over `data`, yielding Progress after each batch; return the statistics.

    Per input channel of every quantized layer the statistics keep moments and a histogram of
    `channel_bins` bins (None: none). With `gram` the Gram matrix of every weighted layer's
    input is kept too (GPTQ); QvizError before anything runs if they need over `gram_budget`
    bytes.

    Stops between batches when `should_stop()` is true (or the caller closes the generator);
    a stopped run returns nothing usable, so callers treat `GeneratorExit`/stop as cancel.
    """
    names = activation_tensors(model)
    if not names:
        raise QvizError("the model has no quantizable layers (Conv, ConvTranspose, Gemm, MatMul)")
    if len(data) == 0:
        raise QvizError("the calibration data set is empty")
    session = build_session(
        with_outputs(model.model, names),
        replace(SessionConfig.for_float(), spinning=False),
        what="this model",
        data_dir=model.data_dir,
    )
    input_names = {i.name for i in model.inputs}
    accumulators = {
        n: TensorStatsAccumulator(
            n, bins=bins, channel_axis=model.activation_channel_axis(n), channel_bins=channel_bins
        )
        for n in names
    }
    specs, gram_notes = gram_specs(model.model, model.layers) if gram else ([], [])
    grams = GramCollector(specs, gram_budget) if gram else None
    from_outputs = [n for n in names if n not in input_names]
    clock = ProgressClock(len(data), "calibrating")
    done = 0
    # Snapshots of the statistics after 16, 32, 64 … samples (when asked): how ranges converge.
    points = list(snapshot_points(len(data))) if snapshots else []
    snap_bins = snapshot_bins(len(names), bins, len(data))
    taken: list[Snapshot] = []
    yield clock.report(0)
    # ONNX Runtime releases the GIL while it runs, so the next batch runs on a helper thread
    # while this one is folded into the histograms: the two costs overlap instead of adding.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="qviz-collect") as pool,
        ThreadPoolExecutor(max_workers=max(1, FOLD_THREADS - 1),
                           thread_name_prefix="qviz-fold") as folders,
    ):
        batches = iter(data.batches(batch_size))

        # A stateful model's next batch needs this one's outputs: each run takes the state its
        # predecessor left (submitted only after that one finished), and says what it was fed.
        carry = StateCarry.of(data)

        def run_fed(feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], dict]:
            fed = carry.feeds(feeds)
            return carry.run(session, feeds, from_outputs), fed

        def submit(feeds: Mapping[str, np.ndarray] | None) -> Future | None:
            if feeds is None:
                return None
            if not from_outputs:  # every tensor is a graph input: nothing to run
                done_future: Future = Future()
                done_future.set_result(([], carry.feeds(feeds)))
                return done_future
            return pool.submit(run_fed, feeds)

        current = next(batches, None)
        pending = submit(current)
        overlap: bool | None = None  # known after the first batch
        while current is not None and pending is not None:
            values, fed = pending.result()
            if overlap is None:
                overlap = sum(int(v.nbytes) for v in values) <= OVERLAP_BYTES
            following = None if should_stop() else next(batches, None)
            pending_next = submit(following) if overlap else None
            # Overlapping, the next batch's run has the other cores: fold on this thread.
            _fold([(accumulators[name], value)
                   for name, value in zip(from_outputs, values, strict=True)],
                  None if overlap or FOLD_THREADS == 1 else folders)
            if grams is not None:
                for name, value in zip(from_outputs, values, strict=True):
                    grams.update(name, value)
            del values
            if not overlap and not should_stop():
                pending_next = submit(following)  # this batch's outputs are freed first
            for name in names:
                if name in input_names:
                    accumulators[name].update(fed[name])
                    if grams is not None:
                        grams.update(name, fed[name])
            done += data.samples_in(current)
            if points and done >= points[0]:
                # Batches rarely end on a power of two: one snapshot of the samples so far.
                while points and done >= points[0]:
                    points.pop(0)
                taken.append(
                    Snapshot(
                        done,
                        {n: coarse(a.finish(), snap_bins) for n, a in accumulators.items()},
                    )
                )
            yield clock.report(done)
            if should_stop():
                if pending_next is not None:
                    pending_next.cancel()
                raise CollectionCancelled()
            current, pending = following, pending_next
    tensors = {n: acc.finish() for n, acc in accumulators.items()}
    notes = [*model.notes, *gram_notes]
    if data.is_random:
        notes.append("calibrated on RANDOM input, not real data: ranges do not reflect real use")
    for stats in tensors.values():
        if stats.n_nonfinite:
            notes.append(
                f"{stats.name}: {stats.n_nonfinite} NaN/Inf activation values were skipped"
            )
        if stats.dominated_by_extremes:
            notes.append(
                f"{stats.name}: range dominated by extreme values "
                f"(min {stats.min:.3g}, max {stats.max:.3g}); MinMax scales are useless here"
            )
    return CalibrationStats(
        model_source=str(model.source),
        model_sha256=model.sha256,
        data_description=data.description,
        data_is_random=data.is_random,
        n_samples=done,
        tensors=tensors,
        notes=tuple(notes),
        grams=grams.finish() if grams is not None else {},
        float_source=_float_source(model),
        snapshots=tuple(taken),
    )


def _float_source(model: LoadedModel) -> str | None:
    imported = model.imported
    return None if imported is None or imported.float_source is None else str(
        imported.float_source)


class CollectionCancelled(Exception):
    """Raised inside the generator when the caller asked it to stop."""
