"""One data set split in two: samples to calibrate on, and samples held out to evaluate on.

A criterion met on the samples the ranges were fitted to is not evidence; with only one data
set, qviz keeps a deterministic part of it apart for every end-to-end measurement. The part is
every ``every``-th sample (the last of each run of ``every``), not the tail: data sets sorted
by class (image folders, one per class) still give every class to both parts. Each part is a
`Dataset` of its own that reads only its samples' rows, so nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from qviz.core.data.batching import Chunk, Dataset
from qviz.core.errors import QvizError

#: One sample in five for evaluation, four for calibration.
DEFAULT_EVERY = 5


class Part(Enum):
    CALIBRATION = "calibration"
    EVALUATION = "evaluation"


@dataclass(frozen=True)
class Holdout:
    """Every ``every``-th sample is held out for evaluation."""

    every: int = DEFAULT_EVERY

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 2:
            raise QvizError(f"hold out one sample in N with N >= 2, not {self.every!r}")

    @property
    def fraction(self) -> float:
        return 1.0 / self.every

    @property
    def label(self) -> str:
        return f"1 sample in {self.every} held out"

    def mask(self, n: int, part: Part) -> np.ndarray:
        """Which of samples 0..n-1 belong to `part`."""
        held = np.arange(n) % self.every == self.every - 1
        return held if part is Part.EVALUATION else ~held


class _Rows(Chunk):
    """The rows of a chunk that belong to one part, read as a chunk of their own."""

    def __init__(self, chunk: Chunk, rows: np.ndarray) -> None:
        super().__init__(int(rows.size), chunk.arrays, chunk.origin)
        self._chunk = chunk
        self._rows = rows

    @property
    def shapes_known(self) -> bool:
        return self._chunk.shapes_known

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        rows = self._rows[start:stop]
        if rows.size == 0:
            return self._chunk.read(name, 0, 0)
        # One contiguous read covering the rows, then the rows themselves (a sample in five
        # is skipped: reading it costs less than a seek per row).
        first = int(rows[0])
        block = self._chunk.read(name, first, int(rows[-1]) + 1)
        return block[rows - first]


def split(data: Dataset, holdout: Holdout, part: Part) -> Dataset:
    """The samples of `data` that belong to `part` (a new Dataset; `data` is unchanged)."""
    if data.states:
        raise QvizError(
            "a data set whose outputs are fed back (--state) is one sequence and cannot be "
            "split: give evaluation data of its own"
        )
    n = len(data)
    if n < holdout.every:
        raise QvizError(
            f"{n} samples are too few to hold 1 in {holdout.every} out: give "
            "evaluation data of its own, or evaluate on the calibration data"
        )
    mask = holdout.mask(n, part)
    chunks: list[Chunk] = []
    offset = 0
    for chunk in data.chunks:
        rows = np.flatnonzero(mask[offset:offset + chunk.n])
        offset += chunk.n
        if rows.size:
            # A chunk taken whole (an image, a one-sample file) needs no row selection.
            chunks.append(chunk if rows.size == chunk.n else _Rows(chunk, rows))
    labels = None if data.labels is None else np.asarray(data.labels)[mask]
    taken = int(mask.sum())
    what = "held out for evaluation" if part is Part.EVALUATION else "for calibration"
    return data.with_samples(
        chunks, labels, f"{data.description} — {taken} of {n} samples {what} ({holdout.label})"
    )

