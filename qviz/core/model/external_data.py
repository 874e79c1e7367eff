"""External tensor data: checked up front, read lazily, written tensor by tensor.

Models past protobuf's 2 GB limit keep their weights in files beside the ``.onnx``
(``external_data`` entries: location, offset, length). qviz never loads them into the graph:
the graph stays a small protobuf whose initializers *refer* to the data, and

* :func:`check_external_data` makes sure every reference can be read (a missing or short
  file is one clear error at load time, not a traceback later);
* :func:`read_tensor` returns one tensor's values memory-mapped through onnx-ir (nothing is
  copied for float32; a float16/bfloat16 weight is converted alone), so analysing a model
  costs about its largest tensor, whatever its size;
* :class:`DataFileWriter` appends tensors to one data file, page-aligned, each written and
  dropped in turn; :func:`copy_tensor` streams a referenced tensor from its file into it.
  Q/DQ graphs, exports and large inline models moved out of memory are written this way.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import onnx
import onnx_ir as ir
from onnx import external_data_helper, helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.files.outputs import write_error
from qviz.core.model.onnx_graph import all_tensors

__all__ = [
    "ALIGN",
    "DataFileWriter",
    "check_external_data",
    "copy_tensor",
    "disk_full_error",
    "external_tensors",
    "inline_small",
    "load_all",
    "location_of",
    "read_tensor",
    "tensor_nbytes",
    "total_tensor_bytes",
    "uses_external",
]

#: External tensors start at multiples of this: memory-mapping friendly (one page).
ALIGN = 4096
_COPY_CHUNK = 64 << 20


def uses_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the graph (and its subgraphs) whose data lies in a file."""
    return (t for t in all_tensors(model.graph) if uses_external(t))


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def location_of(tensor: onnx.TensorProto) -> str:
    """The data file an external tensor names (relative to the model's folder)."""
    return _entries(tensor).get("location", "")


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's values as ONNX stores them (4-bit types: two per byte)."""
    n = math.prod(int(d) for d in tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                            onnx.TensorProto.FLOAT4E2M1):
        return (n + 1) // 2
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    return n * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def total_tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer's values, in memory or in files."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def _safe_location(location: str, tensor: str) -> str:
    """ONNX (and ONNX Runtime) only read data files inside the model's folder."""
    if not location:
        raise QvizError(f"tensor '{tensor}' is marked external but names no data file")
    posix = PurePosixPath(location.replace("\\", "/"))
    if posix.is_absolute() or os.path.isabs(location) or ".." in posix.parts:
        raise QvizError(
            f"tensor '{tensor}' names its data file as '{location}': external data must lie "
            "in the model's folder (a relative path without '..')"
        )
    return location


def check_external_data(model: onnx.ModelProto, base_dir: Path, model_name: str) -> None:
    """Every external reference of ``model`` names a readable file in ``base_dir`` that holds
    the referenced bytes. Raises one QvizError line for the first one that does not."""
    sizes: dict[str, int] = {}
    for tensor in external_tensors(model):
        entries = _entries(tensor)
        location = _safe_location(entries.get("location", ""), tensor.name)
        if location not in sizes:
            target = base_dir / location
            if not target.is_file():
                raise QvizError(
                    f"external data file '{location}' (tensor '{tensor.name}') is missing; "
                    f"it must lie beside {model_name}"
                )
            sizes[location] = target.stat().st_size
        try:
            offset = int(entries.get("offset", 0) or 0)
            length = int(entries["length"]) if entries.get("length") else None
        except ValueError:
            raise QvizError(
                f"tensor '{tensor.name}' has a damaged external data reference"
            ) from None
        expected = tensor_nbytes(tensor)
        if length is not None and length != expected:
            raise QvizError(
                f"tensor '{tensor.name}' refers to {length} bytes of '{location}' but its "
                f"shape and type need {expected}: the model and its data do not belong together"
            )
        end = offset + expected
        if end > sizes[location]:
            raise QvizError(
                f"external data file '{location}' is too short: tensor '{tensor.name}' needs "
                f"bytes up to {end:,}, the file has {sizes[location]:,} (cut off while copying?)"
            )


def inline_small(model: onnx.ModelProto, base_dir: Path, limit: int) -> int:
    """Read external tensors under `limit` bytes into the graph; returns how many.

    Shapes, axes and other small constants must be in the graph: ONNX's (and ONNX Runtime's)
    shape inference cannot read them from files, and some exporters put every tensor in the
    data file. Large weights stay where they are."""
    moved = 0
    for tensor in external_tensors(model):
        if tensor_nbytes(tensor) < limit:
            tensor.CopyFrom(numpy_helper.from_array(read_tensor(tensor, base_dir), tensor.name))
            moved += 1
    return moved


def load_all(model: onnx.ModelProto, base_dir: Path, model_name: str) -> None:
    """Read every external tensor of ``model`` into the graph, after
    :func:`check_external_data`. Only for graphs whose every value is needed at once (a
    model quantized elsewhere, whose float original is derived from its values)."""
    if next(external_tensors(model), None) is None:
        return
    check_external_data(model, base_dir, model_name)
    try:
        external_data_helper.load_external_data_for_model(model, str(base_dir))
    except (OSError, ValueError) as exc:
        raise QvizError(f"cannot read the external data of '{model_name}': {exc}") from exc


def read_tensor(tensor: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    """The values of ``tensor`` in their stored numpy type. External data is memory-mapped
    (onnx-ir), read-only; inline data is decoded from the protobuf."""
    if not uses_external(tensor):
        return numpy_helper.to_array(tensor)
    if base_dir is None:
        raise QvizError(f"tensor '{tensor.name}' is external but the model has no folder")
    lazy = ir.serde.deserialize_tensor(tensor, str(base_dir))
    try:
        return lazy.numpy()
    except OSError as exc:
        raise QvizError(
            f"cannot read tensor '{tensor.name}' from '{location_of(tensor)}': "
            f"{exc.strerror or exc}"
        ) from exc


def disk_full_error(exc: OSError, target: Path) -> QvizError:
    """One line for a failed write (a full disk says so), worded as every other write's;
    the callers remove what they had written."""
    return write_error(target, exc, existed=False)


class DataFileWriter:
    """Appends tensors to one external data file (opened by the caller), page-aligned, and
    turns their TensorProtos into references to it (``location`` = the file's final name)."""

    def __init__(self, stream: BinaryIO, location: str) -> None:
        self._stream = stream
        self.location = location
        self.offset = 0

    def _start(self) -> int:
        pad = -self.offset % ALIGN
        if pad:
            self._stream.write(b"\0" * pad)
            self.offset += pad
        return self.offset

    def _refer(self, tensor: onnx.TensorProto, start: int, length: int) -> None:
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "string_data"):
            tensor.ClearField(field)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(start)),
                           ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def write_bytes(self, tensor: onnx.TensorProto, data: bytes | memoryview) -> None:
        """Write ``data`` (the tensor's raw bytes) and make ``tensor`` refer to it."""
        start = self._start()
        self._stream.write(data)
        self.offset += len(data)
        self._refer(tensor, start, len(data))

    def write_inline(self, tensor: onnx.TensorProto) -> None:
        """Move an inline tensor's data into the file."""
        raw = tensor.raw_data if tensor.HasField("raw_data") else \
            numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
        self.write_bytes(tensor, raw)

    def copy_from(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        """Stream an external tensor's bytes from its file under ``base_dir`` into this one."""
        entries = _entries(tensor)
        source = base_dir / _safe_location(entries.get("location", ""), tensor.name)
        offset = int(entries.get("offset", 0) or 0)
        length = tensor_nbytes(tensor)
        start = self._start()
        with open(source, "rb") as src:
            src.seek(offset)
            left = length
            while left > 0:
                chunk = src.read(min(_COPY_CHUNK, left))
                if not chunk:
                    raise QvizError(f"external data file '{source.name}' ended early")
                self._stream.write(chunk)
                left -= len(chunk)
        self.offset += length
        self._refer(tensor, start, length)


def copy_tensor(tensor: onnx.TensorProto, base_dir: Path | None, writer: DataFileWriter) -> None:
    """Put ``tensor``'s data into ``writer``'s file, whether it is inline or external."""
    if uses_external(tensor):
        if base_dir is None:
            raise QvizError(f"tensor '{tensor.name}' is external but the model has no folder")
        writer.copy_from(tensor, base_dir)
    else:
        writer.write_inline(tensor)


def copy_file(source: Path, target: Path) -> None:
    """A plain file copy (the kernel's, where it can)."""
    shutil.copyfile(source, target)
