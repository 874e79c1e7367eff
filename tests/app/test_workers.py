"""BackgroundRunner: results on the GUI thread, cancellation within one step, no leaked threads.

Jobs here are gated by threading.Events the test controls, so ordering is deterministic
without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.controllers.workers import BackgroundRunner, ShouldStop, call_as_job
from qviz.core.errors import QvizError
from qviz.core.stats.collect import CollectionCancelled

WAIT_MS = 10_000


@pytest.fixture
def runner(qtbot: QtBot) -> Iterator[BackgroundRunner]:
    r = BackgroundRunner("test")
    yield r
    assert r.shutdown(5.0)
    assert r.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(5000)


def counting(n: int, result: Any = "done") -> Any:
    def make(should_stop: ShouldStop) -> Generator[int, None, Any]:
        def gen() -> Generator[int, None, Any]:
            yield from range(n)
            return result

        return gen()

    return make


def gated(gate: threading.Event, steps: list[int], result: Any = "gated") -> Any:
    """Yields 0, 1, 2, ... waiting for `gate` after each yield (bounded, never forever)."""

    def make(should_stop: ShouldStop) -> Generator[int, None, Any]:
        def gen() -> Generator[int, None, Any]:
            for i in range(1000):
                steps.append(i)
                yield i
                gate.wait(5.0)
            return result

        return gen()

    return make


def test_yields_then_returns_on_the_gui_thread(qtbot: QtBot, runner: BackgroundRunner) -> None:
    seen: list[object] = []
    main = threading.get_ident()
    threads: set[bool] = set()

    def on_progress(item: object) -> None:
        seen.append(item)
        threads.add(threading.get_ident() == main)

    returned: list[object] = []
    runner.progressed.connect(on_progress)
    runner.succeeded.connect(returned.append)
    with qtbot.waitSignals([runner.succeeded, runner.finished], timeout=WAIT_MS):
        runner.start(counting(5), "count")
    assert returned == ["done"]
    assert seen == [0, 1, 2, 3, 4]
    assert threads == {True}
    assert not runner.is_busy


def test_errors_are_reported_not_raised(qtbot: QtBot, runner: BackgroundRunner) -> None:
    def boom() -> None:
        raise QvizError("bad file")

    with qtbot.waitSignal(runner.failed, timeout=WAIT_MS) as blocker:
        runner.start(call_as_job(boom), "boom")
    assert isinstance(blocker.args[0], QvizError)
    # The runner is usable again at once.
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS) as blocker:
        runner.start(call_as_job(lambda: 42), "again")
    assert blocker.args == [42]


def test_runtime_errors_do_not_leave_the_run_hanging(
    qtbot: QtBot, runner: BackgroundRunner
) -> None:
    # superqt swallows RuntimeError from a generator (it takes it for a deleted worker);
    # the runner must still report it and finish.
    def boom() -> None:
        raise RuntimeError("numpy said no")

    failures: list[BaseException] = []
    runner.failed.connect(failures.append)
    with qtbot.waitSignals([runner.failed, runner.finished], timeout=WAIT_MS):
        runner.start(call_as_job(boom), "boom")
    [exc] = failures
    assert isinstance(exc, RuntimeError) and "numpy said no" in str(exc)
    assert not runner.is_busy


def test_cancel_stops_within_one_step(qtbot: QtBot, runner: BackgroundRunner) -> None:
    gate = threading.Event()
    steps: list[int] = []
    returned: list[object] = []
    runner.succeeded.connect(returned.append)
    with qtbot.waitSignal(runner.progressed, timeout=WAIT_MS):
        runner.start(gated(gate, steps), "gated")
    with qtbot.waitSignals([runner.cancelled, runner.finished], timeout=WAIT_MS):
        assert runner.cancel()
        gate.set()
    assert len(steps) <= 2  # the step in flight may finish; no more start
    assert returned == []
    assert not runner.is_busy
    assert not runner.cancel()  # nothing left to cancel


def test_core_cancellation_counts_as_cancelled(qtbot: QtBot, runner: BackgroundRunner) -> None:
    def stop() -> None:
        raise CollectionCancelled()

    with qtbot.waitSignal(runner.cancelled, timeout=WAIT_MS):
        runner.start(call_as_job(stop), "stop")


def test_superseded_results_are_dropped(qtbot: QtBot, runner: BackgroundRunner) -> None:
    gate = threading.Event()
    steps: list[int] = []
    returned: list[object] = []
    progressed: list[object] = []
    runner.succeeded.connect(returned.append)
    with qtbot.waitSignal(runner.progressed, timeout=WAIT_MS):
        first = runner.start(gated(gate, steps, "old"), "old")
    runner.progressed.connect(progressed.append)
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        second = runner.start(counting(0, "new"), "new")
    assert second == first + 1
    gate.set()  # let the old run reach its stop check and end
    qtbot.waitUntil(lambda: runner.live_threads() == 0, timeout=WAIT_MS)
    assert returned == ["new"]
    assert progressed == []  # nothing from the old run after it was superseded


def test_shutdown_waits_for_every_thread(qtbot: QtBot) -> None:
    runner = BackgroundRunner("shutdown")
    reported: list[object] = []
    runner.succeeded.connect(reported.append)
    runner.cancelled.connect(lambda: reported.append("cancelled"))

    def make(should_stop: ShouldStop) -> Generator[int, None, str]:
        def gen() -> Generator[int, None, str]:
            while True:  # a job that only ends when asked to
                yield 0

        return gen()

    with qtbot.waitSignal(runner.progressed, timeout=WAIT_MS):
        runner.start(make, "forever")
    assert runner.shutdown(5.0)
    assert runner.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(5000)
    QCoreApplication.processEvents()  # deliver anything still queued: all of it is dropped
    assert reported == []


def test_shutdown_right_after_a_run_ended_unseen(qtbot: QtBot) -> None:
    # The run has ended and the pool has deleted its runnable, but its `finished` has not
    # been delivered yet (no event processed since): shutdown must not touch the deleted
    # runnable (that raised, and inside closeEvent crashed PySide).
    runner = BackgroundRunner("unseen")
    runner.start(counting(3), "quick")
    assert QThreadPool.globalInstance().waitForDone(5000)  # ran and deleted; nothing delivered
    assert runner.shutdown(5.0)
    assert runner.live_threads() == 0
