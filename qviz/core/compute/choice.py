"""Which backend the user chose, as a frozen value a setting or a command line can hold."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from qviz.core.compute.backend import ComputeBackend, LocalBackend
from qviz.core.errors import QvizError

__all__ = ["BackendChoice", "BackendKind"]


class BackendKind(Enum):
    LOCAL = "local"  # one job at a time in this process (every core for each)
    PROCESSES = "processes"  # a pool of processes on this machine
    RAY = "ray"  # Ray actors, on this machine or a cluster


@dataclass(frozen=True)
class BackendChoice:
    """``kind``; ``workers`` (None: one per core / per cluster CPU); ``address`` for Ray
    (None: start Ray on this machine)."""

    kind: BackendKind = BackendKind.LOCAL
    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise QvizError(f"workers must be at least 1, got {self.workers}")
        if self.address is not None and self.kind is not BackendKind.RAY:
            raise QvizError("only a Ray backend takes a cluster address")

    def create(self) -> ComputeBackend:
        if self.kind is BackendKind.LOCAL:
            return LocalBackend()
        if self.kind is BackendKind.PROCESSES:
            from qviz.core.compute.process_pool import ProcessBackend

            return ProcessBackend(self.workers)
        from qviz.core.compute.ray_backend import RayBackend

        return RayBackend(self.address, workers=self.workers)

    @property
    def label(self) -> str:
        n = "" if self.workers is None else f", {self.workers} workers"
        if self.kind is BackendKind.LOCAL:
            return "local"
        if self.kind is BackendKind.PROCESSES:
            return f"local processes{n}"
        return f"Ray at {self.address or 'this machine'}{n}"

    def to_text(self) -> str:
        """``local``, ``processes[/N]``, ``ray:local[/N]`` or ``ray:ADDRESS[/N]``, as `parse`
        reads it (kept in the app's settings)."""
        n = "" if self.workers is None else f"/{self.workers}"
        if self.kind is BackendKind.RAY:
            return f"ray:{self.address or 'local'}{n}"
        return f"{self.kind.value}{n}"

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        head, _, count = text.strip().rpartition("/")
        if not count.isdigit():  # no worker count (the "/" of ray://HOST:PORT is not one)
            head, count = text.strip(), ""
        workers = int(count) if count else None
        if head in ("", "local"):
            return cls(BackendKind.LOCAL, workers)
        if head == "processes":
            return cls(BackendKind.PROCESSES, workers)
        if head.startswith("ray:"):
            address = head[4:].strip()
            return cls(BackendKind.RAY, workers, None if address in ("", "local") else address)
        raise QvizError(f"not a compute backend: {text!r}")
