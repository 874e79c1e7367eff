"""The compute backend interface: where the many model runs of a search happen.

A `ComputeBackend` opens a `WorkerPool` for one run: every worker loads the run's
`WorkContext` once, then takes jobs (configurations) as they are submitted; the caller reads
`JobEvent`s — progress, results, failures — as they arrive, in whatever order workers finish.
Three backends share the interface:

* `LocalBackend` — today's behaviour: one job at a time, in the calling thread;
* `qviz.core.compute.process_pool.ProcessBackend` — a pool of processes on this machine;
* `qviz.core.compute.ray_backend.RayBackend` — a pool of Ray actors, on this machine or a
  cluster (the optional ``qviz[ray]`` extra).

`run_jobs` is the fan-out every caller uses: it submits jobs, turns their events into one
`Progress` stream (total samples done, so ETA works), checks ``should_stop`` between events
and returns the results in the order of the jobs — never in the order they finished — so a
report is the same whatever ran it. A lost worker's jobs are retried on another worker by
the pool itself; a job that fails raises its error here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qviz.core.compute.jobs import (
    Job,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    WorkContext,
    job_steps,
    job_total,
)
from qviz.core.evaluation.results import EvaluationCancelled
from qviz.core.progress import Progress, ProgressClock

__all__ = [
    "ComputeBackend",
    "LocalBackend",
    "SharedPool",
    "WorkerPool",
    "run_jobs",
]

ShouldStop = Callable[[], bool]
#: How often (seconds) the fan-out looks at ``should_stop`` while waiting for events.
POLL_S = 0.1


class WorkerPool(ABC):
    """Workers holding one `WorkContext`, taking jobs. Use as a context manager."""

    workers: int = 1
    context: WorkContext

    @abstractmethod
    def submit(self, job: Job) -> int:
        """Queue `job`; returns its ticket."""

    @abstractmethod
    def next_event(self, timeout: float | None = None) -> JobEvent | None:
        """The next event of any submitted job; None when `timeout` seconds pass first."""

    @abstractmethod
    def cancel(self) -> None:
        """Drop queued jobs and ask running ones to stop at their next batch."""

    @abstractmethod
    def close(self) -> None:
        """Release the workers (idempotent)."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ComputeBackend(ABC):
    """Somewhere to run jobs: opens one `WorkerPool` per run."""

    #: Shown to the user ("local", "4 local processes", "Ray at 10.0.0.5:6379 (64 workers)").
    description: str = ""

    @abstractmethod
    def open(
        self, context: WorkContext, should_stop: ShouldStop, *, max_workers: int | None = None
    ) -> WorkerPool:
        """Start workers holding `context` (at most `max_workers`: a run that has only so
        many jobs does not pay for more)."""

    def shutdown(self) -> None:  # noqa: B027 - most backends hold nothing between runs
        """Release what the backend holds between runs (a Ray it started)."""

    @property
    def parallel(self) -> bool:
        """Whether jobs may run at the same time (speculative work only pays then)."""
        return True


# --------------------------------------------------------------------------- local


class _SerialPool(WorkerPool):
    """Runs jobs one after the other in the caller's thread, step by step as events are
    read: exactly what the core did before backends existed."""

    workers = 1

    def __init__(self, context: WorkContext, should_stop: ShouldStop) -> None:
        self.context = context
        self._should_stop = should_stop
        self._queue: deque[tuple[int, Job]] = deque()
        self._current: tuple[int, Job, Generator[int, None, Any]] | None = None
        self._tickets = 0

    def submit(self, job: Job) -> int:
        ticket = self._tickets
        self._tickets += 1
        self._queue.append((ticket, job))
        return ticket

    def next_event(self, timeout: float | None = None) -> JobEvent | None:
        if self._current is None:
            if not self._queue:
                return None
            ticket, job = self._queue.popleft()
            self._current = (ticket, job, job_steps(self.context, job, self._should_stop))
        ticket, job, gen = self._current
        try:
            return JobProgress(ticket, next(gen), job.label)
        except StopIteration as stop:
            self._current = None
            return JobDone(ticket, stop.value)
        except Exception as exc:  # the caller re-raises it, as if it had run the job itself
            self._current = None
            return JobFailed(ticket, exc)

    def cancel(self) -> None:
        self._queue.clear()
        if self._current is not None:
            self._current[2].close()
            self._current = None

    def close(self) -> None:
        self.cancel()


class LocalBackend(ComputeBackend):
    """One job at a time in the calling thread (ORT uses every core for each)."""

    description = "local"

    def open(
        self, context: WorkContext, should_stop: ShouldStop, *, max_workers: int | None = None
    ) -> WorkerPool:
        return _SerialPool(context, should_stop)

    @property
    def parallel(self) -> bool:
        return False


class SharedPool(ComputeBackend):
    """An open pool seen as a backend: a run inside another run (the sensitivity pass of a
    mixed-precision search) uses the outer run's workers instead of starting its own."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.description = "shared"

    def open(
        self, context: WorkContext, should_stop: ShouldStop, *, max_workers: int | None = None
    ) -> WorkerPool:
        return _Borrowed(self.pool)

    @property
    def parallel(self) -> bool:
        return self.pool.workers > 1


class _Borrowed(WorkerPool):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool, self.workers, self.context = pool, pool.workers, pool.context

    def submit(self, job: Job) -> int:
        return self.pool.submit(job)

    def next_event(self, timeout: float | None = None) -> JobEvent | None:
        return self.pool.next_event(timeout)

    def cancel(self) -> None:
        self.pool.cancel()

    def close(self) -> None:
        pass  # the owner closes it


@contextmanager
def opened(
    backend: ComputeBackend | None,
    context: WorkContext,
    should_stop: ShouldStop,
    *,
    max_workers: int | None = None,
) -> Iterator[WorkerPool]:
    """`backend.open(...)` as a context manager (`LocalBackend` when None)."""
    pool = (backend or LocalBackend()).open(context, should_stop, max_workers=max_workers)
    try:
        yield pool
    finally:
        pool.close()


# --------------------------------------------------------------------------- the fan-out


def run_jobs(
    pool: WorkerPool,
    jobs: Sequence[Job],
    *,
    clock: ProgressClock,
    offset: int = 0,
    should_stop: ShouldStop = lambda: False,
    on_done: Callable[[int, Any], None] | None = None,
) -> Generator[Progress, None, list[Any]]:
    """Run `jobs` on `pool`, yielding `Progress` (``offset`` + samples done over all jobs,
    on `clock`); return their results in job order.

    ``on_done(index, value)`` is called as each job finishes (in finishing order): callers
    keep partial results there (the sensitivity cache). Raises `EvaluationCancelled` when
    ``should_stop()`` turns true, and a failed job's error.
    """
    totals = [job_total(pool.context, j) for j in jobs]
    tickets = {pool.submit(job): i for i, job in enumerate(jobs)}
    done = [0] * len(jobs)
    results: list[Any] = [None] * len(jobs)
    left = len(jobs)
    label = jobs[0].label if jobs else ""
    while left:
        if should_stop():
            pool.cancel()
            raise EvaluationCancelled()
        event = pool.next_event(POLL_S)
        if event is None or event.ticket not in tickets:
            continue
        i = tickets[event.ticket]
        if isinstance(event, JobFailed):
            pool.cancel()
            raise event.error
        if isinstance(event, JobProgress):
            done[i] = min(event.done, totals[i])
            label = jobs[i].label or label
        else:
            results[i] = event.value
            done[i] = totals[i]
            left -= 1
            if on_done is not None:
                on_done(i, event.value)
        yield clock.report(offset + sum(done), label)
    return results


def wait_for(
    pool: WorkerPool,
    ticket: int,
    *,
    should_stop: ShouldStop,
    others: Callable[[JobEvent], None],
) -> Generator[int, None, Any]:
    """Wait for job `ticket`, yielding its samples done; events of other jobs go to
    `others` (speculative work finishing meanwhile). Returns the job's value."""
    while True:
        if should_stop():
            pool.cancel()
            raise EvaluationCancelled()
        event = pool.next_event(POLL_S)
        if event is None:
            continue
        if event.ticket != ticket:
            others(event)
            continue
        if isinstance(event, JobFailed):
            raise event.error
        if isinstance(event, JobProgress):
            yield event.done
        else:
            return event.value
