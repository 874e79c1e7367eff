"""Model loading: every model becomes one float ONNX graph that ONNX Runtime can run.

``load_model`` accepts an ``.onnx`` file (external data beside it), a TorchScript file, a
``torch.export`` program (``.pt2``) or a ``package.module:factory`` spec; PyTorch models are
exported to ONNX first (``qviz.core.model.torch_import``, the only place torch is imported) and then
take the same path as ``.onnx`` files:

1. parse and check the file (``onnx.checker``, full check when the model fits in memory);
2. refuse graphs that are already quantized (they hide the float weights qviz measures);
3. upgrade opsets older than 13 to 17 with ``onnx.version_converter`` (13 is the first opset
   whose QuantizeLinear/DequantizeLinear take a per-channel ``axis``; 17 is widely supported by
   runtimes and converts cleanly from 7..12). Opsets 13 and newer are kept as they are;
4. turn ``Constant`` nodes into initializers so constant weights count as weights;
5. run shape inference so activation shapes (and ranks, for channel axes) are known;
6. find the quantizable layers (``qviz.core.model.layers``).

Graph-level rewrites (steps 3 and 5) run on a copy whose large tensors are replaced by
placeholders, so models above protobuf's 2 GB limit still convert and weights are not
serialized again for every step.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper, shape_inference, version_converter

from qviz.core.errors import QvizError
from qviz.core.errors import first_line as _first_line
from qviz.core.model.layers import Layer, find_layers

__all__ = [
    "QUANTIZED_OP_TYPES",
    "InputSpec",
    "Layer",
    "LoadedModel",
    "TensorKind",
    "is_torch_spec",
    "load_model",
]

#: Models whose default-domain opset is below this are upgraded to UPGRADE_TO_OPSET.
MIN_KEPT_OPSET = 13
UPGRADE_TO_OPSET = 17
#: The version converter has adapters from opset 7 on; older graphs are refused.
MIN_SUPPORTED_OPSET = 7

#: Op types that only appear in graphs that were quantized already (ONNX and ORT contrib ops).
QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
        "QOrderedMatMul",
    }
)

TORCHSCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".jit", ".torchscript"})
EXPORT_SUFFIXES = frozenset({".pt2"})
ONNX_SUFFIXES = frozenset({".onnx"})

# "package.module:factory" (also "module:factory"); never a Windows drive path like "C:\x".
_TORCH_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
# Tensors at least this big are swapped for placeholders during graph rewrites.
_STRIP_BYTES = 1024
_STRIPPED_LOCATION = "__qviz_stripped__"
# Below this size a model is copied whole before stripping (simpler, and cheap enough).
_COPY_WHOLE_BYTES = 64 << 20
_PROTOBUF_LIMIT = 2**31 - 1
_SUBGRAPH_OPS = ("If", "Loop", "Scan")


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
    """

    model: onnx.ModelProto
    source: Path
    sha256: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    layers: tuple[Layer, ...]
    notes: tuple[str, ...] = ()
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
            self, "_channel_axes", MappingProxyType(_activation_axes(self.model, self.layers))
        )

    def weight(self, name: str) -> np.ndarray:
        """The initializer ``name`` as a float32 array (float16/bfloat16/float64 are converted)."""
        try:
            tensor = self._initializers[name]
        except KeyError:
            raise KeyError(f"no initializer named {name!r} in the model") from None
        return np.asarray(numpy_helper.to_array(tensor), dtype=np.float32)

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
) -> LoadedModel:
    """Load ``path`` as a float ONNX graph; see the module docstring for the steps.

    ``sample`` (input name -> one batch, leading axis 1) is needed to export PyTorch models
    (a ``.pt2`` program may bring its own example inputs); ``state_dict`` is a weights file
    for a ``package.module:factory`` model. Raises QvizError for anything wrong with the file.
    """
    text = str(path)
    p = Path(path)
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
        return load_onnx(p)
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

    with tempfile.TemporaryDirectory(prefix="qviz-export-") as tmp:
        exported = torch_import.export_to_onnx(
            spec, Path(tmp), sample=sample, state_dict=state_dict
        )
        # External data is read into memory here, before the temporary folder goes away.
        return load_onnx(
            exported.onnx_path,
            source=exported.source,
            sha256=exported.sha256,
            extra_notes=exported.notes,
        )


def load_onnx(
    path: Path,
    *,
    source: Path | None = None,
    sha256: str | None = None,
    extra_notes: tuple[str, ...] = (),
) -> LoadedModel:
    """Load an ``.onnx`` file; ``source``/``sha256`` override what is recorded (torch exports)."""
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
    _refuse_quantized(model)
    _load_external_data(model, path)
    notes = list(extra_notes)
    notes += _check(model, path)
    model, upgraded = _upgrade_opset(model)
    notes += upgraded
    n_const = _constants_to_initializers(model.graph)
    if n_const:
        notes.append(f"{n_const} Constant nodes were turned into initializers")
    notes += _infer_shapes(model)
    return _finish(model, source or path, digest, notes)


def from_proto(
    model: onnx.ModelProto, *, source: Path | str = "<memory>", sha256: str = ""
) -> LoadedModel:
    """Build a LoadedModel from an in-memory graph (tests, generated models).

    Runs the same steps as :func:`load_onnx` except reading files; the proto is copied.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _refuse_quantized(copy)
    notes = _check(copy, None)
    copy, upgraded = _upgrade_opset(copy)
    notes += upgraded
    n_const = _constants_to_initializers(copy.graph)
    if n_const:
        notes.append(f"{n_const} Constant nodes were turned into initializers")
    notes += _infer_shapes(copy)
    digest = sha256 or hashlib.sha256(copy.SerializeToString()).hexdigest()
    return _finish(copy, Path(source), digest, notes)


def _finish(model: onnx.ModelProto, source: Path, digest: str, notes: list[str]) -> LoadedModel:
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
    )


def _from_torch(model: onnx.ModelProto) -> bool:
    """True when PyTorch wrote the graph: its parameter names are then module paths."""
    if model.producer_name.lower().startswith("pytorch"):
        return True
    return any(
        p.key.startswith("pkg.torch.") for n in model.graph.node for p in n.metadata_props
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (model files can be gigabytes)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise QvizError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    return h.hexdigest()


# --------------------------------------------------------------------------------- checks


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, subgraph bodies (If/Loop/Scan) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _refuse_quantized(model: onnx.ModelProto) -> None:
    counts = Counter(
        n.op_type
        for n in _all_nodes(model.graph)
        if n.op_type in QUANTIZED_OP_TYPES or n.op_type.startswith("QLinear")
    )
    if counts:
        found = ", ".join(f"{n} {op}" for op, n in counts.most_common())
        raise QvizError(
            f"model is already quantized: {found} nodes; open the float model instead"
        )


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent
    for tensor in _all_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        target = base / info.location
        if not target.is_file():
            raise QvizError(
                f"external data file '{info.location}' (tensor '{tensor.name}') is missing; "
                f"it must lie beside {path.name}"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise QvizError(f"cannot read the external data of '{path.name}': {exc}") from exc


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of every graph, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)



def _check(model: onnx.ModelProto, path: Path | None) -> list[str]:
    """Run onnx.checker; problems with the structure are errors, strict shape inference not."""
    opset = _default_opset(model)
    if opset is None:
        raise QvizError("the model imports no default ONNX opset")
    if opset < MIN_SUPPORTED_OPSET:
        raise QvizError(
            f"ONNX opset {opset} is too old (qviz supports {MIN_SUPPORTED_OPSET} and newer); "
            "re-export the model with a recent exporter"
        )
    if opset > onnx.defs.onnx_opset_version():
        raise QvizError(
            f"ONNX opset {opset} is newer than this onnx package knows "
            f"({onnx.defs.onnx_opset_version()}); upgrade onnx and onnxruntime"
        )
    if model.ByteSize() > _PROTOBUF_LIMIT:
        if path is None:
            raise QvizError("the model is larger than 2 GB; load it from its file")
        try:
            # The checker reads the weights itself when given the path.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise QvizError(f"the ONNX model is invalid: {_first_line(exc)}") from exc
        return ["the model is larger than 2 GB: strict shape checks were skipped"]
    try:
        # One pass: structure first, then strict shape inference.
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QvizError(f"the ONNX model is invalid: {_first_line(exc)}") from exc
    except shape_inference.InferenceError as exc:
        # Graphs ORT runs fine sometimes fail ONNX's strict inference (custom ops...): the
        # structure must still pass the plain check.
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as inner:
            raise QvizError(f"the ONNX model is invalid: {_first_line(inner)}") from inner
        return [
            "strict ONNX shape check failed (activation shapes may be unknown): "
            f"{_first_line(exc)}"
        ]
    return []


def _default_opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


# ------------------------------------------------------------------------------- rewrites


def _strip(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy whose big top-level initializers are placeholders, and the originals by name.

    The placeholders keep dtype and dims (all that conversion and shape inference read) and
    point at a fake external file, so protobuf's 2 GB limit and repeated serialization of
    the weights are avoided.
    """
    light = onnx.ModelProto()
    if model.ByteSize() < _COPY_WHOLE_BYTES:
        light.CopyFrom(model)
    else:
        _copy_without_weights(model, light)
    originals: dict[str, onnx.TensorProto] = {}
    by_name = {t.name: t for t in model.graph.initializer}
    for tensor in light.graph.initializer:
        source = by_name[tensor.name]
        if source.ByteSize() < _STRIP_BYTES:
            continue
        originals[tensor.name] = source
        dims, dtype, name = list(source.dims), source.data_type, source.name
        tensor.Clear()
        tensor.name, tensor.data_type = name, dtype
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", _STRIPPED_LOCATION
    return light, originals


def _copy_without_weights(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    """CopyFrom for huge models: copy everything but initializer payloads."""
    graph = model.graph
    saved = list(graph.initializer)
    del graph.initializer[:]
    try:
        light.CopyFrom(model)
    finally:
        graph.initializer.extend(saved)
    for t in saved:
        shell = light.graph.initializer.add()
        shell.name, shell.data_type = t.name, t.data_type
        shell.dims.extend(t.dims)
        if t.ByteSize() < _STRIP_BYTES:
            shell.CopyFrom(t)


def _restore(light: onnx.ModelProto, originals: Mapping[str, onnx.TensorProto]) -> None:
    for tensor in light.graph.initializer:
        if tensor.name in originals and any(
            e.value == _STRIPPED_LOCATION for e in tensor.external_data
        ):
            tensor.CopyFrom(originals[tensor.name])


def _upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    opset = _default_opset(model)
    assert opset is not None  # _check refused models without one
    if opset >= MIN_KEPT_OPSET:
        return model, []
    light, originals = _strip(model)
    try:
        converted = version_converter.convert_version(light, UPGRADE_TO_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise QvizError(
            f"cannot upgrade ONNX opset {opset} to {UPGRADE_TO_OPSET}: {_first_line(exc)}"
        ) from exc
    _restore(converted, originals)
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), True)
    converted.ir_version = max(converted.ir_version, needed)
    return converted, [f"ONNX opset {opset} was upgraded to {UPGRADE_TO_OPSET}"]


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, or None for sparse/string forms we leave alone."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move top-level Constant nodes into initializers; return how many moved.

    Weights some exporters emit as Constant nodes must be initializers for layer discovery
    (and for ORT's quantization passes) to see them as weights.
    """
    keep: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and not node.domain else None
        if value is None or len(node.output) != 1:
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _infer_shapes(model: onnx.ModelProto) -> list[str]:
    """Fill ``value_info`` with inferred activation shapes; failure is a note, not an error."""
    light, _ = _strip(model)
    try:
        inferred = shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # InferenceError, or C++ errors surfacing as RuntimeError
        return [f"shape inference failed, activation shapes are unknown: {_first_line(exc)}"]
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    # Outputs get their inferred types too, when the file left them blank.
    by_name = {o.name: o for o in inferred.graph.output}
    for out in model.graph.output:
        if not out.type.HasField("tensor_type") and out.name in by_name:
            out.type.CopyFrom(by_name[out.name].type)
    return []


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


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Known shapes (None for symbolic dims) of inputs, inferred activations, outputs, weights."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[vi.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim
            )
    for t in graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def _activation_axes(model: onnx.ModelProto, layers: tuple[Layer, ...]) -> dict[str, int | None]:
    """Channel axis per activation tensor, from the layers that consume or produce it.

    Per-channel statistics only make sense along a feature axis of fixed size, so where a
    rule would pick an axis whose size is symbolic (a sequence length) the other candidate
    is tried, else the answer is None.
    """
    graph = model.graph
    shapes = _shapes(graph)
    votes: dict[str, set[int | None]] = {}
    produced: dict[str, int | None] = {}

    def pick(tensor: str, *candidates: int) -> int | None:
        """The first candidate axis (negative allowed) whose size is fixed, non-negative."""
        shape = shapes.get(tensor)
        if shape is None:
            return None
        for axis in candidates:
            if -len(shape) <= axis < len(shape) and shape[axis] is not None:
                return axis % len(shape)
        return None

    def vote(tensor: str, axis: int | None) -> None:
        votes.setdefault(tensor, set()).add(axis)

    for layer in layers:
        node = graph.node[layer.depth]
        out = node.output[0]
        if layer.op_type in ("Conv", "ConvTranspose"):
            # NC... layout: channels are axis 1 whatever the rank or spatial sizes.
            vote(node.input[0], 1)
            produced[out] = 1
            continue
        produced[out] = pick(out, -1)
        attrs = {a.name: a.i for a in node.attribute}
        a, b = node.input[0], node.input[1]
        if layer.op_type == "Gemm":
            # Gemm operands are 2-D: A is [M, K] ([K, M] with transA), B is [K, N] or [N, K].
            if a in layer.activations:
                vote(a, 0 if attrs.get("transA") else 1)
            if b in layer.activations:
                vote(b, 1 if attrs.get("transB") else 0)
            continue
        # MatMul: the left operand's features are its last axis; the right operand is reduced
        # along axis -2 (for k^T in attention that is the head dim; for v it is the sequence,
        # so its last axis, the head dim, is taken instead). A 1-D operand has only axis 0.
        if a in layer.activations:
            vote(a, pick(a, -1))
        if b in layer.activations:
            vote(b, pick(b, -2, -1) if len(shapes.get(b, ())) != 1 else 0)
    axes: dict[str, int | None] = dict(produced)
    for tensor, options in votes.items():
        axes[tensor] = next(iter(options)) if len(options) == 1 else None
    return axes


def _subgraph_notes(graph: onnx.GraphProto) -> list[str]:
    """Say which control-flow bodies are not analysed, and what they hide."""
    notes = []
    for i, node in enumerate(graph.node):
        if node.op_type not in _SUBGRAPH_OPS:
            continue
        bodies = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        inner = Counter(
            n.op_type for body in bodies for n in _all_nodes(body) if n.op_type in
            ("Conv", "ConvTranspose", "Gemm", "MatMul")
        )
        hidden = ", ".join(f"{c} {op}" for op, c in sorted(inner.items()))
        name = node.name or f"{node.op_type}_{i}"
        body_words = "body is" if len(bodies) == 1 else f"{len(bodies)} branches are"
        notes.append(
            f"{node.op_type} node '{name}': its {body_words} not analysed"
            + (f" (it holds {hidden})" if hidden else "")
            + "; tensors inside are not exposed, its outputs are"
        )
    return notes
