"""`evaluate` through a compute backend: one configuration's full evaluation on a worker.

Locally (no backend, or `LocalBackend`) this is `evaluate` itself, progress messages and
all. On a pool, one worker loads the model and the data and runs the same `evaluate`; its
latency figures, if asked for, are that worker's machine's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

from qviz.core.compute.backend import ComputeBackend, LocalBackend, opened, wait_for
from qviz.core.compute.jobs import EvaluateJob, WorkContext, job_total
from qviz.core.evaluation.evaluate import DEFAULT_SPEED_BUDGET_S, OutputRole, evaluate
from qviz.core.evaluation.results import Evaluation
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import KernelPrecision, Threads

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.data.dataset import Dataset

__all__ = ["evaluate_with"]


def evaluate_with(
    compute: ComputeBackend | None,
    model: LoadedModel,
    results: Sequence[TensorResult],
    data: Dataset,
    *,
    native: bool = False,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    limit: int | None = None,
    batch_size: int = 64,
    latency: bool = True,
    label: str = "evaluating",
    role: OutputRole = OutputRole.AUTO,
    threads: Threads | None = None,
    latency_repeats: int | None = None,
    latency_budget_s: float = DEFAULT_SPEED_BUDGET_S,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, Evaluation]:
    """`evaluate(model, results, data, ...)` on `compute` (here when None or local)."""
    if compute is None or isinstance(compute, LocalBackend):
        return (
            yield from evaluate(
                model, results, data, native=native, precision=precision, limit=limit,
                batch_size=batch_size, latency=latency, role=role, threads=threads,
                latency_repeats=latency_repeats, latency_budget_s=latency_budget_s,
                should_stop=should_stop,
            )
        )  # fmt: skip
    job = EvaluateJob(
        tuple(results), native, precision, limit, batch_size, latency, label, role, threads,
        latency_repeats, latency_budget_s,
    )
    context = WorkContext(model, data=data)
    yield Progress(0, 0, 0.0, None, f"{label}: starting a worker on {compute.description}")
    with opened(compute, context, should_stop, max_workers=1) as pool:
        clock = ProgressClock(job_total(context, job), label)
        gen = wait_for(pool, pool.submit(job), should_stop=should_stop, others=lambda e: None)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                value: Evaluation = stop.value
                return value
            yield clock.report(done)
