"""Where statistics came from when they were not one plain collect: a shard of the data, or a
merge of several statistics files — and, for a merge, which histogram ranges were rebinned.

Kept in the statistics file (schema 2) so the error a merge introduced can always be stated:
see `qviz.core.stats.merge` for the bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qviz.core.data.shard import Shard

__all__ = ["MergeSource", "Provenance", "RebinnedRange", "ShardOrigin"]


@dataclass(frozen=True)
class ShardOrigin:
    """A collect over one shard: which one, and the whole data set it is a slice of."""

    shard: Shard
    start: int
    stop: int  # samples [start, stop) of the whole data set
    total: int  # samples in the whole data set
    data_description: str  # the whole data set's description

    def to_json(self) -> dict[str, Any]:
        return {
            **self.shard.to_json(),
            "start": self.start,
            "stop": self.stop,
            "total": self.total,
            "data_description": self.data_description,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardOrigin:
        return cls(
            Shard(int(d["index"]), int(d["count"])),
            int(d["start"]),
            int(d["stop"]),
            int(d["total"]),
            str(d["data_description"]),
        )


@dataclass(frozen=True)
class MergeSource:
    """One statistics file a merge read."""

    file: str
    data_description: str
    n_samples: int
    shard: ShardOrigin | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "data_description": self.data_description,
            "n_samples": self.n_samples,
            "shard": None if self.shard is None else self.shard.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MergeSource:
        shard = d.get("shard")
        return cls(
            str(d["file"]),
            str(d["data_description"]),
            int(d["n_samples"]),
            None if shard is None else ShardOrigin.from_json(shard),
        )


@dataclass(frozen=True)
class RebinnedRange:
    """A source histogram whose bins did not line up with the merged grid: its counts were
    split between merged bins in proportion to overlap (values taken as uniform in a bin).

    ``source`` indexes `Provenance.merged_from`; ``lo``/``hi``/``width`` are the source's
    grid, ``merged_width`` the merged one's; ``split_fraction`` is the share of the source's
    count that sat in bins straddling a merged edge (the only counts that moved)."""

    tensor: str
    source: int
    lo: float
    hi: float
    width: float
    merged_width: float
    split_fraction: float

    @property
    def error_bound(self) -> float:
        """How far (in value units) a value's mass may sit from where the source put it:
        its own bin plus the merged bin it was spread over."""
        return self.width + self.merged_width

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "source": self.source,
            "lo": self.lo,
            "hi": self.hi,
            "width": self.width,
            "merged_width": self.merged_width,
            "split_fraction": self.split_fraction,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RebinnedRange:
        return cls(
            str(d["tensor"]),
            int(d["source"]),
            float(d["lo"]),
            float(d["hi"]),
            float(d["width"]),
            float(d["merged_width"]),
            float(d["split_fraction"]),
        )


@dataclass(frozen=True)
class Provenance:
    """Empty for a plain collect; ``shard`` for a collect over a shard; ``merged_from`` and
    ``rebinned`` for a merge."""

    shard: ShardOrigin | None = None
    merged_from: tuple[MergeSource, ...] = ()
    rebinned: tuple[RebinnedRange, ...] = ()

    @property
    def is_merge(self) -> bool:
        return bool(self.merged_from)

    def rebinned_for(self, tensor: str) -> tuple[RebinnedRange, ...]:
        return tuple(r for r in self.rebinned if r.tensor == tensor)

    def extra_error(self, tensor: str) -> float:
        """The widest rebinned source bin of `tensor` (0 when nothing was rebinned): what a
        merge adds to the usual one-bin uncertainty of a histogram quantile."""
        return max((r.width for r in self.rebinned_for(tensor)), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": None if self.shard is None else self.shard.to_json(),
            "merged_from": [s.to_json() for s in self.merged_from],
            "rebinned": [r.to_json() for r in self.rebinned],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Provenance:
        if not d:
            return cls()
        shard = d.get("shard")
        return cls(
            None if shard is None else ShardOrigin.from_json(shard),
            tuple(MergeSource.from_json(s) for s in d.get("merged_from", ())),
            tuple(RebinnedRange.from_json(r) for r in d.get("rebinned", ())),
        )
