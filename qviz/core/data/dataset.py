"""Calibration and evaluation data: files on disk become validated, streamed batches.

Accepted sources:

- ``.npz``: input name -> array with a leading sample axis; an optional ``labels`` array. A
  single-input model may use any one non-label key.
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

Batches keep the samples' order (labels stay aligned); consecutive samples are grouped while
their shapes agree, so variable-length data gives smaller batches rather than padding. A model
with a fixed batch size ``b`` gets batches of exactly ``b`` (a remainder is dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qviz.core.data.arrays import LazyArray, ZipStream, open_npy, open_npz
from qviz.core.data.batching import Chunk, Dataset, check_finite
from qviz.core.data.checks import (
    LABELS_KEY,
    chunk_from_arrays,
    default_specs,
    load_labels,
    resolve_names,
)
from qviz.core.data.folders import load_folder
from qviz.core.data.images import IMAGE_SUFFIXES, Preprocess
from qviz.core.data.png import decode_png
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = [
    "Dataset",
    "Preprocess",
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
    path: str | Path, inputs: Sequence[InputSpec], preprocess: Preprocess | None = None
) -> Dataset:
    """Open ``path`` as data for a model with ``inputs``; see the module docstring.

    ``inputs`` may be empty: names and shapes then come from the file, unvalidated (this is
    how a sample is read to export a PyTorch model before its ONNX inputs exist).
    """
    p = Path(path)
    if not p.exists():
        raise QvizError(f"data not found: {p}")
    inputs = tuple(inputs)
    if p.is_dir():
        dataset = load_folder(p, inputs, preprocess)
    else:
        suffix = p.suffix.lower()
        if suffix == ".npz":
            dataset = _load_arrays(p, inputs, open_npz(p), from_npz=True)
        elif suffix == ".npy":
            dataset = _load_arrays(p, inputs, {"": open_npy(p)}, from_npz=False)
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
    found: dict[str, LazyArray],
    *,
    from_npz: bool,
) -> Dataset:
    where = f"'{path.name}'"
    keys = [k for k in found if k != LABELS_KEY]
    if not from_npz:
        if len(inputs) > 1:
            raise QvizError(
                f"{where} is a single .npy array but the model has {len(inputs)} inputs; "
                "use an .npz with one array per input"
            )
        names = {(inputs[0].name if inputs else "input"): ""}
    else:
        names = resolve_names(keys, inputs, where)
    specs = inputs or default_specs(names, found)
    chunk = chunk_from_arrays(found, names, inputs, where, one_sample=False)
    labels = load_labels(found, chunk.n, where)
    listing = ", ".join(
        f"{name}: {chunk.arrays[name].dtype} {tuple(chunk.arrays[name].shape)}" for name in names
    )
    description = f"{path.name}: {chunk.n} samples ({listing})" + (
        ", with labels" if labels is not None else ""
    )
    return Dataset(inputs=specs, chunks=[chunk], description=description, labels=labels)


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

    def __init__(self, spec: InputSpec, n: int, seed: int, index: int) -> None:
        dims = [RANDOM_DYNAMIC_DIM if d is None else d for d in spec.shape[1:]]
        self.sample_shape = tuple(dims)
        self.shape = (n, *dims)
        self.dtype = spec.dtype
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


def random_data(inputs: Sequence[InputSpec], n: int, seed: int = 0) -> Dataset:
    """``n`` samples of RANDOM input: standard-normal floats, integers in [0, 10), fair bools.

    Symbolic non-batch dimensions get size RANDOM_DYNAMIC_DIM. The description says RANDOM so
    no statistic computed from it can pass for a real calibration.
    """
    if n < 1:
        raise QvizError(f"random data needs a positive sample count, got {n}")
    inputs = tuple(inputs)
    if not inputs:
        raise QvizError("random data needs the model's inputs")
    for spec in inputs:
        if not spec.shape:
            raise QvizError(f"input '{spec.name}' has no declared shape; give real data")
    arrays: dict[str, LazyArray] = {
        spec.name: _RandomArray(spec, n, seed, i) for i, spec in enumerate(inputs)
    }
    return Dataset(
        inputs=inputs,
        chunks=[Chunk(n, arrays, "random")],
        description=(
            f"RANDOM data: {n} samples of synthetic noise (seed {seed}), not real inputs; "
            "ranges and errors measured on it do not describe real use"
        ),
        is_random=True,
    )
