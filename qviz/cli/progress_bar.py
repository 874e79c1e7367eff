"""A one-line progress bar on stderr for long CLI commands."""

from __future__ import annotations

from typing import TextIO

from qviz.core.progress import Progress, format_seconds


class ProgressBar:
    def __init__(self, stream: TextIO, *, enabled: bool = True, width: int = 30) -> None:
        self.stream = stream
        # A bar redrawn with \r is noise in a log file; print it only to a terminal.
        self.enabled = enabled and stream.isatty()
        self.width = width

    def update(self, p: Progress) -> None:
        if not self.enabled:
            return
        filled = int(self.width * p.fraction)
        eta = "" if p.remaining_s is None else f" ~{format_seconds(p.remaining_s)} left"
        self.stream.write(
            f"\r{p.message} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{p.done}/{p.total} {format_seconds(p.elapsed_s)}{eta}   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
