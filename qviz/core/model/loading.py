"""Model loading: every model becomes one float ONNX graph that ONNX Runtime can run.

``load_model`` accepts an ``.onnx`` file (external data beside it), a TorchScript file, a
``torch.export`` program (``.pt2``) or a ``package.module:factory`` spec; PyTorch models are
exported to ONNX first (``qviz.core.model.torch_import``, the only place torch is imported) and then
take the same path as ``.onnx`` files:

1. parse and check the file (``onnx.checker``, full check when the model fits in memory);
2. import graphs that are already quantized (``qviz.core.imported``): their Q/DQ pairs become
   an "imported" configuration of the float original (given, or derived from the quantized
   model), which is what the following steps load;
3. upgrade opsets older than 13 to 17 with ``onnx.version_converter`` (13 is the first opset
   whose QuantizeLinear/DequantizeLinear take a per-channel ``axis``; 17 is widely supported by
   runtimes and converts cleanly from 7..12). Opsets 13 and newer are kept as they are;
4. turn ``Constant`` nodes into initializers so constant weights count as weights;
5. run shape inference so activation shapes (and ranks, for channel axes) are known;
6. find the quantizable layers (``qviz.core.model.layers``).

The checks (1) are in ``qviz.core.model.checks``, the rewrites (3 to 5) in
``qviz.core.model.rewrites``; graph-level rewrites (3 and 5) run on a copy whose large
tensors are replaced by placeholders (``qviz.core.model.onnx_graph``), so models above
protobuf's 2 GB limit still convert and weights are not serialized again for every step.

Weights are never loaded into the graph (except a quantized model's, whose float original is
derived from its values): external data stays in its files (checked for
presence and length at load time), the graph refers to it, and :meth:`LoadedModel.weight`
memory-maps one tensor at a time (``qviz.core.model.external_data``). A file whose weights
are inline and large is laid out the same way in a temporary folder, and a PyTorch export
keeps its temporary folder for as long as the model is open: every ONNX Runtime session is
built from the small graph plus that folder (``LoadedModel.data_dir``).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx

from qviz.core.errors import QvizError, first_line
from qviz.core.imported import importer
from qviz.core.imported.types import ImportedQuantization
from qviz.core.model.activation_axes import activation_axes
from qviz.core.model.checks import check_model
from qviz.core.model.external_data import (
    DataFileWriter,
    check_external_data,
    disk_full_error,
    external_tensors,
    inline_small,
    load_all,
    read_tensor,
    uses_external,
)
from qviz.core.model.hashing import file_sha256
from qviz.core.model.layers import Layer, find_layers
from qviz.core.model.onnx_graph import all_nodes, node_name
from qviz.core.model.rewrites import constants_to_initializers, infer_shapes, upgrade_old_opset

__all__ = [
    "InputSpec",
    "Layer",
    "LoadedModel",
    "TensorKind",
    "is_torch_spec",
    "load_model",
]

TORCHSCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".jit", ".torchscript"})
EXPORT_SUFFIXES = frozenset({".pt2"})
ONNX_SUFFIXES = frozenset({".onnx"})

# "package.module:factory" (also "module:factory"); never a Windows drive path like "C:\x".
_TORCH_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_SUBGRAPH_OPS = ("If", "Loop", "Scan")
#: Inline weights beyond this many bytes are moved to a temporary data file at load time, so
#: the graph every session is built from stays small (sessions then read the weights from
#: disk, as for a model saved with external data).
INLINE_LIMIT_BYTES = 256 << 20
#: Tensors at least this large stay in (or are moved to) data files; smaller external ones
#: are read into the graph at load time (shape inference needs their values).
_EXTERNAL_MIN_BYTES = 1024


class TensorKind(Enum):
    """What a quantizable tensor is: a constant weight or a runtime activation."""

    WEIGHT = "weight"
    ACTIVATION = "activation"


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``None`` in ``shape`` marks a dynamic dimension (batch, length...).

    ``dim_names`` holds the symbolic name of each dynamic dimension ("batch", "N"...; None
    where the file gives none), or is empty when unknown. ``has_shape`` is False when the
    model declares no shape at all (``shape`` is then empty, like a scalar's).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    # Names are metadata: two inputs of equal shape and type are equal.
    dim_names: tuple[str | None, ...] = field(default=(), compare=False)
    has_shape: bool = True


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A float ONNX graph ready to run, plus what qviz knows about it.

    Equality is identity: two loads of one file are different objects holding protobufs
    that are expensive to compare.

    ``model`` is the graph; initializers whose data lies in files refer to them relative to
    ``data_dir`` (None when every tensor is inline). Build ONNX Runtime sessions with
    ``data_dir=model.data_dir`` and read weights with :meth:`weight`, never by loading the
    external data into the graph. ``keepalive`` holds a temporary folder the data lives in
    (a PyTorch export, or a large inline model moved out of memory) for the model's lifetime.
    """

    model: onnx.ModelProto
    source: Path
    sha256: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    layers: tuple[Layer, ...]
    notes: tuple[str, ...] = ()
    data_dir: Path | None = None
    keepalive: object = field(default=None, repr=False, compare=False)
    #: The quantization of a model quantized elsewhere (``model`` is then its float original).
    imported: ImportedQuantization | None = None
    _initializers: Mapping[str, onnx.TensorProto] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _channel_axes: Mapping[str, int | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        inits = {t.name: t for t in self.model.graph.initializer}
        object.__setattr__(self, "_initializers", MappingProxyType(inits))
        object.__setattr__(
            self, "_channel_axes", MappingProxyType(activation_axes(self.model, self.layers))
        )

    def __reduce__(self) -> tuple[type[LoadedModel], tuple[object, ...]]:
        # Compute backends ship the model to worker processes; the lookup tables (read-only
        # proxies, which do not pickle) are rebuilt from the proto there.
        return (
            LoadedModel,
            (self.model, self.source, self.sha256, self.inputs, self.outputs, self.layers,
             self.notes),
        )

    def weight(self, name: str) -> np.ndarray:
        """The initializer ``name`` as a float32 array (float16/bfloat16/float64 are converted).

        External float32 data is memory-mapped and read-only: only the pages a computation
        touches are read, and nothing stays in memory once the array is dropped."""
        return np.asarray(self.stored(name), dtype=np.float32)

    def stored(self, name: str) -> np.ndarray:
        """The initializer ``name`` in its stored type (memory-mapped when external)."""
        try:
            tensor = self._initializers[name]
        except KeyError:
            raise KeyError(f"no initializer named {name!r} in the model") from None
        return read_tensor(tensor, self.data_dir)

    @property
    def has_external_data(self) -> bool:
        """True when some weights are read from files (``data_dir``) rather than the graph."""
        return self.data_dir is not None

    def activation_channel_axis(self, tensor: str) -> int | None:
        """The channel axis of activation ``tensor``, non-negative, or None when unknown.

        1 for inputs (and outputs) of Conv/ConvTranspose (NC...), the last axis for the
        left operand of Gemm/MatMul (its features), axis -2 for the right operand of a
        MatMul between activations (the axis it is reduced along; the last axis there is
        often a variable sequence length). None if the consumers disagree or the rank is
        not known.
        """
        return self._channel_axes.get(tensor)


def is_torch_spec(text: str) -> bool:
    """True for a ``package.module:factory`` model spec."""
    return bool(_TORCH_SPEC.match(text))


def load_model(
    path: str | Path,
    *,
    sample: Mapping[str, np.ndarray] | None = None,
    state_dict: Path | None = None,
    float_model: str | Path | None = None,
) -> LoadedModel:
    """Load ``path`` as a float ONNX graph; see the module docstring for the steps.

    ``sample`` (input name -> one batch, leading axis 1) is needed to export PyTorch models
    (a ``.pt2`` program may bring its own example inputs); ``state_dict`` is a weights file
    for a ``package.module:factory`` model; ``float_model`` is the float original of a
    quantized ``.onnx`` file (derived from it when not given). Raises QvizError for anything
    wrong with the files.
    """
    text = str(path)
    p = Path(path)
    if float_model is not None and p.suffix.lower() not in ONNX_SUFFIXES:
        raise QvizError("a float original goes with a quantized .onnx model only")
    if not p.exists() and is_torch_spec(text):
        return _load_torch(text, sample=sample, state_dict=state_dict)
    if not p.exists():
        raise QvizError(f"model file not found: {p}")
    if p.is_dir():
        raise QvizError(f"model path is a folder, not a file: {p}")
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        if state_dict is not None:
            raise QvizError("a state dict only goes with a package.module:factory model")
        return load_onnx(p, float_model=None if float_model is None else Path(float_model))
    if suffix in TORCHSCRIPT_SUFFIXES or suffix in EXPORT_SUFFIXES:
        return _load_torch(p, sample=sample, state_dict=state_dict)
    raise QvizError(
        f"unsupported model file type '{p.suffix or p.name}': give an .onnx file, TorchScript "
        "(.pt/.pth/.ts), a torch.export program (.pt2) or package.module:factory"
    )


def _load_torch(
    spec: str | Path, *, sample: Mapping[str, np.ndarray] | None, state_dict: Path | None
) -> LoadedModel:
    # Imported here so that ONNX users never import torch (nor need it installed).
    from qviz.core.model import torch_import as torch_import

    # The exported weights stay in the temporary folder (they may be far beyond 2 GB); the
    # LoadedModel keeps it, and it is removed when the model is dropped.
    tmp = tempfile.TemporaryDirectory(prefix="qviz-export-")
    try:
        exported = torch_import.export_to_onnx(
            spec, Path(tmp.name), sample=sample, state_dict=state_dict
        )
        return load_onnx(
            exported.onnx_path,
            source=exported.source,
            sha256=exported.sha256,
            extra_notes=exported.notes,
            keepalive=tmp,
        )
    except BaseException:
        tmp.cleanup()
        raise


def load_onnx(
    path: Path,
    *,
    source: Path | None = None,
    sha256: str | None = None,
    extra_notes: tuple[str, ...] = (),
    keepalive: object = None,
    float_model: Path | None = None,
) -> LoadedModel:
    """Load an ``.onnx`` file; ``source``/``sha256`` override what is recorded (torch exports);
    ``float_model``: the float original of a quantized file.

    External data is checked (present, long enough) but not read, except for a quantized
    file (its float original is derived from its values). ``keepalive`` is held by the
    LoadedModel (the temporary folder of a PyTorch export)."""
    path = Path(path)
    digest = sha256 if sha256 is not None else file_sha256(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise QvizError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    except Exception as exc:  # DecodeError mostly; onnx wraps some parse failures differently
        raise QvizError(
            f"'{path.name}' is not a valid ONNX file (cannot be parsed: truncated or not ONNX)"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise QvizError(f"'{path.name}' is not a valid ONNX file (it holds no graph)")
    try:
        if importer.is_quantized(model):
            load_all(model, path.parent, path.name)
            return _load_imported(model, path, digest, float_model, checked_from=path)
        if float_model is not None:
            raise QvizError(f"'{path.name}' is not quantized: a float original goes with a "
                            "quantized model")
        data_dir: Path | None = None
        if _has_external(model):
            check_external_data(model, path.parent, path.name)
            data_dir = path.parent
        notes = check_model(model, path)
        if data_dir is not None:
            inline_small(model, data_dir, _EXTERNAL_MIN_BYTES)
            if not _has_external(model):
                data_dir = None
        model, notes = _rewrite(model, [*extra_notes, *notes])
    except QvizError:
        raise
    except Exception as exc:
        # A damaged file can parse yet hold what no valid model does (text fields that are
        # not UTF-8, impossible attribute types): it is the file's fault, said in one line.
        raise QvizError(
            f"'{path.name}' is not a usable ONNX model ({type(exc).__name__}: "
            f"{first_line(exc)})"
        ) from exc
    if data_dir is None and _inline_bytes(model) > INLINE_LIMIT_BYTES:
        keepalive, data_dir = _move_out(model, keepalive)
    return _finish(
        model, notes, source=source or path, digest=digest, data_dir=data_dir,
        keepalive=keepalive,
    )


def _has_external(model: onnx.ModelProto) -> bool:
    return next(external_tensors(model), None) is not None


def _inline_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _move_out(model: onnx.ModelProto, keepalive: object) -> tuple[object, Path]:
    """Write the large inline initializers to a data file in a temporary folder and make
    them refer to it: sessions then read them from disk, and the graph stays small."""
    tmp = tempfile.TemporaryDirectory(prefix="qviz-model-")
    folder = Path(tmp.name)
    target = folder / "weights.onnx.data"
    try:
        with open(target, "wb") as f:
            writer = DataFileWriter(f, target.name)
            for tensor in model.graph.initializer:
                if not uses_external(tensor) and tensor.ByteSize() >= _EXTERNAL_MIN_BYTES:
                    writer.write_inline(tensor)
    except OSError as exc:
        tmp.cleanup()
        raise disk_full_error(exc, target) from exc
    # Both the export folder (if any) and this one live as long as the model.
    owner = tmp if keepalive is None else (keepalive, tmp)
    return owner, folder


def from_proto(
    model: onnx.ModelProto, *, source: Path | str = "<memory>", sha256: str = ""
) -> LoadedModel:
    """Build a LoadedModel from an in-memory graph (tests, generated models).

    Runs the same steps as :func:`load_onnx` except reading files; the proto is copied.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    digest = sha256 or hashlib.sha256(copy.SerializeToString()).hexdigest()
    if importer.is_quantized(copy):
        return _load_imported(copy, Path(source), digest, None, checked_from=None)
    copy, notes = _rewrite(copy, check_model(copy, None))
    return _finish(copy, notes, source=Path(source), digest=digest)


def _load_imported(
    quantized: onnx.ModelProto,
    path: Path,
    digest: str,
    float_model: Path | None,
    *,
    checked_from: Path | None,
) -> LoadedModel:
    """A quantized model: its float original (loaded, or derived from it) with the imported
    pairs attached (``qviz.core.imported``). Ops with no Q/DQ form are named before the
    graph is checked: that is the clearer line."""
    qf = importer.read_quantized(quantized)
    notes = check_model(quantized, checked_from)
    if float_model is None:
        derived, derive_notes = importer.derive_float(qf)
        derived, notes = _rewrite(derived, [*notes, *derive_notes])
        # The derived original's weights are laid out on disk like a large inline model's.
        keepalive, data_dir = (
            _move_out(derived, None) if _inline_bytes(derived) > INLINE_LIMIT_BYTES
            else (None, None)
        )
        base = _finish(
            derived, notes, source=path, digest=digest, data_dir=data_dir, keepalive=keepalive
        )
        float_digest = None
    else:
        try:
            base = load_onnx(float_model)
        except QvizError as exc:
            raise QvizError(f"float original: {exc}") from None
        if base.imported is not None:
            raise QvizError(f"the float original '{float_model.name}' is itself quantized")
        float_digest = base.sha256
    imported, layers = importer.attach(
        qf, path, float_model, base.model, base.layers, base.data_dir
    )
    return LoadedModel(
        model=base.model,
        source=path,
        sha256=importer.combined_sha256(digest, float_digest),
        inputs=base.inputs,
        outputs=base.outputs,
        layers=layers,
        notes=(*base.notes, *imported.notes),
        data_dir=base.data_dir,
        keepalive=base.keepalive,
        imported=imported,
    )


def _rewrite(model: onnx.ModelProto, notes: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """Steps 3 to 5: opset upgrade, Constant nodes to initializers, shape inference."""
    model, upgraded = upgrade_old_opset(model)
    notes = [*notes, *upgraded, *constants_to_initializers(model.graph)]
    notes += infer_shapes(model)
    return model, notes


def _finish(
    model: onnx.ModelProto,
    notes: list[str],
    *,
    source: Path,
    digest: str,
    data_dir: Path | None = None,
    keepalive: object = None,
) -> LoadedModel:
    """Step 6, layer discovery, and what qviz records about the model."""
    graph = model.graph
    init_shapes = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    discovery = find_layers(graph, init_shapes, torch_names=_from_torch(model))
    notes += discovery.notes
    notes += _subgraph_notes(graph)
    # Old (IR < 4) models list initializers among the inputs too; those are weights.
    inputs = tuple(_input_spec(vi) for vi in graph.input if vi.name not in init_shapes)
    return LoadedModel(
        model=model,
        source=source,
        sha256=digest,
        inputs=inputs,
        outputs=tuple(o.name for o in graph.output),
        layers=discovery.layers,
        notes=tuple(notes),
        data_dir=data_dir,
        keepalive=keepalive,
    )


def _from_torch(model: onnx.ModelProto) -> bool:
    """True when PyTorch wrote the graph: its parameter names are then module paths."""
    if model.producer_name.lower().startswith("pytorch"):
        return True
    return any(
        p.key.startswith("pkg.torch.") for n in model.graph.node for p in n.metadata_props
    )


# ------------------------------------------------------------------------------ describing


def _input_spec(vi: onnx.ValueInfoProto) -> InputSpec:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise QvizError(f"model input '{vi.name}' is not a tensor (sequences/maps unsupported)")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, TypeError) as exc:
        raise QvizError(f"model input '{vi.name}' has an unsupported element type") from exc
    shape: tuple[int | None, ...] = ()
    names: tuple[str | None, ...] = ()
    if tt.HasField("shape"):
        # A negative size (-1) is how some exporters spell a dynamic dimension.
        shape = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else None
            for d in tt.shape.dim
        )
        names = tuple(
            d.dim_param if d.HasField("dim_param") and d.dim_param else None
            for d in tt.shape.dim
        )
    return InputSpec(vi.name, shape, dtype, names, has_shape=tt.HasField("shape"))


def _subgraph_notes(graph: onnx.GraphProto) -> list[str]:
    """Say which control-flow bodies are not analysed, and what they hide."""
    notes = []
    for i, node in enumerate(graph.node):
        if node.op_type not in _SUBGRAPH_OPS:
            continue
        bodies = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        inner = Counter(
            n.op_type
            for body in bodies
            for n in all_nodes(body)
            if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        )
        hidden = ", ".join(f"{c} {op}" for op, c in sorted(inner.items()))
        name = node_name(node, i)
        body_words = "body is" if len(bodies) == 1 else f"{len(bodies)} branches are"
        notes.append(
            f"{node.op_type} node '{name}': its {body_words} not analysed"
            + (f" (it holds {hidden})" if hidden else "")
            + "; tensors inside are not exposed, its outputs are"
        )
    return notes
