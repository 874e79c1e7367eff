"""A pool of worker processes on this machine, each holding the work context once.

Processes are spawned (never forked: ONNX Runtime's thread pools do not survive a fork) and
get the context pickled once at start. Progress comes back on a queue as batches finish; a
process that dies breaks Python's pool, so the pool is rebuilt and every unfinished job is
submitted again (a bounded number of times).

**Threads.** ORT's float GEMM on dequantized weights splits its work by thread count, and
the split changes the rounding (measured on the demo: outputs differ at ~1e-9 relative
between 1, 2, 3 and 4 intra-op threads). So every worker runs its sessions with the thread
count a local run uses — ORT's default, one per physical core of this machine
(`measurement_threads`) — and the numbers are the same to the bit wherever they ran. By
default there are as many workers as that leaves room for (``cores // threads``, at least 1).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from qviz.core.compute.backend import ComputeBackend, ShouldStop, WorkerPool
from qviz.core.compute.jobs import (
    Job,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    WorkContext,
    job_steps,
)
from qviz.core.errors import QvizError
from qviz.core.runtime.sessions import Threads, set_process_threads

__all__ = ["MAX_REBUILDS", "ProcessBackend", "available_cores", "measurement_threads"]

#: Times a pool whose worker died is rebuilt before the run gives up.
MAX_REBUILDS = 3
#: A worker reports progress at most this often (seconds).
PROGRESS_EVERY_S = 0.2


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def measurement_threads() -> int:
    """The intra-op threads ORT gives a session by default here: one per physical core
    (cores sharing their siblings list count once)."""
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        try:
            cores.add((cpu / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            continue
    return len(cores) if cores else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- worker side

_context: WorkContext | None = None
_progress: Any = None
_stop: Any = None


def _init_worker(payload: bytes, progress: Any, stop: Any, threads: Threads) -> None:
    global _context, _progress, _stop
    set_process_threads(threads)
    _context = pickle.loads(payload)
    _progress, _stop = progress, stop
    # Progress is disposable: a worker exiting must not wait to flush it into a pipe the
    # driver no longer reads (a closed or abandoned pool), or the worker, and the driver
    # joining it at exit, wait forever (seen once at the end of the test run).
    progress.cancel_join_thread()


def _run(ticket: int, job: Job) -> Any:
    assert _context is not None, "worker not initialised"
    gen = job_steps(_context, job, _stop.is_set)
    last = 0.0
    while True:
        try:
            done = next(gen)
        except StopIteration as stop:
            return stop.value
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            _progress.put((ticket, done))
            last = now


def worker_pid() -> int:
    return os.getpid()


# --------------------------------------------------------------------------- driver side


class _ProcessPool(WorkerPool):
    def __init__(self, context: WorkContext, workers: int) -> None:
        self.context = context
        self.workers = workers
        self._mp = mp.get_context("spawn")
        self._progress = self._mp.Queue()
        self._stop = self._mp.Event()
        self._payload = pickle.dumps(context, protocol=pickle.HIGHEST_PROTOCOL)
        self._threads = Threads(intra_op=measurement_threads())
        self._jobs: dict[int, Job] = {}
        self._futures: dict[int, Future[Any]] = {}
        self._finished: set[int] = set()
        self._events: queue.Queue[tuple[int, int, Future[Any]]] = queue.Queue()
        self._generation = 0
        self._rebuilds = 0
        self._executor = self._new_executor()
        self._start_workers()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._mp,
            initializer=_init_worker,
            initargs=(self._payload, self._progress, self._stop, self._threads),
        )

    def _start_workers(self) -> None:
        """Start every worker now (each loads the context), so a context that cannot load
        fails here, and a run's first jobs do not pay for the start-up."""
        started = [self._executor.submit(worker_pid) for _ in range(self.workers)]
        try:
            for future in started:
                future.result()
        except BrokenProcessPool:
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise QvizError(
                "the worker processes could not start or load the model and data"
            ) from None

    def _start(self, ticket: int) -> None:
        generation = self._generation
        future = self._executor.submit(_run, ticket, self._jobs[ticket])
        self._futures[ticket] = future
        future.add_done_callback(lambda f: self._events.put((ticket, generation, f)))

    def submit(self, job: Job) -> int:
        ticket = len(self._jobs)
        self._jobs[ticket] = job
        self._start(ticket)
        return ticket

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (diagnostics and the lost-worker test)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return list(processes)

    def _rebuild(self) -> None:
        """A worker died: Python's pool is broken for good; start a new one and submit every
        unfinished job again."""
        self._rebuilds += 1
        if self._rebuilds > MAX_REBUILDS:
            raise QvizError(
                f"worker processes kept dying ({MAX_REBUILDS} times); out of memory?"
            )
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._generation += 1
        # A worker killed in the middle of a progress message leaves that queue's write lock
        # held for good: the new workers report through a queue of their own.
        self._progress = self._mp.Queue()
        self._executor = self._new_executor()
        for ticket in sorted(self._jobs):
            if ticket not in self._finished:
                self._start(ticket)

    def next_event(self, timeout: float | None = None) -> JobEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                ticket, generation, future = self._events.get_nowait()
            except queue.Empty:
                pass
            else:
                event = self._finish(ticket, generation, future)
                if event is not None:
                    return event
                continue
            try:
                ticket, done = self._progress.get(timeout=0.02)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if ticket not in self._finished:
                return JobProgress(ticket, done, self._jobs[ticket].label)

    def _finish(self, ticket: int, generation: int, future: Future[Any]) -> JobEvent | None:
        if generation != self._generation or ticket in self._finished or future.cancelled():
            return None  # a job of a pool that was rebuilt since; it runs again
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            try:
                self._rebuild()
            except QvizError as exc:
                return JobFailed(ticket, exc)
            return JobProgress(ticket, 0, self._jobs[ticket].label)
        self._finished.add(ticket)
        if error is not None:
            return JobFailed(ticket, error)
        return JobDone(ticket, future.result())

    def cancel(self) -> None:
        self._stop.set()
        for future in self._futures.values():
            future.cancel()

    def close(self) -> None:
        self.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)


class ProcessBackend(ComputeBackend):
    """`workers` processes on this machine (default: as many as its cores hold at
    `measurement_threads` each)."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise QvizError(f"a process pool needs at least 1 worker, got {workers}")
        self.workers = workers or max(1, available_cores() // measurement_threads())
        self._pool: _ProcessPool | None = None
        self.description = f"{self.workers} local processes"

    def open(
        self, context: WorkContext, should_stop: ShouldStop, *, max_workers: int | None = None
    ) -> WorkerPool:
        n = self.workers if max_workers is None else max(1, min(self.workers, max_workers))
        self._pool = _ProcessPool(context, n)
        return self._pool

    def worker_pids(self) -> list[int]:
        """Process ids of the last pool's workers (diagnostics; the lost-worker test)."""
        return self._pool.worker_pids() if self._pool is not None else []
