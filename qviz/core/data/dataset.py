"""Calibration and evaluation data: files on disk become validated, streamed batches.

Accepted sources:

- ``.npz``: input name -> array with a leading sample axis (or one sample's value, given once
  for every sample); an optional ``labels`` array. A single-input model may use any one
  non-label key.
- ``.npy``: one array with a leading sample axis, for single-input models.
- a folder of ``.npz`` files: each file holds one sample (arrays without the sample axis, or
  with a sample axis of length 1) or several; files are taken in natural name order and may
  differ in shape (variable sequence lengths).
- a folder of images (PNG, plus JPEG/BMP/... when Pillow is installed), optionally one
  subfolder per class (the class index becomes the label), with a :class:`Preprocess`.

Nothing is loaded whole: ``.npy`` files and uncompressed ``.npz`` members are memory-mapped,
compressed ``.npz`` members are decompressed as a stream, images are decoded per batch. Every
problem the user can fix is a one-line QvizError: names that do not match the model, wrong
ranks or fixed sizes, types that cannot be cast, NaN/Inf values, an empty data set.

Each input's batch axis comes from the model's signature or from the user, never from a guess
(`qviz.core.data.layout`); the samples are stacked along it. Batches keep the samples' order
(labels stay aligned); consecutive samples are grouped while their shapes agree, so
variable-length data gives smaller batches rather than padding. A model with a fixed batch
size ``b`` gets batches of exactly ``b`` (a remainder is dropped); a model whose outputs are
fed back as inputs gets one sample at a time. The description says what each input is fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qviz.core.data.arrays import LazyArray, Repeated, ZipStream, open_npy, open_npz
from qviz.core.data.batching import Chunk, Dataset, check_finite
from qviz.core.data.checks import (
    LABELS_KEY,
    chunk_from_arrays,
    constant_value,
    default_specs,
    load_labels,
    resolve_names,
)
from qviz.core.data.folders import load_folder
from qviz.core.data.images import IMAGE_SUFFIXES, Preprocess
from qviz.core.data.layout import FeedLayout, InputFeed, StateLink, count_text, resolve_feeds
from qviz.core.data.png import decode_png
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = [
    "Dataset",
    "FeedLayout",
    "Preprocess",
    "StateLink",
    "decode_png",
    "load_data",
    "peek_sample",
    "random_data",
]

#: Data sets up to this many bytes are scanned for NaN/Inf when loaded; larger ones are
#: checked batch by batch as they stream.
EAGER_SCAN_BYTES = 256 << 20
#: Size given to symbolic (non-batch) dimensions by random_data.
RANDOM_DYNAMIC_DIM = 32


# ---------------------------------------------------------------------------- loading


def load_data(
    path: str | Path,
    inputs: Sequence[InputSpec],
    preprocess: Preprocess | None = None,
    layout: FeedLayout | None = None,
) -> Dataset:
    """Open ``path`` as data for a model with ``inputs``; see the module docstring.

    ``layout`` is what the user stated about batch axes, constants and fed-back state
    (`qviz.core.data.layout`); the rest is read from the model's signature, never guessed.
    ``inputs`` may be empty: names and shapes then come from the file, unvalidated (this is
    how a sample is read to export a PyTorch model before its ONNX inputs exist).
    """
    p = Path(path)
    if not p.exists():
        raise QvizError(f"data not found: {p}")
    inputs = tuple(inputs)
    feeds = resolve_feeds(inputs, layout) if inputs else ()
    if p.is_dir():
        dataset = load_folder(p, inputs, feeds, preprocess)
    else:
        suffix = p.suffix.lower()
        if suffix == ".npz":
            dataset = _load_arrays(p, inputs, feeds, open_npz(p), from_npz=True)
        elif suffix == ".npy":
            dataset = _load_arrays(p, inputs, feeds, {"": open_npy(p)}, from_npz=False)
        elif suffix in IMAGE_SUFFIXES:
            raise QvizError(f"give the folder that holds the images, not one image ({p.name})")
        else:
            raise QvizError(
                f"unsupported data file type '{p.suffix or p.name}': give .npz, .npy, "
                "a folder of .npz files or a folder of images"
            )
    if len(dataset) == 0:
        raise QvizError(f"the data set is empty ({p.name})")
    _eager_scan(dataset)
    return dataset


def peek_sample(path: str | Path, preprocess: Preprocess | None = None) -> dict[str, np.ndarray]:
    """The first sample of ``path`` (batch of one) without knowing the model."""
    return load_data(path, (), preprocess).first_sample()


def _load_arrays(
    path: Path,
    inputs: tuple[InputSpec, ...],
    feeds: tuple[InputFeed, ...],
    found: dict[str, LazyArray],
    *,
    from_npz: bool,
) -> Dataset:
    where = f"'{path.name}'"
    keys = [k for k in found if k != LABELS_KEY]
    if not from_npz:
        needed = [f for f in feeds if f.constant is None]
        if len(needed) > 1:
            raise QvizError(
                f"{where} is a single .npy array but the model has {len(needed)} inputs to "
                "feed; use an .npz with one array per input"
            )
        names = {(needed[0].name if needed else "input"): ""} if needed or not inputs else {}
    else:
        names = resolve_names(keys, feeds, where, model_known=bool(inputs))
    if not inputs:
        feeds = default_specs(names, found)
    chunk, whole = chunk_from_arrays(
        found, names, feeds, where, folder=False, model_known=bool(inputs)
    )
    labels = load_labels(found, chunk.n, where)
    dataset = Dataset(
        inputs=tuple(f.spec for f in feeds), chunks=[chunk], description=path.name,
        labels=labels, feeds=feeds, whole=whole,
    )
    samples = count_text(chunk.n, "sample")
    dataset.description = f"{path.name}: {samples} ({dataset.layout_text()})" + (
        ", with labels" if labels is not None else ""
    )
    return dataset


# -------------------------------------------------------------------------- validation


def _eager_scan(dataset: Dataset) -> None:
    """Look for NaN/Inf now when the data is small enough to read in passing."""
    chunks = dataset._chunks
    if any(not c.shapes_known for c in chunks):
        return  # images are integers: always finite
    total = sum(a.nbytes for c in chunks for a in c.arrays.values())
    if total > EAGER_SCAN_BYTES:
        return
    index = 0
    for chunk in chunks:
        for name, arr in chunk.arrays.items():
            if arr.dtype.kind not in "fc":
                continue
            step = max(1, (16 << 20) // max(1, arr.nbytes // max(1, chunk.n)))
            for start in range(0, chunk.n, step):
                check_finite(np.asarray(arr.read(start, min(start + step, chunk.n))), name,
                              index + start)
        index += chunk.n
    for chunk in chunks:
        for arr in chunk.arrays.values():
            if isinstance(arr, ZipStream):
                arr.close()


# ------------------------------------------------------------------------------- random


class _RandomArray(LazyArray):
    """Deterministic noise generated per sample: memory stays one batch however large n is."""

    def __init__(
        self, sample_shape: tuple[int, ...], dtype: np.dtype, n: int, seed: int, index: int
    ) -> None:
        self.sample_shape = sample_shape
        self.shape = (n, *sample_shape)
        self.dtype = np.dtype(dtype)
        self.seed, self.index = seed, index

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.sample_shape), self.dtype)
        for i in range(start, stop):
            rng = np.random.default_rng([self.seed, self.index, i])
            if self.dtype.kind == "f":
                out[i - start] = rng.standard_normal(self.sample_shape)
            elif self.dtype.kind == "b":
                out[i - start] = rng.random(self.sample_shape) < 0.5
            else:
                out[i - start] = rng.integers(0, 10, self.sample_shape)
        return out


def random_data(
    inputs: Sequence[InputSpec], n: int, seed: int = 0, layout: FeedLayout | None = None
) -> Dataset:
    """``n`` samples of RANDOM input: standard-normal floats, integers in [0, 10), fair bools.

    Symbolic non-batch dimensions get size RANDOM_DYNAMIC_DIM; an input fed whole gets one
    random value (or its ``--const``). The description says RANDOM so no statistic computed
    from it can pass for a real calibration.
    """
    if n < 1:
        raise QvizError(f"random data needs a positive sample count, got {n}")
    inputs = tuple(inputs)
    if not inputs:
        raise QvizError("random data needs the model's inputs")
    for spec in inputs:
        if not spec.has_shape:
            raise QvizError(f"input '{spec.name}' has no declared shape; give real data")
    feeds = resolve_feeds(inputs, layout)
    arrays: dict[str, LazyArray] = {}
    whole: dict[str, np.ndarray] = {}
    for i, feed in enumerate(feeds):
        shape = feed.sample_shape or ()
        dims = tuple(RANDOM_DYNAMIC_DIM if d is None else d for d in shape)
        if feed.constant is not None:
            value = constant_value(feed)
            if feed.batched:
                arrays[feed.name] = Repeated(value, n)
            else:
                whole[feed.name] = value
        elif feed.batched:
            arrays[feed.name] = _RandomArray(dims, feed.spec.dtype, n, seed, i)
        else:
            whole[feed.name] = _RandomArray(dims, feed.spec.dtype, 1, seed, i).read(0, 1)[0]
    dataset = Dataset(
        inputs=inputs, chunks=[Chunk(n if arrays else 1, arrays, "random")], description="",
        is_random=True, feeds=feeds, whole=whole,
    )
    dataset.description = (
        f"RANDOM data: {count_text(len(dataset), 'sample')} of synthetic noise (seed {seed}; "
        f"{dataset.layout_text()}), not real inputs; ranges and errors measured on it do not "
        "describe real use"
    )
    return dataset
