"""The evaluation subset and the float model's outputs on it, computed once.

Sensitivity runs 2n+1 quantized graphs and a mixed-precision search dozens: each is compared
with the float model on the same samples. The float model runs once; its outputs (and the
feeds) are kept within a memory budget, and past it re-read and re-run beside each variant
(slower, same numbers). The samples are hashed as they are read, so a cached report can be
found without running anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from qviz.core.data.feeding import StateCarry
from qviz.core.errors import QvizError
from qviz.core.evaluation.accumulators import OutputAccumulator, output_kind
from qviz.core.evaluation.evaluate import check_limits
from qviz.core.evaluation.results import EvaluationCancelled, Metric, frozen_metrics
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import SessionConfig, build_session

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_MEMORY_BUDGET",
    "Batch",
    "FloatReference",
    "complete_reference",
    "prepare_reference",
]

#: Samples evaluated per variant unless told otherwise: 2n+1 graphs run over them, so the
#: subset is what makes sensitivity "a minute's work"; the final answer of a mixed-precision
#: search is confirmed on the whole data set.
DEFAULT_LIMIT = 500
#: Feeds and float outputs kept in memory for the evaluation subset. Past this the float model
#: is re-run beside every variant instead (slower, same numbers).
DEFAULT_MEMORY_BUDGET = 1 << 30


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch of the subset: its feeds, the float outputs once known, its labels."""

    feeds: Mapping[str, np.ndarray]
    outputs: tuple[np.ndarray, ...] | None  # float outputs; None until the float pass ran
    labels: np.ndarray | None


@dataclass(frozen=True, eq=False)
class FloatReference:
    """The evaluation subset and the float model's outputs on it, computed once.

    ``batches`` holds feeds and float outputs when they fit the memory budget; otherwise it is
    empty and `iter_batches` reads the data and runs the float model again (``streaming``).
    ``digest`` identifies the samples actually used (their bytes and labels), for caching.
    """

    model: LoadedModel
    data: Dataset
    n_samples: int
    batch_size: int
    digest: str
    float_metrics: Mapping[Metric, float]
    batches: tuple[Batch, ...] = ()
    streaming: bool = False
    n_batches: int = 0
    float_done: bool = False  # the float pass ran (outputs kept, float metrics known)

    @property
    def data_description(self) -> str:
        return self.data.description

    @property
    def has_labels(self) -> bool:
        return self.data.labels is not None

    def iter_batches(self) -> Iterator[Batch]:
        """Each batch with its float outputs, in sample order."""
        if not self.streaming:
            yield from self.batches
            return
        session = build_session(self.model.model, SessionConfig.for_float())
        carry = StateCarry.of(self.data)
        for b in _read_batches(self.data, self.n_samples, self.batch_size):
            yield replace(b, outputs=tuple(carry.run(session, b.feeds, self.model.outputs)))


def _read_batches(data: Dataset, total: int, batch_size: int) -> Iterator[Batch]:
    done = 0
    labels = data.labels
    for feeds in data.batches(batch_size):
        n = min(data.samples_in(feeds), total - done)
        if n <= 0:
            break
        feeds = data.head(feeds, n)
        yield Batch(feeds, None, None if labels is None else labels[done : done + n])
        done += n
        if done >= total:
            break


def _hash_batch(h: Any, b: Batch) -> None:
    for name in sorted(b.feeds):
        arr = np.ascontiguousarray(b.feeds[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if b.labels is not None:
        lab = np.ascontiguousarray(b.labels)
        h.update(f"labels|{lab.dtype.str}|{lab.shape}".encode())
        h.update(lab.tobytes())


def prepare_reference(
    model: LoadedModel,
    data: Dataset,
    *,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 128,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    run_float: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, FloatReference]:
    """Read the first `limit` samples (hashing them) and run the float model over them once.

    With ``run_float=False`` only the data is read and hashed (enough for a cache lookup);
    `complete_reference` runs the float pass later.
    """
    total = check_limits(data, limit, batch_size)
    clock = ProgressClock(total, "reading the evaluation data")
    h = hashlib.sha256()
    kept: list[Batch] = []
    kept_bytes = 0
    streaming = False
    done = 0
    n_batches = 0
    h.update(repr(data.states).encode())  # fed-back state changes every output
    for b in _read_batches(data, total, batch_size):
        if should_stop():
            raise EvaluationCancelled()
        _hash_batch(h, b)
        n_batches += 1
        done += data.samples_in(b.feeds)
        if not streaming:
            kept_bytes += sum(v.nbytes for v in b.feeds.values())
            if kept_bytes > memory_budget:
                streaming, kept = True, []  # re-read per variant instead
            else:
                kept.append(b)
        yield clock.report(done)
    if done == 0:
        raise QvizError(f"no batch could be read from {data.description}")
    ref = FloatReference(
        model=model,
        data=data,
        n_samples=done,
        batch_size=batch_size,
        digest=h.hexdigest(),
        float_metrics=frozen_metrics({}),
        batches=tuple(kept),
        streaming=streaming,
        n_batches=n_batches,
    )
    if run_float:
        ref = yield from complete_reference(
            ref, memory_budget=memory_budget, should_stop=should_stop
        )
    return ref


def complete_reference(
    ref: FloatReference,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, FloatReference]:
    """Run the float model over the reference's samples, keeping its outputs (in budget),
    and measure the float model's own accuracy."""
    if ref.float_done:
        return ref
    model = ref.model
    session = build_session(model.model, SessionConfig.for_float())
    clock = ProgressClock(ref.n_samples, "running the float model")
    primary = model.outputs[0]
    acc = OutputAccumulator(primary, output_kind(model.model, primary))
    source = (
        ref.batches if not ref.streaming else _read_batches(ref.data, ref.n_samples, ref.batch_size)
    )
    kept: list[Batch] = []
    kept_bytes = sum(v.nbytes for b in ref.batches for v in b.feeds.values())
    streaming = ref.streaming
    done = 0
    carry = StateCarry.of(ref.data)
    for b in source:
        if should_stop():
            raise EvaluationCancelled()
        outs = tuple(carry.run(session, b.feeds, model.outputs))
        acc.update(outs[0], outs[0], b.labels)
        if not streaming:
            kept_bytes += sum(o.nbytes for o in outs)
            if kept_bytes > memory_budget:
                streaming, kept = True, []
            else:
                kept.append(replace(b, outputs=outs))
        done += ref.data.samples_in(b.feeds)
        yield clock.report(done)
    comparison = acc.result()
    float_metrics: dict[Metric, float] = {}
    if comparison.float_accuracy is not None:
        float_metrics[Metric.ACCURACY] = comparison.float_accuracy
    return replace(
        ref,
        batches=tuple(kept),
        streaming=streaming,
        float_metrics=frozen_metrics(float_metrics),
        float_done=True,
    )
