"""Deterministic slices of a data set, so calibration can be split across machines.

``--shard K/N`` takes the K-th of N contiguous, nearly equal slices of the samples (sample
order kept, labels aligned): shard K holds samples ``[floor((K-1) n / N), floor(K n / N))``.
The slices depend only on the number of samples, so N machines reading the same data with
``1/N`` … ``N/N`` cover every sample exactly once, and `qviz merge` puts their statistics
together.

Nothing is read here: a shard is the same lazy data set seen through an offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from qviz.core.data.arrays import LazyArray
from qviz.core.data.batching import Chunk, Dataset
from qviz.core.errors import QvizError

__all__ = ["Shard", "take_shard"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (1-based) of ``count`` contiguous slices of a data set."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise QvizError(
                f"a shard is K/N with 1 <= K <= N, not {self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"``, e.g. ``"2/4"``: the second of four slices."""
        m = _SHARD.match(text)
        if m is None:
            raise QvizError(f"--shard takes K/N (e.g. 2/4), not {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def bounds(self, n: int) -> tuple[int, int]:
        """The sample range ``[start, stop)`` of this shard in a data set of ``n`` samples."""
        return (self.index - 1) * n // self.count, self.index * n // self.count

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Shard:
        return cls(int(d["index"]), int(d["count"]))


class _Offset(LazyArray):
    """Samples ``[start, start + n)`` of another lazy array."""

    def __init__(self, inner: LazyArray, start: int, n: int) -> None:
        self.inner, self.start = inner, start
        self.shape = (n, *inner.shape[1:])
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.inner.read(self.start + start, self.start + stop)


def take_shard(data: Dataset, shard: Shard) -> Dataset:
    """The samples of `shard` as a data set (lazy; labels and class names kept aligned)."""
    n = len(data)
    if data.states:
        raise QvizError(
            "this model feeds its outputs back as inputs: its samples are one sequence, "
            "which cannot be split into shards"
        )
    start, stop = shard.bounds(n)
    if stop <= start:
        raise QvizError(
            f"shard {shard.label} of {data.description} is empty: it has only {n} samples"
        )
    chunks: list[Chunk] = []
    offset = 0
    for chunk in data._chunks:
        lo, hi = max(start, offset), min(stop, offset + chunk.n)
        if lo < hi:
            if not chunk.shapes_known:  # one image, decoded when read: wholly in or out
                chunks.append(chunk)
            else:
                arrays: dict[str, LazyArray] = {
                    k: _Offset(a, lo - offset, hi - lo) for k, a in chunk.arrays.items()
                }
                chunks.append(Chunk(hi - lo, arrays, chunk.origin))
        offset += chunk.n
    labels = None if data.labels is None else np.asarray(data.labels)[start:stop]
    return Dataset(
        inputs=data.inputs,
        chunks=chunks,
        description=f"{data.description} [shard {shard.label}: samples {start}..{stop - 1}]",
        is_random=data.is_random,
        labels=labels,
        class_names=data.class_names,
        feeds=data.feeds,
        whole=data._whole,
    )
