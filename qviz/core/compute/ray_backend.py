"""Ray: a pool of actors, on this machine (``--ray local``) or a running cluster
(``--ray HOST:PORT``), each holding the model and its data once.

The context is put in Ray's object store once and every actor loads it when it starts; jobs
are then sent one per idle actor (the driver keeps the queue, so a lost actor's job simply
goes back to it) and run as streaming generators, so progress arrives batch by batch. An
actor that dies (its node lost, its process killed) has its job retried on another one, up to
`MAX_ATTEMPTS` times per job. Before any job, every actor says which qviz it runs: another
version is refused, since its numbers could differ.

Ray is an optional extra (``pip install 'qviz[ray]'``): it is imported only here, and only
when a Ray backend is used. Every failure to get a cluster is one line: Ray not installed,
an address that does not answer, a cluster whose workers cannot import qviz.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import deque
from typing import Any

from qviz.core.compute.backend import ComputeBackend, ShouldStop, WorkerPool
from qviz.core.compute.identity import identity
from qviz.core.compute.jobs import (
    Job,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    WorkContext,
)
from qviz.core.compute.process_pool import available_cores, measurement_threads
from qviz.core.compute.ray_worker import WorkerActor
from qviz.core.errors import QvizError, first_line
from qviz.core.runtime.sessions import Threads

__all__ = [
    "LOCAL",
    "MAX_ATTEMPTS",
    "RayBackend",
    "check_reachable",
    "check_worker_version",
    "import_ray",
]

LOCAL = "local"
#: Times one job is started before the run gives up on it (its workers keep dying).
MAX_ATTEMPTS = 3
#: Seconds the actors get to start and load the context.
START_TIMEOUT_S = 300.0
#: Seconds an address gets to answer before it is called unreachable.
CONNECT_TIMEOUT_S = 3.0
_ADDRESS = re.compile(r"^(?:ray://)?(\[[^\]]+\]|[^:/\s]+):(\d+)$")
INSTALL_HINT = "pip install 'qviz[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise QvizError(f"Ray is not installed here: {INSTALL_HINT}") from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line, an address that is malformed or does not accept a connection
    (``ray.init`` would otherwise retry for a long time)."""
    m = _ADDRESS.match(address.strip())
    if m is None:
        raise QvizError(
            f"a Ray cluster address is HOST:PORT or ray://HOST:PORT (or 'local'), not {address!r}"
        )
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise QvizError(f"cannot reach a Ray cluster at {address}: {why}") from None


def check_worker_version(
    theirs: tuple[str, str], host: str, ours: tuple[str, str] | None = None
) -> None:
    """A worker running another qviz could compute other numbers: refuse it. Versions are
    (version, code fingerprint): two builds of one version differ by the second."""
    ours = ours or identity()
    if theirs[0] != ours[0]:
        raise QvizError(
            f"the Ray worker on {host} runs qviz {theirs[0]}, this is qviz {ours[0]}: install "
            "the same qviz on every node"
        )
    if theirs[1] != ours[1]:
        raise QvizError(
            f"the Ray worker on {host} runs another build of qviz {ours[0]} (its code differs "
            "from this one's): install the same qviz on every node"
        )


def _actor_error(ray: Any, exc: BaseException, where: str) -> QvizError:
    """One line for an actor that could not start."""
    text = str(exc)
    if "No module named 'qviz'" in text or 'No module named "qviz"' in text:
        return QvizError(f"the Ray workers at {where} cannot import qviz: {INSTALL_HINT} on "
                         "every node")
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return QvizError(
            f"the Ray workers at {where} did not start within {START_TIMEOUT_S:.0f} s "
            "(not enough free CPUs?)"
        )
    cause = getattr(exc, "cause", None)
    return QvizError(f"a Ray worker at {where} failed to start: {first_line(cause or exc)}")


class _RayPool(WorkerPool):
    def __init__(
        self, ray: Any, context: WorkContext, workers: int, cpus: int, where: str
    ) -> None:
        self.context = context
        self.workers = workers
        self._ray = ray
        self._where = where
        remote = ray.remote(WorkerActor).options(num_cpus=cpus, max_concurrency=2)
        ref = ray.put(context)
        # The driver's thread count, whatever the actor reserved: see process_pool.
        threads = Threads(intra_op=measurement_threads())
        self._actors = [remote.remote(ref, threads) for _ in range(workers)]
        try:
            hellos = ray.get([a.hello.remote() for a in self._actors], timeout=START_TIMEOUT_S)
        except Exception as exc:  # Ray raises its own types; all mean "could not start"
            self.close()
            raise _actor_error(ray, exc, where) from None
        try:
            for version, _pid, host in hellos:
                check_worker_version(version, host)
        except QvizError:
            self.close()
            raise
        self.pids = [pid for _, pid, _ in hellos]
        self._idle: deque[Any] = deque(self._actors)
        self._queue: deque[int] = deque()
        self._jobs: dict[int, Job] = {}
        self._attempts: dict[int, int] = {}
        self._running: dict[Any, tuple[int, Any]] = {}  # generator -> (ticket, actor)
        self._pending: deque[JobEvent] = deque()

    def submit(self, job: Job) -> int:
        ticket = len(self._jobs)
        self._jobs[ticket] = job
        self._queue.append(ticket)
        self._dispatch()
        return ticket

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            ticket = self._queue.popleft()
            actor = self._idle.popleft()
            self._attempts[ticket] = self._attempts.get(ticket, 0) + 1
            gen = actor.run.options(num_returns="streaming").remote(self._jobs[ticket])
            self._running[gen] = (ticket, actor)

    def next_event(self, timeout: float | None = None) -> JobEvent | None:
        if self._pending:
            return self._pending.popleft()
        if not self._running:
            return None
        ray = self._ray
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            return None
        gen = ready[0]
        ticket, actor = self._running[gen]
        label = self._jobs[ticket].label
        try:
            kind, value = ray.get(next(gen))
        except ray.exceptions.RayActorError:
            return self._lost(gen, ticket, actor)
        except ray.exceptions.RayTaskError as exc:
            del self._running[gen]
            self._idle.append(actor)
            self._dispatch()
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            return JobFailed(ticket, cause)
        except StopIteration:  # cannot happen before "done"; treat as a lost worker
            return self._lost(gen, ticket, actor)
        if kind == "progress":
            return JobProgress(ticket, int(value), label)
        del self._running[gen]
        self._idle.append(actor)
        self._dispatch()
        return JobDone(ticket, value)

    def _lost(self, gen: Any, ticket: int, actor: Any) -> JobEvent:
        """The actor died: its job goes back to the queue for another one."""
        del self._running[gen]
        self._actors = [a for a in self._actors if a is not actor]
        if not self._actors:
            return JobFailed(ticket, QvizError(f"every Ray worker at {self._where} was lost"))
        if self._attempts[ticket] >= MAX_ATTEMPTS:
            return JobFailed(
                ticket,
                QvizError(f"a job was lost with its Ray worker {MAX_ATTEMPTS} times; giving up"),
            )
        self.workers = len(self._actors)
        self._queue.appendleft(ticket)
        self._dispatch()
        return JobProgress(ticket, 0, self._jobs[ticket].label)

    def cancel(self) -> None:
        self._queue.clear()
        for _ticket, actor in self._running.values():
            actor.halt.remote()

    def close(self) -> None:
        for actor in getattr(self, "_actors", ()):
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        self._running = {}


class RayBackend(ComputeBackend):
    """Ray actors: ``address`` None or ``"local"`` starts Ray on this machine; ``HOST:PORT``
    (or ``ray://HOST:PORT``) joins a running cluster. ``workers`` actors reserving
    ``cpus_per_worker`` CPUs each (default: the thread count every actor runs ORT with, so
    nothing is oversubscribed; ``workers`` defaults to as many as the cluster's CPUs allow)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cpus_per_worker: int | None = None,
    ) -> None:
        self.address = None if address in (None, "", LOCAL) else address
        if workers is not None and workers < 1:
            raise QvizError(f"Ray needs at least 1 worker, got {workers}")
        if cpus_per_worker is not None and cpus_per_worker < 1:
            raise QvizError(f"each Ray worker needs at least 1 CPU, got {cpus_per_worker}")
        self.workers = workers
        self.cpus = cpus_per_worker or measurement_threads()
        self._started = False
        self._pool: _RayPool | None = None
        self.where = self.address or "this machine"
        self.description = f"Ray ({self.where})"

    @property
    def connected(self) -> bool:
        return self._started

    def connect(self) -> Any:
        """Ray, initialised: started here, joined, or the one this process already runs."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        if self.address is not None:
            check_reachable(self.address)
        try:
            if self.address is None:
                ray.init(num_cpus=available_cores(), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(address=self.address, log_to_driver=False,
                         logging_level=logging.ERROR)
        except Exception as exc:  # Ray raises many types; each means "no cluster"
            raise QvizError(f"cannot start Ray on {self.where}: {first_line(exc)}") from None
        self._started = True
        return ray

    def open(
        self, context: WorkContext, should_stop: ShouldStop, *, max_workers: int | None = None
    ) -> WorkerPool:
        ray = self.connect()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = self.workers or max(1, cpus // self.cpus)
        cpus_each = self.cpus if self.workers is None else max(1, min(self.cpus, cpus // n))
        if max_workers is not None:
            n = max(1, min(n, max_workers))
        self.description = f"Ray ({self.where}, {n} workers)"
        self._pool = _RayPool(ray, context, n, cpus_each, self.where)
        return self._pool

    def worker_pids(self) -> list[int]:
        """Process ids of the last pool's actors (diagnostics; the lost-worker test)."""
        return list(self._pool.pids) if self._pool is not None else []

    def shutdown(self) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False
