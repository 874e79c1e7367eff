"""Where a large Q/DQ graph's tensors live: a temporary folder while qviz uses it, and the
``.onnx`` (+ ``.onnx.data``) files it is exported as.

A Q/DQ graph built from a model whose weights are in files (``LoadedModel.data_dir``) never
holds its weights in memory either. :class:`QdqFolder` is a temporary folder with one data
file: the builder appends each quantized weight to it as soon as it is made (and drops it),
and at the end the float tensors the graph still reads from the source model (embeddings,
norms, layers kept in float) are copied there, tensor by tensor. ONNX Runtime then builds its
sessions from the small graph plus that folder, reading the weights from disk as from a model
file it opens itself (measured: giving ORT the data from memory instead doubles its peak
while the session is built). Hard links would avoid the copy but make ``onnx.checker`` refuse
the user's own model file (a "hardlink attack") for as long as they exist.

:func:`save_qdq` writes the export: one self-contained ``.onnx`` when the source model had no
external data and the result fits in one protobuf, else ``NAME.onnx`` + ``NAME.onnx.data``
(every tensor of at least 1 KiB in the data file, page-aligned), which plain ONNX Runtime
loads. Both files are written under temporary names and renamed into place only when
complete: a full disk leaves nothing behind and says so in one line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qviz.core.files.atomic import atomic_path
from qviz.core.model.external_data import (
    DataFileWriter,
    copy_tensor,
    disk_full_error,
    read_tensor,
    uses_external,
)
from qviz.core.model.onnx_graph import PROTOBUF_LIMIT, all_tensors

__all__ = [
    "DATA_FILE",
    "EXTERNAL_MIN_BYTES",
    "INLINE_NEW_BYTES",
    "QdqFolder",
    "checkable",
    "new_tensor_bytes",
    "save_qdq",
]

#: The data file of a Q/DQ graph's temporary folder.
DATA_FILE = "qviz_qdq.onnx.data"
#: New tensors at least this large go to the data file (as onnx.save does); smaller ones (scales
#: of a per-tensor quantization, zero points, shapes) stay in the graph.
EXTERNAL_MIN_BYTES = 1024
#: A graph whose new (quantized) tensors total at most this keeps them in the graph and reads
#: its float tensors from the source model's folder: nothing is written or copied. That is
#: every per-layer measurement of a sensitivity analysis or a mixed-precision search, where
#: most of the model stays float; quantizing most of a large model takes the folder.
INLINE_NEW_BYTES = 256 << 20
#: Tensors at least this large go to an exported model's data file.
_EXPORT_MIN_BYTES = 1024
# Room left below protobuf's limit for the graph itself when deciding on one file.
_ONE_FILE_MARGIN = 64 << 20


class QdqFolder:
    """The temporary folder of one Q/DQ graph: its data file while it is being written, and
    the folder sessions read from afterwards. Removed when the QdqModel holding it goes."""

    def __init__(self, source_dir: Path) -> None:
        self.source_dir = source_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="qviz-qdq-")
        self.path = Path(self._tmp.name)
        self._file = open(self.path / DATA_FILE, "wb")
        self._writer = DataFileWriter(self._file, DATA_FILE)
        # The tensors this folder wrote. Not told apart by their file's name: a source that is
        # itself such a folder (a rescaled model's) has a data file of the same name.
        self._own: set[str] = set()

    def add(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """Move a new inline tensor's data to the data file when it is large."""
        if tensor.ByteSize() >= EXTERNAL_MIN_BYTES:
            try:
                self._writer.write_inline(tensor)
            except OSError as exc:
                self.close()
                raise disk_full_error(exc, self.path / DATA_FILE) from exc
            self._own.add(tensor.name)
        return tensor

    def read(self, tensor: onnx.TensorProto) -> np.ndarray:
        """A tensor this folder wrote, read back (memory-mapped) while it is still open."""
        assert tensor.name in self._own, tensor.name
        self._file.flush()
        return read_tensor(tensor, self.path)

    def finish(self, model: onnx.ModelProto) -> None:
        """Copy every tensor of `model` that still refers to the source model into this
        folder's data file, then close the file."""
        try:
            for tensor in all_tensors(model.graph):
                if uses_external(tensor) and tensor.name not in self._own:
                    copy_tensor(tensor, self.source_dir, self._writer)
            self._file.flush()
        except OSError as exc:
            self.close()
            raise disk_full_error(exc, self.path / DATA_FILE) from exc
        finally:
            self._file.close()

    def write_graph(self, model: onnx.ModelProto) -> Path:
        """Save the graph into the folder beside its data (``qdq.onnx``): a model file ONNX's
        checker and ONNX Runtime can open by path (both resolve data files beside it)."""
        path = self.path / "qdq.onnx"
        try:
            path.write_bytes(model.SerializeToString())
        except OSError as exc:
            raise disk_full_error(exc, path) from exc
        return path

    def close(self) -> None:
        """Remove the folder now (also happens when the object is dropped)."""
        if not self._file.closed:
            self._file.close()
        self._tmp.cleanup()


def new_tensor_bytes(shapes_and_bits: list[tuple[tuple[int, ...], float]]) -> int:
    """Bytes of the quantized weights a Q/DQ graph adds (shape, bits per value each)."""
    total = 0.0
    for shape, bits in shapes_and_bits:
        n = 1
        for d in shape:
            n *= int(d)
        total += n * bits / 8
    return int(total)


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy ``onnx.checker`` can check without the data files: every external
    initializer becomes a graph input of the same type and shape (the checker would look
    for the files in the working directory)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = []
    for tensor in graph.initializer:
        if uses_external(tensor):
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                   list(tensor.dims))
            )
        else:
            keep.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out


def _fits_one_file(model: onnx.ModelProto, data_dir: Path | None) -> bool:
    if data_dir is None:
        return model.ByteSize() < PROTOBUF_LIMIT - _ONE_FILE_MARGIN
    external = sum(
        int(dict((e.key, e.value) for e in t.external_data).get("length", 0) or 0)
        for t in all_tensors(model.graph)
        if uses_external(t)
    )
    return model.ByteSize() + external < PROTOBUF_LIMIT - _ONE_FILE_MARGIN


def save_qdq(
    model: onnx.ModelProto,
    data_dir: Path | None,
    path: str | Path,
    *,
    external: bool,
) -> list[Path]:
    """Write `model` (its external tensors read from `data_dir`) to `path`, atomically.

    ``external`` asks for ``.onnx`` + ``.onnx.data``; a model too large for one protobuf is
    written that way whatever it says. Returns the files written.
    """
    target = Path(path)
    if not external and _fits_one_file(model, data_dir):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for tensor in all_tensors(out.graph):
            if uses_external(tensor):
                tensor.CopyFrom(numpy_helper.from_array(read_tensor(tensor, data_dir), tensor.name))
        try:
            data = out.SerializeToString()
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise disk_full_error(exc, target) from exc
        return [target]
    data_path = target.with_name(target.name + ".data")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        # The data file is renamed into place first, the model last: a model file never
        # names a data file that is not complete.
        with atomic_path(target) as tmp_model, atomic_path(data_path) as tmp_data:
            with open(tmp_data, "wb") as f:
                writer = DataFileWriter(f, data_path.name)
                for tensor in all_tensors(out.graph):
                    if uses_external(tensor) or tensor.ByteSize() >= _EXPORT_MIN_BYTES:
                        copy_tensor(tensor, data_dir, writer)
            tmp_model.write_bytes(out.SerializeToString())
    except OSError as exc:
        raise disk_full_error(exc, target) from exc
    return [target, data_path]
