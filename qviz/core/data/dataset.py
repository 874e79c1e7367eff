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

import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = [
    "Dataset",
    "Preprocess",
    "load_data",
    "peek_sample",
    "random_data",
]

LABELS_KEY = "labels"
#: Data sets up to this many bytes are scanned for NaN/Inf when loaded; larger ones are
#: checked batch by batch as they stream.
EAGER_SCAN_BYTES = 256 << 20
#: Size given to symbolic (non-batch) dimensions by random_data.
RANDOM_DYNAMIC_DIM = 32
PNG_SUFFIXES = frozenset({".png"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_LAYOUTS = ("NCHW", "NHWC")


# ------------------------------------------------------------------------------ Preprocess


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: resize, scale, normalize, lay out.

    ``value = (pixel * scale - mean[c]) / std[c]`` per channel after resizing to ``size``
    (height, width) with an antialiased bilinear filter; ``size=None`` takes the model's fixed
    height and width, or keeps each image's own size when those are dynamic. ``mean``/``std``
    have one entry (all channels) or one per channel.
    """

    size: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
                raise QvizError(f"preprocess size must be two positive integers, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "layout", str(self.layout).upper())
        if self.layout not in _LAYOUTS:
            raise QvizError(f"preprocess layout must be NCHW or NHWC, got '{self.layout}'")
        if not self.mean or not self.std:
            raise QvizError("preprocess mean and std need at least one value")
        if any(s == 0 or not math.isfinite(s) for s in self.std):
            raise QvizError(f"preprocess std must be finite and non-zero, got {self.std}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise QvizError(f"preprocess scale must be positive, got {self.scale}")
        channels = 1 if self.grayscale else 3
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise QvizError(
                    f"preprocess {label} has {len(values)} values; give 1 or {channels}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`from_dict` reads back)."""
        return {
            "size": list(self.size) if self.size else None,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "grayscale": self.grayscale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """Build from a mapping with the field names; unknown keys are an error."""
        known = {"size", "scale", "mean", "std", "layout", "grayscale"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QvizError(f"unknown preprocess setting(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        try:
            if data.get("size") is not None:
                size = data["size"]
                kwargs["size"] = (int(size), int(size)) if isinstance(size, int) else tuple(size)
            if "scale" in data:
                kwargs["scale"] = _number(data["scale"])
            for key in ("mean", "std"):
                if key in data:
                    v = data[key]
                    kwargs[key] = (_number(v),) if isinstance(v, int | float | str) else tuple(
                        _number(x) for x in v
                    )
            if "layout" in data:
                kwargs["layout"] = str(data["layout"])
            if "grayscale" in data:
                kwargs["grayscale"] = bool(data["grayscale"])
        except (TypeError, ValueError) as exc:
            raise QvizError(f"bad preprocess setting: {exc}") from exc
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> Preprocess:
        """Read a JSON object with the field names (``{"size": [224, 224], ...}``)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise QvizError(f"cannot read preprocess file '{p}': {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise QvizError(f"preprocess file '{p.name}' is not valid JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise QvizError(f"preprocess file '{p.name}' must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse command-line text: ``key=value`` pairs separated by commas, semicolons or
        spaces; lists use ``/`` (``mean=0.485/0.456/0.406``) or continue after commas; size is
        ``224x224`` or ``224``; scale may be a fraction (``1/255``); ``grayscale`` alone means
        true. Example: ``size=224x224,scale=1/255,mean=0.485/0.456/0.406,layout=NCHW``.
        """
        fields: dict[str, list[str]] = {}
        current: str | None = None
        for token in re.split(r"[,;\s]+", text.strip()):
            if not token:
                continue
            if "=" in token:
                key, _, value = token.partition("=")
                current = key.strip().lower()
                fields[current] = [value.strip()]
            elif token.lower() == "grayscale":
                fields["grayscale"] = ["true"]
                current = None
            elif current in ("mean", "std"):
                fields[current].append(token)
            else:
                raise QvizError(f"cannot read preprocess setting '{token}' in '{text}'")
        data: dict[str, Any] = {}
        try:
            for key, values in fields.items():
                if key == "size":
                    parts = re.split(r"[x/]", values[0].lower())
                    parts = [p for p in parts if p] + values[1:]
                    dims = [int(p) for p in parts]
                    data["size"] = (dims[0], dims[0]) if len(dims) == 1 else tuple(dims)
                elif key in ("mean", "std"):
                    data[key] = tuple(
                        _number(v) for item in values for v in item.split("/") if v
                    )
                elif key == "scale":
                    data["scale"] = _number(values[0])
                elif key == "grayscale":
                    data["grayscale"] = values[0].lower() in ("1", "true", "yes", "on")
                else:
                    data[key] = values[0]
        except (ValueError, ZeroDivisionError) as exc:
            raise QvizError(f"cannot read preprocess settings '{text}': {exc}") from exc
        return cls.from_dict(data)

    #: The brief's name for :meth:`parse`.
    from_cli = parse

    def describe(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "native size"
        return (
            f"{size}, scale {self.scale:.6g}, mean {self.mean}, std {self.std}, {self.layout}"
            + (", grayscale" if self.grayscale else "")
        )


def _number(value: Any) -> float:
    """A float from a number or text such as "0.5" or "1/255"."""
    if isinstance(value, str) and "/" in value:
        return float(Fraction(value.strip()))
    return float(value)


# ------------------------------------------------------------------------- lazy arrays


class _LazyArray:
    """An array on disk read by ranges of samples along axis 0."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """The whole array (used for labels and single-sample files, which are small)."""
        return self.read(0, self.shape[0])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class _InMemory(_LazyArray):
    """A numpy array or memmap; slices are views, copies happen only when casting a batch."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def read_all(self) -> np.ndarray:
        return np.asarray(self.array)


class _AddSampleAxis(_LazyArray):
    """One sample stored without the sample axis: seen as a leading axis of length 1."""

    def __init__(self, inner: _LazyArray) -> None:
        self.inner = inner
        self.shape = (1, *inner.shape)
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.inner.read_all())[None][start:stop]


class _ZipStream(_LazyArray):
    """A compressed ``.npz`` member, decompressed sequentially (reopened to go backwards)."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.member = path, member
        self.shape, self.dtype = shape, dtype
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream: IO[bytes] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._pos = 0

    def __getstate__(self) -> dict[str, Any]:
        # Compute backends ship data sets to worker processes: the stream reopens there.
        return {**self.__dict__, "_stream": None, "_zip": None, "_pos": 0}

    def _open(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.path)
        self._stream = self._zip.open(self.member)
        version = np.lib.format.read_magic(self._stream)
        _read_npy_header(self._stream, version)
        self._pos = 0

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._stream = self._zip = None

    def _read_exact(self, n: int) -> bytes:
        assert self._stream is not None
        data = self._stream.read(n)
        if len(data) != n:
            raise QvizError(f"data file '{self.path.name}' is truncated ({self.member})")
        return data

    def read_all(self) -> np.ndarray:
        self._open()
        count = int(np.prod(self.shape, dtype=np.int64))
        raw = self._read_exact(count * self.dtype.itemsize)
        self.close()
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.shape[0])
        if self._stream is None or start < self._pos:
            self._open()
        skip = (start - self._pos) * self._row_bytes
        while skip > 0:
            step = min(skip, 1 << 24)
            self._read_exact(step)
            skip -= step
        raw = self._read_exact((stop - start) * self._row_bytes)
        self._pos = stop
        return np.frombuffer(raw, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))


def _read_npy_header(
    f: IO[bytes], version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _refuse_objects(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise QvizError(
            f"{where} holds Python objects (a pickle); qviz reads plain numeric arrays only"
        )


def _open_npy(path: Path) -> _LazyArray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise QvizError(
                f"'{path.name}' holds Python objects (a pickle); qviz reads numeric arrays only"
            ) from exc
        raise QvizError(f"cannot read data file '{path.name}': {exc}") from exc
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise QvizError(f"'{path.name}' is an .npz archive; name it .npz")
    return _InMemory(array)


def _open_npz(path: Path) -> dict[str, _LazyArray]:
    """Each member of an ``.npz``: memory-mapped when stored, streamed when compressed."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
    except zipfile.BadZipFile as exc:
        raise QvizError(f"cannot read data file '{path.name}': not an .npz archive") from exc
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    arrays: dict[str, _LazyArray] = {}
    try:
        with open(path, "rb") as f:
            for info in infos:
                key = info.filename[: -len(".npy")]
                arrays[key] = _open_member(path, f, info)
    except (ValueError, struct.error, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc}") from exc
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    return arrays


def _open_member(path: Path, f: IO[bytes], info: zipfile.ZipInfo) -> _LazyArray:
    where = f"'{path.name}' ({info.filename})"
    if info.compress_type != zipfile.ZIP_STORED:
        with zipfile.ZipFile(path) as zf, zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            shape, fortran, dtype = _read_npy_header(member, version)
        _refuse_objects(dtype, where)
        if fortran and len(shape) > 1:
            # Column-major data cannot be streamed by rows; such files are rare and small.
            with np.load(path, allow_pickle=False) as npz:
                return _InMemory(npz[info.filename[:-4]])
        return _ZipStream(path, info.filename, shape, dtype)
    # Stored member: find its bytes through the local file header, then memory-map them.
    f.seek(info.header_offset)
    header = f.read(30)
    signature, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
    if signature != 0x04034B50:
        raise ValueError("corrupt zip local header")
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = _read_npy_header(f, version)
    _refuse_objects(dtype, where)
    offset = f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{info.filename} is truncated")
    if count == 0:
        return _InMemory(np.zeros(shape, dtype))
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                   order="F" if fortran else "C")
    return _InMemory(mm)


# ------------------------------------------------------------------------------ chunks


@dataclass
class _Chunk:
    """A run of samples that share one file (or one image) and so one shape per input."""

    n: int
    arrays: dict[str, _LazyArray]  # model input name -> array with a leading sample axis
    origin: str


class _ImageChunk(_Chunk):
    """One image file, decoded and preprocessed when read."""

    def __init__(self, path: Path, name: str, prep: _ImagePlan) -> None:
        super().__init__(1, {}, path.name)
        self.path, self.name, self.prep = path, name, prep

    def read(self) -> np.ndarray:
        return self.prep.apply(_read_image(self.path))


def _read_chunk(chunk: _Chunk, name: str, start: int, stop: int) -> np.ndarray:
    if isinstance(chunk, _ImageChunk):
        return chunk.read()
    return chunk.arrays[name].read(start, stop)


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
        chunks: Sequence[_Chunk],
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
            if pending and not isinstance(chunk, _ImageChunk):
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
                part = {s.name: _read_chunk(chunk, s.name, start, stop) for s in self.inputs}
                key = tuple(part[s.name].shape[1:] for s in self.inputs)
                if pending and key != pending_key:
                    # An image of a new size closes the open batch (images are one sample).
                    batch = self._finish(pending, first_index)
                    if batch is not None:
                        yield batch
                    pending, pending_n = [], 0
                    stop = min(chunk.n, start + size)
                    part = {s.name: _read_chunk(chunk, s.name, start, stop) for s in self.inputs}
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
        part = {spec.name: _read_chunk(chunk, spec.name, 0, 1) for spec in self.inputs}
        out = {}
        for spec in self.inputs:
            arr = _cast(part[spec.name], spec)
            _check_finite(arr, spec.name, 0)
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
            arr = _cast(arr, spec)
            _check_finite(arr, spec.name, first_index)
            batch[spec.name] = arr
        return batch


def _cast(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A contiguous array of the model's dtype (a copy only when needed)."""
    return np.ascontiguousarray(np.asarray(arr).astype(spec.dtype, copy=False))


def _check_finite(arr: np.ndarray, name: str, first_index: int) -> None:
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
        dataset = _load_folder(p, inputs, preprocess)
    else:
        suffix = p.suffix.lower()
        if suffix == ".npz":
            dataset = _load_arrays(p, inputs, _open_npz(p), from_npz=True)
        elif suffix == ".npy":
            dataset = _load_arrays(p, inputs, {"": _open_npy(p)}, from_npz=False)
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


def _resolve_names(
    keys: Sequence[str], inputs: tuple[InputSpec, ...], where: str
) -> dict[str, str]:
    """Map model input name -> data key."""
    if not inputs:
        return {k: k for k in keys}
    names = [i.name for i in inputs]
    if len(inputs) == 1:
        if names[0] in keys:
            extra = [k for k in keys if k != names[0]]
            if extra:
                raise QvizError(
                    f"{where} has arrays the model does not take: {', '.join(extra)} "
                    f"(its input is '{names[0]}'; labels go under '{LABELS_KEY}')"
                )
            return {names[0]: names[0]}
        if len(keys) == 1:
            return {names[0]: keys[0]}
        raise QvizError(
            f"{where} has arrays {', '.join(keys) or '(none)'}, but the model's input is "
            f"'{names[0]}'"
        )
    missing = [n for n in names if n not in keys]
    if missing:
        raise QvizError(
            f"{where} has no array for input '{missing[0]}' "
            f"(model inputs: {', '.join(names)}; data has: {', '.join(keys) or 'nothing'})"
        )
    extra = [k for k in keys if k not in names]
    if extra:
        raise QvizError(
            f"{where} has arrays the model does not take: {', '.join(extra)} "
            f"(model inputs: {', '.join(names)}; labels go under '{LABELS_KEY}')"
        )
    return {n: n for n in names}


def _castable(src: np.dtype, dst: np.dtype) -> bool:
    """Casts that keep meaning: bool->anything numeric, int->int/float, float->float."""
    if src == dst:
        return True
    if src.kind == "b":
        return dst.kind in "biuf"
    if src.kind in "iu":
        return dst.kind in "iuf"
    if src.kind == "f":
        return dst.kind == "f"
    return False


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_array(arr: _LazyArray, spec: InputSpec, where: str, *, one_sample: bool) -> _LazyArray:
    """Validate rank, fixed sizes and dtype; return the array with its sample axis."""
    if not _castable(arr.dtype, spec.dtype):
        raise QvizError(
            f"input '{spec.name}' expects {spec.dtype} but {where} holds {arr.dtype} "
            "(no safe conversion)"
        )
    if not spec.shape:
        return arr  # the model does not declare a shape: nothing to check
    rank = len(spec.shape)
    if one_sample and len(arr.shape) == rank - 1:
        arr = _AddSampleAxis(arr)
    if len(arr.shape) != rank:
        raise QvizError(
            f"input '{spec.name}' expects rank {rank} {_shape_text(spec.shape)} (the first axis "
            f"being samples), but {where} has shape {tuple(arr.shape)}"
        )
    for axis in range(1, rank):
        want = spec.shape[axis]
        if want is not None and arr.shape[axis] != want:
            raise QvizError(
                f"input '{spec.name}' expects shape {_shape_text(spec.shape)} but {where} has "
                f"{tuple(arr.shape)} (axis {axis}: {arr.shape[axis]} != {want})"
            )
    return arr


def _chunk_from_arrays(
    found: Mapping[str, _LazyArray],
    names: Mapping[str, str],
    inputs: tuple[InputSpec, ...],
    where: str,
    *,
    one_sample: bool,
) -> _Chunk:
    arrays: dict[str, _LazyArray] = {}
    for model_name, key in names.items():
        arr = found[key]
        spec = next((s for s in inputs if s.name == model_name), None)
        if spec is not None:
            arr = _check_array(arr, spec, f"{where} ['{key}']" if key else where,
                               one_sample=one_sample)
        elif not arr.shape:
            raise QvizError(f"{where} ['{key}'] is a single value, not samples")
        arrays[model_name] = arr
    counts = {name: a.shape[0] if a.shape else 1 for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise QvizError(f"{where}: inputs have different sample counts ({listing})")
    return _Chunk(next(iter(counts.values()), 0), arrays, where)


def _default_specs(
    names: Mapping[str, str], found: Mapping[str, _LazyArray]
) -> tuple[InputSpec, ...]:
    """Input specs read off the data itself (when the model's inputs are not known yet)."""
    return tuple(
        InputSpec(name, (None, *found[key].shape[1:]), found[key].dtype)
        for name, key in names.items()
    )


def _load_labels(found: Mapping[str, _LazyArray], n: int, where: str) -> np.ndarray | None:
    if LABELS_KEY not in found:
        return None
    labels = np.asarray(found[LABELS_KEY].read_all())
    labels = labels.reshape(-1) if labels.ndim == 0 else labels
    if labels.shape[0] != n:
        raise QvizError(f"{where}: {labels.shape[0]} labels for {n} samples")
    return np.array(labels)


def _load_arrays(
    path: Path,
    inputs: tuple[InputSpec, ...],
    found: dict[str, _LazyArray],
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
        names = _resolve_names(keys, inputs, where)
    specs = inputs or _default_specs(names, found)
    chunk = _chunk_from_arrays(found, names, inputs, where, one_sample=False)
    labels = _load_labels(found, chunk.n, where)
    listing = ", ".join(
        f"{name}: {chunk.arrays[name].dtype} {tuple(chunk.arrays[name].shape)}" for name in names
    )
    description = f"{path.name}: {chunk.n} samples ({listing})" + (
        ", with labels" if labels is not None else ""
    )
    return Dataset(inputs=specs, chunks=[chunk], description=description, labels=labels)


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _load_folder(
    folder: Path, inputs: tuple[InputSpec, ...], preprocess: Preprocess | None
) -> Dataset:
    try:
        entries = sorted(folder.iterdir(), key=_natural_key)
    except OSError as exc:
        raise QvizError(f"cannot list data folder '{folder}': {exc.strerror or exc}") from exc
    files = [e for e in entries if e.is_file() and not e.name.startswith(".")]
    npz = [f for f in files if f.suffix.lower() == ".npz"]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if npz and images:
        raise QvizError(f"data folder '{folder.name}' mixes .npz files and images; use one kind")
    if npz:
        return _load_npz_folder(folder, npz, inputs)
    if images:
        return _load_images(folder, [(f, None) for f in images], None, inputs, preprocess)
    # One subfolder per class (ImageNet style).
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    labelled: list[tuple[Path, int | None]] = []
    class_names: list[str] = []
    for d in classes:
        found = sorted(
            (f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural_key,
        )
        if found:
            labelled += [(f, len(class_names)) for f in found]
            class_names.append(d.name)
    if labelled:
        return _load_images(folder, labelled, tuple(class_names), inputs, preprocess)
    raise QvizError(f"the data set is empty: no .npz files or images in '{folder}'")


def _load_npz_folder(folder: Path, files: list[Path], inputs: tuple[InputSpec, ...]) -> Dataset:
    chunks: list[_Chunk] = []
    labels: list[np.ndarray] = []
    names: dict[str, str] | None = None
    has_labels: bool | None = None
    specs = inputs
    for f in files:
        found = _open_npz(f)
        where = f"'{folder.name}/{f.name}'"
        keys = [k for k in found if k != LABELS_KEY]
        if names is None:
            names = _resolve_names(keys, inputs, where)
            has_labels = LABELS_KEY in found
            if not inputs:
                specs = _default_specs(names, found)
        elif sorted(keys) != sorted(names.values()):
            raise QvizError(
                f"{where} has arrays {', '.join(keys)}; the first file had "
                f"{', '.join(names.values())}"
            )
        chunk = _chunk_from_arrays(found, names, inputs, where, one_sample=True)
        if chunk.n == 0:
            continue
        chunks.append(chunk)
        if (LABELS_KEY in found) != has_labels:
            raise QvizError(f"{where}: some files have '{LABELS_KEY}' and some do not")
        if has_labels:
            file_labels = _load_labels(found, chunk.n, where)
            assert file_labels is not None
            labels.append(file_labels.reshape(chunk.n, *file_labels.shape[1:]))
    n = sum(c.n for c in chunks)
    description = f"folder {folder.name}/: {len(files)} .npz files, {n} samples" + (
        ", with labels" if has_labels else ""
    )
    return Dataset(
        inputs=specs,
        chunks=chunks,
        description=description,
        labels=np.concatenate(labels) if labels else None,
    )


# ------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class _ImagePlan:
    """A Preprocess resolved against the model input: what every image becomes."""

    prep: Preprocess
    channels: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8/uint16 (H, W, C) -> float32 (1, C, H, W) or (1, H, W, C)."""
        prep = self.prep
        img = image.astype(np.float32)
        if image.dtype == np.uint16:
            img /= 257.0  # 16-bit PNGs: same 0..255 scale as 8-bit images
        if img.shape[2] in (2, 4):
            img = img[:, :, :-1]  # drop alpha
        if self.channels == 1 and img.shape[2] == 3:
            # ITU-R 601-2 luma, as Pillow's convert("L").
            img = img @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif self.channels == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if prep.size is not None and img.shape[:2] != prep.size:
            img = _resize(img, prep.size)
        img = img * np.float32(prep.scale)
        img = (img - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
        if prep.layout == "NCHW":
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img[None], dtype=np.float32)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter widened when shrinking (antialiasing), the
    same filter Pillow's BILINEAR resize uses."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    pixels = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(pixels[None, :] - centers[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    wy = _resize_matrix(img.shape[0], h)
    wx = _resize_matrix(img.shape[1], w)
    out = np.tensordot(wy, img, axes=(1, 0))  # (h, W, C)
    return np.tensordot(wx, out, axes=(1, 1)).transpose(1, 0, 2)  # (h, w, C)


def _plan_images(
    inputs: tuple[InputSpec, ...], preprocess: Preprocess | None
) -> tuple[_ImagePlan, str]:
    if len(inputs) > 1:
        raise QvizError(
            f"image folders feed single-input models; this one has {len(inputs)} inputs"
        )
    spec = inputs[0] if inputs else None
    shape = spec.shape if spec is not None else ()
    prep = preprocess
    if prep is None:
        # No settings given: read the layout and channel count off the model's input.
        layout, gray = "NCHW", False
        if len(shape) == 4:
            if shape[1] not in (1, 3) and shape[3] in (1, 3):
                layout = "NHWC"
            channels = shape[1] if layout == "NCHW" else shape[3]
            gray = channels == 1
        prep = Preprocess(layout=layout, grayscale=gray)
    if len(shape) == 4:
        h_axis, w_axis, c_axis = (2, 3, 1) if prep.layout == "NCHW" else (1, 2, 3)
        want_c = shape[c_axis]
        have_c = 1 if prep.grayscale else 3
        if want_c is not None and want_c != have_c:
            hint = "set grayscale" if want_c == 1 else (
                "use layout NHWC" if prep.layout == "NCHW" and shape[3] in (1, 3) else
                "use layout NCHW" if prep.layout == "NHWC" and shape[1] in (1, 3) else
                "check the layout"
            )
            raise QvizError(
                f"input '{spec.name if spec else ''}' expects {want_c} channels on axis "
                f"{c_axis} ({_shape_text(shape)}, {prep.layout}) but images give {have_c}: {hint}"
            )
        if prep.size is None and shape[h_axis] is not None and shape[w_axis] is not None:
            prep = Preprocess(
                size=(int(shape[h_axis]), int(shape[w_axis])), scale=prep.scale,
                mean=prep.mean, std=prep.std, layout=prep.layout, grayscale=prep.grayscale,
            )
        elif prep.size is not None:
            for axis, value in ((h_axis, prep.size[0]), (w_axis, prep.size[1])):
                if shape[axis] is not None and shape[axis] != value:
                    raise QvizError(
                        f"preprocess size {prep.size[0]}x{prep.size[1]} does not fit input "
                        f"'{spec.name if spec else ''}' {_shape_text(shape)}"
                    )
    elif shape:
        raise QvizError(
            f"input '{spec.name if spec else ''}' has shape {_shape_text(shape)}; images need "
            "a 4-D input (NCHW or NHWC)"
        )
    return _ImagePlan(prep, 1 if prep.grayscale else 3), (spec.name if spec else "input")


def _load_images(
    folder: Path,
    files: list[tuple[Path, int | None]],
    class_names: tuple[str, ...] | None,
    inputs: tuple[InputSpec, ...],
    preprocess: Preprocess | None,
) -> Dataset:
    plan, name = _plan_images(inputs, preprocess)
    chunks: list[_Chunk] = [_ImageChunk(f, name, plan) for f, _ in files]
    # Decode the first image now: an unreadable format or a shape mismatch shows at load.
    first = plan.apply(_read_image(files[0][0]))
    spec = inputs[0] if inputs else InputSpec(name, (None, *first.shape[1:]), np.dtype(np.float32))
    _check_array(_InMemory(first), spec, f"'{files[0][0].name}'", one_sample=False)
    labels = None
    if class_names is not None:
        labels = np.array([label for _, label in files], dtype=np.int64)
    classes = f" in {len(class_names)} classes" if class_names else ""
    description = f"folder {folder.name}/: {len(files)} images{classes}, {plan.prep.describe()}"
    return Dataset(
        inputs=(spec,), chunks=chunks, description=description, labels=labels,
        class_names=class_names,
    )


def _read_image(path: Path) -> np.ndarray:
    """An image as uint8 (or uint16) (H, W, C): Pillow when installed, else our PNG reader."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    try:
        if Image is not None:
            with Image.open(path) as im:
                im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else (
                    "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
                arr = np.asarray(im)
        else:
            if path.suffix.lower() not in PNG_SUFFIXES:
                raise QvizError(
                    f"reading {path.suffix} images needs Pillow: pip install pillow "
                    "(PNG files are read without it)"
                )
            arr = decode_png(path.read_bytes())
    except QvizError:
        raise
    except Exception as exc:  # Pillow raises many types; all mean "not a readable image"
        raise QvizError(f"cannot read image '{path.name}': {exc}") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


# ------------------------------------------------------------------------- PNG decoding

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def decode_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced PNG to uint8 (H, W, C), or uint16 for 16-bit images.

    A small pure numpy/zlib reader so that PNG data sets work without Pillow. Palette images
    are expanded to RGB(A); 1/2/4-bit grayscale is scaled to 0..255.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    palette: np.ndarray | None = None
    alpha: bytes | None = None
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            alpha = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError("PNG without header or image data")
    width, height, depth, color, _compression, _filter, interlace = header
    if interlace:
        raise QvizError("interlaced PNGs need Pillow: pip install pillow")
    if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"unsupported PNG colour type {color} / bit depth {depth}")
    channels = _PNG_CHANNELS[color]
    bits_per_pixel = channels * depth
    stride = (width * bits_per_pixel + 7) // 8
    bpp = max(1, bits_per_pixel // 8)  # filter unit: bytes per complete pixel
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size < height * (stride + 1):
        raise ValueError("truncated PNG image data")
    rows = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane, modulo 256
            cur = _unfilter_sub(line, bpp)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind == 3:  # Average: depends on the byte just decoded, so sequential
            cur = _unfilter_sequential(line, prev, bpp, paeth=False)
        elif kind == 4:  # Paeth
            cur = _unfilter_sequential(line, prev, bpp, paeth=True)
        else:
            raise ValueError(f"bad PNG filter type {kind}")
        out[y] = cur
        prev = cur
    if depth == 16:
        pixels = out.view(">u2").astype(np.uint16).reshape(height, width, channels)
    elif depth == 8:
        pixels = out.reshape(height, width, channels)
    else:
        bits = np.unpackbits(out, axis=1)[:, : width * depth].reshape(height, width, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        values = (bits * weights).sum(axis=2).astype(np.uint8)
        if color == 0:
            values = (values.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        pixels = values[:, :, None]
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG without a palette")
        index = pixels[:, :, 0]
        rgb = palette[np.minimum(index, len(palette) - 1)]
        if alpha is not None:
            table = np.full(len(palette), 255, np.uint8)
            table[: len(alpha)] = np.frombuffer(alpha[: len(palette)], np.uint8)
            pixels = np.concatenate([rgb, table[index][:, :, None]], axis=2)
        else:
            pixels = rgb
    return pixels


def _unfilter_sub(line: np.ndarray, bpp: int) -> np.ndarray:
    n = line.size
    pad = (-n) % bpp
    lanes = np.concatenate([line, np.zeros(pad, np.uint8)]).reshape(-1, bpp)
    return np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)[:n]


def _unfilter_sequential(
    line: np.ndarray, prev: np.ndarray, bpp: int, *, paeth: bool
) -> np.ndarray:
    cur = bytearray(line.tobytes())
    up = prev.tobytes()
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        above = up[i]
        if paeth:
            upper_left = up[i - bpp] if i >= bpp else 0
            p = left + above - upper_left
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
            pred = left if pa <= pb and pa <= pc else (above if pb <= pc else upper_left)
        else:
            pred = (left + above) >> 1
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


# -------------------------------------------------------------------------- validation


def _eager_scan(dataset: Dataset) -> None:
    """Look for NaN/Inf now when the data is small enough to read in passing."""
    chunks = dataset._chunks
    if any(isinstance(c, _ImageChunk) for c in chunks):
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
                _check_finite(np.asarray(arr.read(start, min(start + step, chunk.n))), name,
                              index + start)
        index += chunk.n
    for chunk in chunks:
        for arr in chunk.arrays.values():
            if isinstance(arr, _ZipStream):
                arr.close()


# ------------------------------------------------------------------------------- random


class _RandomArray(_LazyArray):
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
    arrays: dict[str, _LazyArray] = {
        spec.name: _RandomArray(spec, n, seed, i) for i, spec in enumerate(inputs)
    }
    return Dataset(
        inputs=inputs,
        chunks=[_Chunk(n, arrays, "random")],
        description=(
            f"RANDOM data: {n} samples of synthetic noise (seed {seed}), not real inputs; "
            "ranges and errors measured on it do not describe real use"
        ),
        is_random=True,
    )
