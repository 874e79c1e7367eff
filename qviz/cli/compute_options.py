"""`--ray local|ADDRESS` and `--workers N`: where `evaluate`, `sensitivity` and `mixed` run
their models. Without them everything runs here, one configuration at a time."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from qviz.core.compute.backend import ComputeBackend
from qviz.core.compute.choice import BackendChoice, BackendKind
from qviz.core.errors import QvizError


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("compute")
    g.add_argument(
        "--ray",
        metavar="local|ADDRESS",
        help="run the measurements on Ray actors (pip install 'qviz[ray]'): 'local' starts Ray "
        "on this machine, HOST:PORT or ray://HOST:PORT joins a running cluster",
    )
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes on this machine (without --ray), or Ray actors (with it)",
    )


def choice_from_args(args: argparse.Namespace) -> BackendChoice:
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise QvizError(f"--workers must be at least 1, got {workers}")
    ray = getattr(args, "ray", None)
    if ray is not None:
        address = ray.strip()
        if not address:
            raise QvizError("--ray needs 'local' or a cluster address HOST:PORT")
        return BackendChoice(BackendKind.RAY, workers, None if address == "local" else address)
    if workers is not None:
        return BackendChoice(BackendKind.PROCESSES, workers)
    return BackendChoice()


@contextmanager
def compute_from_args(args: argparse.Namespace) -> Iterator[ComputeBackend | None]:
    """The backend the options ask for (None: here, as always), released at the end."""
    choice = choice_from_args(args)
    if choice.kind is BackendKind.LOCAL:
        yield None
        return
    backend = choice.create()
    from qviz.core.compute.ray_backend import RayBackend

    if isinstance(backend, RayBackend):
        backend.connect()  # a bad address or a missing Ray fails before any work
    try:
        yield backend
    finally:
        backend.shutdown()
