"""The Ray actor: holds the work context once and runs the jobs sent to it.

Plain Python (no ``import ray`` here): `qviz.core.compute.ray_backend` wraps it with
``ray.remote``. A job runs as a streaming generator, so progress comes back batch by batch;
the actor takes two calls at once so that `halt` reaches a running job.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from qviz.core.compute.identity import identity
from qviz.core.compute.jobs import Job, WorkContext, job_steps
from qviz.core.runtime.sessions import Threads, set_process_threads

#: A worker streams progress at most this often (seconds).
PROGRESS_EVERY_S = 0.2


class WorkerActor:
    def __init__(self, context: WorkContext, threads: Threads) -> None:
        set_process_threads(threads)
        self.context = context
        self._stop = threading.Event()

    def hello(self) -> tuple[tuple[str, str], int, str]:
        """This worker's qviz (version, code fingerprint), process id and host (checked
        before any job)."""
        return identity(), os.getpid(), socket.gethostname()

    def run(self, job: Job) -> Iterator[tuple[str, Any]]:
        """``("progress", samples done)`` as batches finish, then ``("done", value)``."""
        gen = job_steps(self.context, job, self._stop.is_set)
        last = time.monotonic()
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                yield "done", stop.value
                return
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                yield "progress", done
                last = now

    def halt(self) -> None:
        self._stop.set()
