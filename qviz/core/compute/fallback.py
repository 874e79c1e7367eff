"""The app's compute backend: chosen once, connected on first use, local when it cannot be.

An app must keep working when its cluster is away: `BackendHolder.get` connects the chosen
backend the first time a job needs it (on the job's worker thread: starting or joining Ray
takes seconds) and, when that fails, hands back the local backend with a one-line message
saying why. The connection is kept for the next jobs until the choice changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TypeVar

from qviz.core.compute.backend import ComputeBackend, LocalBackend
from qviz.core.compute.choice import BackendChoice, BackendKind
from qviz.core.errors import QvizError
from qviz.core.progress import Progress

__all__ = ["BackendHolder", "run_with"]

T = TypeVar("T")


class BackendHolder:
    """The chosen backend, connected lazily and shared by the app's jobs (thread-safe)."""

    def __init__(
        self,
        choice: BackendChoice | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._choice = choice or BackendChoice()
        self._backend: ComputeBackend | None = None
        self._lock = threading.Lock()
        self.on_fallback = on_fallback

    @property
    def choice(self) -> BackendChoice:
        return self._choice

    def set_choice(self, choice: BackendChoice) -> None:
        """Use `choice` from the next job on (a connected backend is released)."""
        with self._lock:
            old, self._backend, self._choice = self._backend, None, choice
        if old is not None:
            old.shutdown()

    def get(self) -> tuple[ComputeBackend, str | None]:
        """The backend to run on, and the message to show when it is not the chosen one."""
        with self._lock:
            if self._backend is not None:
                return self._backend, None
            if self._choice.kind is BackendKind.LOCAL:
                self._backend = LocalBackend()
                return self._backend, None
            try:
                backend = self._choice.create()
                connect = getattr(backend, "connect", None)
                if connect is not None:
                    connect()
            except QvizError as exc:
                note = f"{self._choice.label} is not available ({exc}); running locally"
                if self.on_fallback is not None:
                    self.on_fallback(note)
                return LocalBackend(), note
            self._backend = backend
            return backend, None

    def shutdown(self) -> None:
        with self._lock:
            old, self._backend = self._backend, None
        if old is not None:
            old.shutdown()


def run_with(
    holder: BackendHolder | None,
    make: Callable[[ComputeBackend | None], Generator[Progress, None, T]],
) -> Generator[Progress, None, T]:
    """Run the job `make(backend)` on the holder's backend, resolved when the job starts
    (so on its worker thread); a fallback's message is the first progress it yields."""
    if holder is None:
        return (yield from make(None))
    backend, note = holder.get()
    if note is not None:
        yield Progress(0, 0, 0.0, None, note)
    return (yield from make(backend))
