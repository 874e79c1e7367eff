"""Arrays on disk read by ranges of samples: memory-mapped ``.npy`` files and stored ``.npz``
members, compressed ``.npz`` members decompressed as a stream. Nothing is loaded whole."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from qviz.core.errors import QvizError


class LazyArray:
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


class InMemory(LazyArray):
    """A numpy array or memmap; slices are views, copies happen only when casting a batch."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def read_all(self) -> np.ndarray:
        return np.asarray(self.array)


class AddSampleAxis(LazyArray):
    """One sample stored without the sample axis: seen as a leading axis of length 1."""

    def __init__(self, inner: LazyArray) -> None:
        self.inner = inner
        self.shape = (1, *inner.shape)
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.inner.read_all())[None][start:stop]


class ZipStream(LazyArray):
    """A compressed ``.npz`` member, decompressed sequentially (reopened to go backwards)."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.member = path, member
        self.shape, self.dtype = shape, dtype
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream: IO[bytes] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._pos = 0

    def _open(self) -> None:
        self.close()
        try:
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(self.member)
            version = np.lib.format.read_magic(self._stream)
            read_npy_header(self._stream, version)
        except Exception as exc:  # the file changed or is damaged: zipfile/numpy errors
            self.close()
            raise self._damaged(exc) from exc
        self._pos = 0

    def _damaged(self, exc: BaseException) -> QvizError:
        return QvizError(f"data file '{self.path.name}' is damaged ({self.member}: {_reason(exc)})")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._stream = self._zip = None

    def _read_exact(self, n: int) -> bytes:
        assert self._stream is not None
        try:
            data = self._stream.read(n)
        except Exception as exc:  # a bad CRC or deflate stream: zipfile.BadZipFile, zlib.error
            self.close()
            raise self._damaged(exc) from exc
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


def read_npy_header(
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


def open_npy(path: Path) -> LazyArray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise QvizError(
                f"'{path.name}' holds Python objects (a pickle); qviz reads numeric arrays only"
            ) from exc
        raise QvizError(f"cannot read data file '{path.name}': {exc}") from exc
    except EOFError:
        raise QvizError(f"data file '{path.name}' is empty or truncated") from None
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    except Exception as exc:  # numpy parses the header with ast/tokenize: any error there
        raise QvizError(f"'{path.name}' is not a readable .npy array ({_reason(exc)})") from exc
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise QvizError(f"'{path.name}' is an .npz archive; name it .npz")
    return InMemory(array)


def open_npz(path: Path) -> dict[str, LazyArray]:
    """Each member of an ``.npz``: memory-mapped when stored, streamed when compressed."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
    except zipfile.BadZipFile as exc:
        raise QvizError(f"cannot read data file '{path.name}': not an .npz archive") from exc
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    arrays: dict[str, LazyArray] = {}
    try:
        with open(path, "rb") as f:
            for info in infos:
                key = info.filename[: -len(".npy")]
                arrays[key] = _open_member(path, f, info)
    except QvizError:
        raise
    except OSError as exc:
        raise QvizError(f"cannot read data file '{path.name}': {exc.strerror or exc}") from exc
    except Exception as exc:  # zipfile, zlib and numpy's header parser raise many types
        raise QvizError(f"cannot read data file '{path.name}': {_reason(exc)}") from exc
    return arrays


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _open_member(path: Path, f: IO[bytes], info: zipfile.ZipInfo) -> LazyArray:
    where = f"'{path.name}' ({info.filename})"
    if info.compress_type != zipfile.ZIP_STORED:
        with zipfile.ZipFile(path) as zf, zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            shape, fortran, dtype = read_npy_header(member, version)
        _refuse_objects(dtype, where)
        if fortran and len(shape) > 1:
            # Column-major data cannot be streamed by rows; such files are rare and small.
            with np.load(path, allow_pickle=False) as npz:
                return InMemory(npz[info.filename[:-4]])
        return ZipStream(path, info.filename, shape, dtype)
    # Stored member: find its bytes through the local file header, then memory-map them.
    f.seek(info.header_offset)
    header = f.read(30)
    signature, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
    if signature != 0x04034B50:
        raise ValueError("corrupt zip local header")
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = read_npy_header(f, version)
    _refuse_objects(dtype, where)
    offset = f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{info.filename} is truncated")
    if count == 0:
        return InMemory(np.zeros(shape, dtype))
    if not shape:  # a scalar: np.memmap would give it shape (1,)
        f.seek(offset)
        return InMemory(np.frombuffer(f.read(dtype.itemsize), dtype=dtype).reshape(()))
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                   order="F" if fortran else "C")
    return InMemory(mm)




class Repeated(LazyArray):
    """One value given once (without a sample axis), seen as the same value for n samples."""

    def __init__(self, value: np.ndarray, n: int) -> None:
        self.value = np.asarray(value)
        self.shape = (n, *self.value.shape)
        self.dtype = self.value.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        count = max(0, min(stop, self.shape[0]) - start)
        return np.broadcast_to(self.value, (count, *self.value.shape))

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes)
