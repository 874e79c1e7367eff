"""The Dataset: validated samples streamed in batches of equal shape, in sample order.

Samples are held with a leading sample axis; each batch moves it to every input's batch axis
(`qviz.core.data.layout`), and inputs fed whole get the same array in every batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qviz.core.data.arrays import LazyArray
from qviz.core.data.layout import InputFeed, StateLink, default_feeds, shape_text
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = ["Chunk", "Dataset", "cast", "check_finite"]


@dataclass
class Chunk:
    """A run of samples that share one file (or one image) and so one shape per input."""

    n: int
    arrays: dict[str, LazyArray]  # batched input name -> array with a leading sample axis
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

    ``description`` says where the data came from ("RANDOM" in it when random) and how each
    input is fed; ``labels`` (one per sample) are given for ``.npz`` files with a ``labels``
    array and for image folders with one subfolder per class (``class_names`` names them).
    ``feeds`` say each input's batch axis (default: axis 0 for every input); ``whole`` holds
    the arrays of inputs fed whole. ``states`` are the outputs fed back as inputs: batches
    then hold one sample each, in order.
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
        feeds: Sequence[InputFeed] | None = None,
        whole: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.inputs: tuple[InputSpec, ...] = tuple(inputs)
        self.feeds: tuple[InputFeed, ...] = (
            tuple(feeds) if feeds is not None else default_feeds(self.inputs)
        )
        self._chunks = list(chunks)
        self.description = description
        self.is_random = is_random
        self.labels = labels
        self.class_names = class_names
        self._batched = tuple(f for f in self.feeds if f.batched)
        self._whole: dict[str, np.ndarray] = {}
        for feed in self.feeds:
            if feed.batched:
                continue
            if whole is None or feed.name not in whole:
                raise QvizError(f"no value for input '{feed.name}', which is fed whole")
            value = cast(whole[feed.name], feed.spec)
            check_finite(value, feed.name, 0, batch_axis=None)
            self._whole[feed.name] = value
        self._n = sum(c.n for c in self._chunks)
        self._fixed_batch = _fixed_batch(self._batched)

    def __len__(self) -> int:
        return self._n

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    def with_samples(
        self, chunks: Sequence[Chunk], labels: np.ndarray | None, description: str
    ) -> Dataset:
        """The same inputs and feeds over other samples (a part of this data set)."""
        return Dataset(
            inputs=self.inputs, chunks=chunks, description=description,
            is_random=self.is_random, labels=labels, class_names=self.class_names,
            feeds=self.feeds, whole=self._whole,
        )

    def __repr__(self) -> str:
        return f"Dataset({self.description!r})"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def states(self) -> tuple[StateLink, ...]:
        """Outputs fed back as the next sample's inputs (empty for a stateless model)."""
        return tuple(f.state for f in self.feeds if f.state is not None)

    def feed(self, name: str) -> InputFeed:
        for f in self.feeds:
            if f.name == name:
                return f
        raise KeyError(name)

    def samples_in(self, feeds: Mapping[str, np.ndarray]) -> int:
        """How many samples a batch of this data set holds."""
        for f in self._batched:
            assert f.batch_axis is not None
            return int(np.shape(feeds[f.name])[f.batch_axis])
        return 1

    def head(self, feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The first ``n`` samples of a batch (inputs fed whole are kept as they are)."""
        out = dict(feeds)
        for f in self._batched:
            assert f.batch_axis is not None
            arr = np.asarray(feeds[f.name])
            if arr.shape[f.batch_axis] > n:
                index = [slice(None)] * arr.ndim
                index[f.batch_axis] = slice(0, n)
                out[f.name] = np.ascontiguousarray(arr[tuple(index)])
        return out

    def layout_text(self) -> str:
        """What each input is fed: its per-sample shape and batch axis, or its whole value."""
        parts = []
        for f in self.feeds:
            dtype = np.dtype(f.spec.dtype).name
            if f.batched:
                shape = self._sample_shape(f)
                text = f"{f.name}: {dtype} {shape} per sample on axis {f.batch_axis}"
                if f.state is not None:
                    text += f", then output '{f.state.output}' of the sample before"
            else:
                value = self._whole[f.name]
                text = f"{f.name}: {dtype} {shape_text(value.shape)} the same for every sample"
                if f.constant is not None:
                    text += f" (= {f.constant:g})"
            parts.append(text)
        return "; ".join(parts)

    def _sample_shape(self, f: InputFeed) -> str:
        shapes = {tuple(c.arrays[f.name].shape[1:]) for c in self._chunks if f.name in c.arrays}
        if len(shapes) == 1:
            return shape_text(next(iter(shapes)))
        declared = f.sample_shape
        return shape_text(declared) + " (varies)" if declared is not None else "(varies)"

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches in sample order, each ``{input name: array}`` cast to the model's dtypes.

        A batch holds up to ``batch_size`` consecutive samples of equal shape (exactly the
        model's batch size when that is fixed; one when outputs are fed back). Raises
        QvizError on NaN/Inf.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        size = 1 if self.states else (self._fixed_batch or batch_size)
        names = [f.name for f in self._batched]
        pending: list[dict[str, np.ndarray]] = []
        pending_n = 0
        pending_key: tuple[tuple[int, ...], ...] | None = None
        first_index = 0
        index = 0
        for chunk in self._chunks:
            start = 0
            if pending and chunk.shapes_known:
                # Array shapes are known without reading: close the batch before a new shape.
                known = tuple(chunk.arrays[n].shape[1:] for n in names)
                if known != pending_key:
                    batch = self._finish(pending, pending_n, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
            while start < chunk.n:
                # Never read more than the open batch can take: memory stays one batch.
                stop = min(chunk.n, start + size - pending_n)
                part = {n: chunk.read(n, start, stop) for n in names}
                key = tuple(part[n].shape[1:] for n in names)
                if pending and key != pending_key:
                    # An image of a new size closes the open batch (images are one sample).
                    batch = self._finish(pending, pending_n, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
                    stop = min(chunk.n, start + size)
                    part = {n: chunk.read(n, start, stop) for n in names}
                if not pending:
                    first_index, pending_key = index, key
                pending.append(part)
                pending_n += stop - start
                index += stop - start
                start = stop
                if pending_n >= size:
                    batch = self._finish(pending, pending_n, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
        if pending:
            batch = self._finish(pending, pending_n, first_index)
            if batch is not None:
                yield batch

    def first_sample(self) -> dict[str, np.ndarray]:
        """The first sample as a batch of one, cast to the model's dtypes."""
        if not self._chunks:
            raise QvizError("the data set is empty")
        chunk = self._chunks[0]
        part = {f.name: chunk.read(f.name, 0, 1) for f in self._batched}
        batch = self._finish([part], 1, 0, partial_ok=True)
        assert batch is not None
        return batch

    def _finish(
        self,
        parts: list[dict[str, np.ndarray]],
        n: int,
        first_index: int,
        *,
        partial_ok: bool = False,
    ) -> dict[str, np.ndarray] | None:
        if self._fixed_batch and n != self._fixed_batch and not partial_ok:
            return None  # the model cannot take a partial batch
        batch: dict[str, np.ndarray] = {}
        for feed in self.feeds:
            if not feed.batched:
                batch[feed.name] = self._whole[feed.name]
                continue
            assert feed.batch_axis is not None
            pieces = [p[feed.name] for p in parts]
            arr = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
            arr = cast(arr, feed.spec)
            check_finite(arr, feed.name, first_index, batch_axis=0)
            if feed.batch_axis:
                arr = np.ascontiguousarray(np.moveaxis(arr, 0, feed.batch_axis))
            batch[feed.name] = arr
        return batch


def cast(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A contiguous array of the model's dtype (a copy only when needed; a scalar stays 0-d,
    which np.ascontiguousarray would make 1-d)."""
    out = np.asarray(arr).astype(spec.dtype, copy=False)
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def check_finite(
    arr: np.ndarray, name: str, first_index: int, *, batch_axis: int | None = 0
) -> None:
    """QvizError naming the first sample with NaN/Inf (samples along ``batch_axis``)."""
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    if batch_axis is None or arr.ndim == 0:
        raise QvizError(f"data contains NaN/Inf in input '{name}'")
    rows = np.moveaxis(finite, batch_axis, 0).reshape(arr.shape[batch_axis], -1).all(axis=1)
    bad = int(np.flatnonzero(~rows)[0])
    raise QvizError(f"data contains NaN/Inf in input '{name}' (sample {first_index + bad})")


def _fixed_batch(feeds: Sequence[InputFeed]) -> int | None:
    sizes = {f.fixed_batch for f in feeds} - {None}
    if len(sizes) > 1:
        listing = ", ".join(
            f"{f.name} axis {f.batch_axis}: {f.fixed_batch}" for f in feeds if f.fixed_batch
        )
        raise QvizError(f"the model's inputs disagree on the batch size ({listing})")
    return next(iter(sizes)) if sizes else None
