"""The Dataset: validated samples streamed in batches of equal shape, in sample order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from qviz.core.data.arrays import LazyArray
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = ["Chunk", "Dataset"]


@dataclass
class Chunk:
    """A run of samples that share one file (or one image) and so one shape per input."""

    n: int
    arrays: dict[str, LazyArray]  # model input name -> array with a leading sample axis
    origin: str

    @property
    def shapes_known(self) -> bool:
        """True when the arrays' shapes are known without reading (not so for images)."""
        return True

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[name].read(start, stop)


# ------------------------------------------------------------------------------ Dataset


class Dataset:
    """Samples for a model, validated at load and streamed in batches.

    ``description`` says where the data came from ("RANDOM" in it when random);
    ``labels`` (one per sample) are given for ``.npz`` files with a ``labels`` array and for
    image folders with one subfolder per class (``class_names`` then names them).
    """

    def __init__(
        self,
        *,
        inputs: Sequence[InputSpec],
        chunks: Sequence[Chunk],
        description: str,
        is_random: bool = False,
        labels: np.ndarray | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.inputs: tuple[InputSpec, ...] = tuple(inputs)
        self._chunks = list(chunks)
        self.description = description
        self.is_random = is_random
        self.labels = labels
        self.class_names = class_names
        self._n = sum(c.n for c in self._chunks)
        self._fixed_batch = _fixed_batch(self.inputs)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Dataset({self.description!r})"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches in sample order, each ``{input name: array}`` cast to the model's dtypes.

        A batch holds up to ``batch_size`` consecutive samples of equal shape (exactly the
        model's batch size when that is fixed). Raises QvizError on NaN/Inf.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        size = self._fixed_batch or batch_size
        pending: list[dict[str, np.ndarray]] = []
        pending_n = 0
        pending_key: tuple[tuple[int, ...], ...] | None = None
        first_index = 0
        index = 0
        for chunk in self._chunks:
            start = 0
            if pending and chunk.shapes_known:
                # Array shapes are known without reading: close the batch before a new shape.
                known = tuple(chunk.arrays[s.name].shape[1:] for s in self.inputs)
                if known != pending_key:
                    batch = self._finish(pending, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
            while start < chunk.n:
                # Never read more than the open batch can take: memory stays one batch.
                stop = min(chunk.n, start + size - pending_n)
                part = {s.name: chunk.read(s.name, start, stop) for s in self.inputs}
                key = tuple(part[s.name].shape[1:] for s in self.inputs)
                if pending and key != pending_key:
                    # An image of a new size closes the open batch (images are one sample).
                    batch = self._finish(pending, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
                    stop = min(chunk.n, start + size)
                    part = {s.name: chunk.read(s.name, start, stop) for s in self.inputs}
                if not pending:
                    first_index, pending_key = index, key
                pending.append(part)
                pending_n += stop - start
                index += stop - start
                start = stop
                if pending_n >= size:
                    batch = self._finish(pending, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
        if pending:
            batch = self._finish(pending, first_index)
            if batch is not None:
                yield batch

    def first_sample(self) -> dict[str, np.ndarray]:
        """The first sample as a batch of one (leading axis 1), cast to the model's dtypes."""
        if not self._chunks:
            raise QvizError("the data set is empty")
        chunk = self._chunks[0]
        part = {spec.name: chunk.read(spec.name, 0, 1) for spec in self.inputs}
        out = {}
        for spec in self.inputs:
            arr = cast(part[spec.name], spec)
            check_finite(arr, spec.name, 0)
            out[spec.name] = arr
        return out

    def _finish(
        self, parts: list[dict[str, np.ndarray]], first_index: int
    ) -> dict[str, np.ndarray] | None:
        n = sum(next(iter(p.values())).shape[0] for p in parts) if parts else 0
        if self._fixed_batch and n != self._fixed_batch:
            return None  # the model cannot take a partial batch
        batch: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            pieces = [p[spec.name] for p in parts]
            arr = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
            arr = cast(arr, spec)
            check_finite(arr, spec.name, first_index)
            batch[spec.name] = arr
        return batch


def cast(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A contiguous array of the model's dtype (a copy only when needed)."""
    return np.ascontiguousarray(np.asarray(arr).astype(spec.dtype, copy=False))


def check_finite(arr: np.ndarray, name: str, first_index: int) -> None:
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.reshape(arr.shape[0], -1).all(axis=1)) if arr.ndim else [0]
    raise QvizError(
        f"data contains NaN/Inf in input '{name}' (sample {first_index + int(bad_rows[0])})"
    )


def _fixed_batch(inputs: Sequence[InputSpec]) -> int | None:
    sizes = {i.shape[0] for i in inputs if i.shape and i.shape[0] is not None}
    if len(sizes) > 1:
        raise QvizError(f"the model's inputs disagree on the batch size: {sorted(sizes)}")
    return next(iter(sizes)) if sizes else None

