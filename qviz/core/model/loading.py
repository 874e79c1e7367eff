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

The checks (1, 2) are in ``qviz.core.model.checks``, the rewrites (3 to 5) in
``qviz.core.model.rewrites``; graph-level rewrites (3 and 5) run on a copy whose large
tensors are replaced by placeholders (``qviz.core.model.onnx_graph``), so models above
protobuf's 2 GB limit still convert and weights are not serialized again for every step.
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
from onnx import numpy_helper

from qviz.core.errors import QvizError, first_line
from qviz.core.model.activation_axes import activation_axes
from qviz.core.model.checks import check_model, load_external_data, refuse_quantized
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
            self, "_channel_axes", MappingProxyType(activation_axes(self.model, self.layers))
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
    try:
        refuse_quantized(model)
        load_external_data(model, path)
        model, notes = _rewrite(model, [*extra_notes, *check_model(model, path)])
        return _finish(model, source or path, digest, notes)
    except QvizError:
        raise
    except Exception as exc:
        # A damaged file can parse yet hold what no valid model does (text fields that are
        # not UTF-8, impossible attribute types): it is the file's fault, said in one line.
        raise QvizError(
            f"'{path.name}' is not a usable ONNX model ({type(exc).__name__}: "
            f"{first_line(exc)})"
        ) from exc


def from_proto(
    model: onnx.ModelProto, *, source: Path | str = "<memory>", sha256: str = ""
) -> LoadedModel:
    """Build a LoadedModel from an in-memory graph (tests, generated models).

    Runs the same steps as :func:`load_onnx` except reading files; the proto is copied.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    refuse_quantized(copy)
    copy, notes = _rewrite(copy, check_model(copy, None))
    digest = sha256 or hashlib.sha256(copy.SerializeToString()).hexdigest()
    return _finish(copy, Path(source), digest, notes)


def _rewrite(model: onnx.ModelProto, notes: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """Steps 3 to 5: opset upgrade, Constant nodes to initializers, shape inference."""
    model, upgraded = upgrade_old_opset(model)
    notes = [*notes, *upgraded, *constants_to_initializers(model.graph)]
    notes += infer_shapes(model)
    return model, notes


def _finish(model: onnx.ModelProto, source: Path, digest: str, notes: list[str]) -> LoadedModel:
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
