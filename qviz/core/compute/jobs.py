"""What a compute worker holds and what it is sent: the one function every backend runs.

A worker loads a `WorkContext` once (the model, the float reference of a sensitivity or
mixed-precision run, the evaluation data) and then runs jobs — configurations — against it:
`MeasureJob` (one configuration on the reference subset, `qviz.core.search.measure`) or
`EvaluateJob` (one full `evaluate`). `run_job` is the same code whether it runs in this
thread, in a process of a pool or in a Ray actor on another machine, so the numbers are the
same to the bit wherever it ran.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import DEFAULT_SPEED_BUDGET_S, OutputRole, evaluate
from qviz.core.evaluation.results import Evaluation
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.sessions import KernelPrecision, Threads
from qviz.core.search.measure import Measurement, measure
from qviz.core.search.reference import FloatReference

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.data.dataset import Dataset


def read_only(items: Mapping[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(dict(items))


def _reduce_proxy(proxy: MappingProxyType[Any, Any]) -> tuple[Any, tuple[Mapping[Any, Any]]]:
    return read_only, (dict(proxy),)


# The core's frozen results hold read-only mappings (metrics, reference outputs), which plain
# pickle refuses; workers send them back and forth, so they pickle as read-only copies.
copyreg.pickle(MappingProxyType, _reduce_proxy)

__all__ = [
    "EvaluateJob",
    "Job",
    "JobDone",
    "JobEvent",
    "JobFailed",
    "JobProgress",
    "MeasureJob",
    "WorkContext",
    "job_steps",
    "job_total",
]


@dataclass(frozen=True, eq=False)
class WorkContext:
    """What every worker loads once: the model, and the float reference (for `MeasureJob`)
    and/or the evaluation data (for `EvaluateJob`)."""

    model: LoadedModel
    reference: FloatReference | None = None
    data: Dataset | None = None

    def __post_init__(self) -> None:
        if self.reference is not None and not self.reference.float_done:
            raise ValueError("a work context needs a reference whose float pass ran")


@dataclass(frozen=True, eq=False)
class MeasureJob:
    """One configuration (its analysed tensors) measured on the context's reference."""

    results: tuple[TensorResult, ...]
    native: bool = True
    precision: KernelPrecision = KernelPrecision.DEFAULT
    label: str = ""


@dataclass(frozen=True, eq=False)
class EvaluateJob:
    """One `evaluate` of a configuration on the context's data."""

    results: tuple[TensorResult, ...]
    native: bool = True
    precision: KernelPrecision = KernelPrecision.DEFAULT
    limit: int | None = None
    batch_size: int = 64
    latency: bool = False
    label: str = ""
    role: OutputRole = OutputRole.AUTO
    #: ORT's threads for the latency timing (on the worker's machine).
    threads: Threads | None = None
    #: Exactly this many timed runs, else about this many seconds (see `evaluate`).
    latency_repeats: int | None = None
    latency_budget_s: float = DEFAULT_SPEED_BUDGET_S


Job = MeasureJob | EvaluateJob


@dataclass(frozen=True)
class JobProgress:
    """Samples done so far by job ``ticket`` (restarts from 0 when the job is retried)."""

    ticket: int
    done: int
    label: str = ""


@dataclass(frozen=True, eq=False)
class JobDone:
    ticket: int
    value: Any  # Measurement for a MeasureJob, Evaluation for an EvaluateJob


@dataclass(frozen=True, eq=False)
class JobFailed:
    ticket: int
    error: BaseException


JobEvent = JobProgress | JobDone | JobFailed


def job_total(context: WorkContext, job: Job) -> int:
    """Samples a job runs over (its progress counts up to this)."""
    if isinstance(job, MeasureJob):
        return context.reference.n_samples if context.reference is not None else 0
    if context.data is None:
        return 0
    n = len(context.data)
    return n if job.limit is None else min(n, job.limit)


def job_steps(
    context: WorkContext, job: Job, should_stop: Callable[[], bool]
) -> Generator[int, None, Measurement | Evaluation]:
    """Run `job` on `context`, yielding the samples done after each batch."""
    if isinstance(job, MeasureJob):
        if context.reference is None:
            raise QvizError("this worker holds no float reference to measure against")
        return (
            yield from measure(
                context.reference,
                job.results,
                native=job.native,
                precision=job.precision,
                should_stop=should_stop,
            )
        )
    if context.data is None:
        raise QvizError("this worker holds no evaluation data")
    gen = evaluate(
        context.model,
        job.results,
        context.data,
        native=job.native,
        precision=job.precision,
        limit=job.limit,
        batch_size=job.batch_size,
        latency=job.latency,
        role=job.role,
        threads=job.threads,
        latency_repeats=job.latency_repeats,
        latency_budget_s=job.latency_budget_s,
        should_stop=should_stop,
    )
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            value: Evaluation = stop.value
            return value
        yield p.done

