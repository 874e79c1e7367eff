"""Progress reports yielded by every long-running core generator."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """How far a long job has come. `remaining_s` is None until there is a rate to go by."""

    done: int
    total: int
    elapsed_s: float
    remaining_s: float | None
    message: str = ""
    unit: str = "samples"  # what `done` and `total` count, as the status bar names it

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def describe(self) -> str:
        eta = "" if self.remaining_s is None else f", {format_seconds(self.remaining_s)} left"
        head = f"{self.message}: " if self.message else ""
        return f"{head}{self.done}/{self.total} ({format_seconds(self.elapsed_s)} elapsed{eta})"


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressClock:
    """Turns counts into Progress objects with an estimate of the time left."""

    def __init__(self, total: int, message: str = "", unit: str = "samples") -> None:
        self.total = total
        self.message = message
        self.unit = unit
        self._start = time.perf_counter()

    def report(self, done: int, message: str | None = None) -> Progress:
        elapsed = time.perf_counter() - self._start
        remaining = elapsed / done * (self.total - done) if done > 0 else None
        return Progress(
            done, self.total, elapsed, remaining, message or self.message, self.unit
        )


def run_to_completion(gen: Generator[Any, None, T]) -> T:
    """Drive a core generator without progress reporting (CLI, tests, scripts)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
