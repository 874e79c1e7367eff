"""Background work: core generators run on pool threads, results come back on the GUI thread.

The core knows nothing about threads: its long jobs are generators that yield `Progress` and
check a `should_stop()` callable between batches. `BackgroundRunner` turns such a generator
into a superqt `GeneratorWorker` and re-emits what it yields, returns or raises as its own
signals, on the GUI thread, tagged with nothing: results of a run that was superseded by a
newer `start()` (or cancelled) are dropped here, by a generation counter, so no caller ever
has to ask "is this answer still wanted?".

Cancellation is cooperative: `cancel()` sets a flag that the core checks between batches
and that the driver checks between yields, so a run stops within one batch. The worker
thread is never killed; `shutdown()` asks every run to stop and waits (bounded) until each
has left its thread, so closing a window cannot leave a thread touching freed objects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import shiboken6
from PySide6.QtCore import QObject, QThreadPool, Signal
from superqt.utils import GeneratorWorker

from qviz.core.evaluation.evaluate import EvaluationCancelled
from qviz.core.stats.collect import CollectionCancelled

T = TypeVar("T")
ShouldStop = Callable[[], bool]
# A job: given the stop flag's reader, make the generator to run (not yet started).
JobFactory = Callable[[ShouldStop], Generator[Any, None, T]]


class RunCancelled(Exception):
    """Raised inside the driver when the run was asked to stop between two yields."""


class _Wrapped(Exception):
    """Carries a RuntimeError out of a job.

    superqt treats a RuntimeError from the generator as "the worker was deleted" and returns
    without emitting `errored` or `finished`, which would leave the run busy forever; numpy
    and onnxruntime raise RuntimeError for ordinary failures, so those travel wrapped.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def _drive(make: JobFactory, stop: threading.Event) -> Generator[Any, None, Any]:
    """Run the job's generator, stopping between yields once `stop` is set.

    Ending the generator ourselves (instead of `GeneratorWorker.quit()`, which abandons it
    mid-iteration) means the job's `finally` blocks run on its own thread, now.
    """
    gen = make(stop.is_set)
    try:
        while True:
            if stop.is_set():
                raise RunCancelled()
            try:
                item = next(gen)
            except StopIteration as done:
                return done.value
            except RuntimeError as exc:
                raise _Wrapped(exc) from exc
            yield item
    finally:
        gen.close()


class _Worker(GeneratorWorker):
    """A GeneratorWorker that says when it has completely left its thread."""

    def __init__(self, make: JobFactory, stop: threading.Event) -> None:
        super().__init__(_drive, make, stop)
        self.began = threading.Event()
        self.left_thread = threading.Event()

    def run(self) -> None:  # called by QThreadPool on the pool thread
        self.began.set()
        try:
            super().run()
        finally:
            # After this line the runnable touches nothing: the signal objects may go.
            self.left_thread.set()


@dataclass
class _Run:
    generation: int
    label: str
    worker: _Worker
    stop: threading.Event
    done: Callable[[Any], None] | None = None
    started_at: float = field(default_factory=time.perf_counter)


def _try_take(pool: QThreadPool, worker: _Worker) -> bool:
    try:
        return shiboken6.isValid(worker) and pool.tryTake(worker)
    except RuntimeError:  # it began, ran and was deleted between the check and the call
        return False


def is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, RunCancelled | CollectionCancelled | EvaluationCancelled)


def call_as_job(fn: Callable[[], T]) -> JobFactory[T]:
    """A one-shot function (load a model, read a file) as a job with no progress to report."""

    def make(should_stop: ShouldStop) -> Generator[Any, None, T]:
        return _one_shot(fn)

    return make


def _one_shot(fn: Callable[[], T]) -> Generator[Any, None, T]:
    return fn()
    yield  # makes this a generator function; never reached


class BackgroundRunner(QObject):
    """Runs one job at a time; starting a new one supersedes (and stops) the previous one.

    Signals are emitted on the GUI thread and only for the current run:
    `progressed(item)` per yield, then exactly one of `succeeded(value)`, `failed(exc)` or
    `cancelled()`, then `finished()`. `busyChanged(bool)` follows `is_busy`. A run may also
    name a typed `done` callback for its own value (called before `succeeded`), so a caller
    never has to check what a generic signal carried.
    """

    progressed = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    finished = Signal()
    busyChanged = Signal(bool)

    def __init__(
        self, name: str, parent: QObject | None = None, pool: QThreadPool | None = None
    ) -> None:
        """`pool`: the threads runs take (default: Qt's global pool, shared by every runner;
        a runner that must not queue behind long jobs brings its own)."""
        super().__init__(parent)
        self.setObjectName(name)
        self._pool = pool if pool is not None else QThreadPool.globalInstance()
        self._generation = 0
        self._current: _Run | None = None
        # Every run whose thread may still be alive, current or superseded, so `shutdown`
        # can wait for all of them; a run leaves this dict when its `finished` arrives.
        self._live: dict[int, _Run] = {}

    # ----------------------------------------------------------------- state
    @property
    def is_busy(self) -> bool:
        return self._current is not None

    @property
    def label(self) -> str:
        return "" if self._current is None else self._current.label

    @property
    def generation(self) -> int:
        return self._generation

    def live_threads(self) -> int:
        """Runs that have not yet left their thread (tests assert this reaches 0)."""
        return sum(1 for run in self._live.values() if not run.worker.left_thread.is_set())

    # ----------------------------------------------------------------- control
    def start(
        self, make: JobFactory[T], label: str = "", done: Callable[[T], None] | None = None
    ) -> int:
        """Start `make(should_stop)` on a pool thread; `done(value)` is called on the GUI
        thread with what it returns, if it is still the current run. Returns the run's
        generation."""
        was_busy = self._current is not None
        self._supersede()
        self._generation += 1
        gen = self._generation
        stop = threading.Event()
        worker = _Worker(make, stop)
        run = _Run(gen, label, worker, stop, done)
        worker.yielded.connect(partial(self._on_yielded, gen))
        worker.returned.connect(partial(self._on_returned, gen))
        worker.errored.connect(partial(self._on_errored, gen))
        worker.finished.connect(partial(self._on_finished, gen))
        self._live[gen] = run
        self._current = run
        # Straight onto the pool, not `worker.start()`: that defers the start by a timer
        # when an event loop runs, and a run not yet started could not be waited for.
        self._pool.start(worker)
        if not was_busy:
            self.busyChanged.emit(True)
        return gen

    def cancel(self) -> bool:
        """Ask the current run to stop; `cancelled` follows once it has. False if idle."""
        if self._current is None:
            return False
        self._current.stop.set()
        return True

    def discard(self) -> None:
        """Stop the current run and drop whatever it would still report (no signals)."""
        was_busy = self._current is not None
        self._supersede()
        if was_busy:
            self.busyChanged.emit(False)

    def _supersede(self) -> None:
        """Stop the current run without reporting it: a newer run replaces it."""
        if self._current is not None:
            self._current.stop.set()
            self._current = None

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop every run and wait (at most `timeout_s` in all) until each has left its thread.

        Returns False if one is still running after the timeout (a batch stuck in native
        code); its results will be dropped, and it holds only its own objects.
        """
        self._supersede()
        self._generation += 1  # nothing that arrives from now on is reported
        pool = self._pool
        deadline = time.monotonic() + timeout_s
        ok = True
        for gen, run in list(self._live.items()):
            run.stop.set()
            # Queued but not begun (pool saturated): take it back so it never begins. Only
            # then: the pool deletes a runnable's C++ object once it has run, and a call on
            # it after that raises instead of answering.
            if not run.worker.began.is_set() and _try_take(pool, run.worker):
                run.worker.left_thread.set()
            if not run.worker.left_thread.wait(max(0.0, deadline - time.monotonic())):
                ok = False
                continue
            del self._live[gen]
        return ok

    # ----------------------------------------------------------------- worker signals
    # These run on the GUI thread (queued from the pool thread) and drop anything from a
    # run that is no longer current.
    def _is_current(self, gen: int) -> bool:
        return self._current is not None and self._current.generation == gen

    def _on_yielded(self, gen: int, item: object) -> None:
        if self._is_current(gen):
            self.progressed.emit(item)

    def _on_returned(self, gen: int, value: object) -> None:
        run = self._current
        if run is not None and run.generation == gen:
            if run.done is not None:
                try:
                    run.done(value)
                except Exception as exc:  # an exception must not escape a Qt slot
                    self.failed.emit(exc)
                    return
            if self._is_current(gen):  # `done` may have started another run
                self.succeeded.emit(value)

    def _on_errored(self, gen: int, exc: BaseException) -> None:
        if not self._is_current(gen):
            return
        if isinstance(exc, _Wrapped):
            exc = exc.original
        if is_cancellation(exc):
            self.cancelled.emit()
        else:
            self.failed.emit(exc)

    def _on_finished(self, gen: int) -> None:
        self._live.pop(gen, None)
        if not self._is_current(gen):
            return
        self._current = None
        self.finished.emit()
        if self._current is None:  # a `finished` slot may have started the next run
            self.busyChanged.emit(False)
