"""The record of a Q/DQ graph: which tensors were quantized, how, and what each layer got."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import onnx

from qviz.core.graph.containers import INT8_ONNX, container_dtype
from qviz.core.model.layers import Layer
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams

if TYPE_CHECKING:  # analysis imports the calibration stack; the graph builder needs none of it
    from qviz.core.calibration.analysis import TensorResult

__all__ = ["QdqLayer", "QdqMode", "QdqModel", "QdqTensor"]


class QdqMode(Enum):
    """How a quantized tensor is represented in the graph.

    ``NATIVE``: a plain Q/DQ in the format's ONNX type, or in an int8/uint8 container for
    2..7-bit INT weights; runtimes can execute it with integer/FP8 kernels. ``SIMULATED``: NF4
    weights (fake-quantized float values) and 2..7-bit INT activations (8-bit Q/DQ, then Clip):
    exact, but no integer kernel reads them.
    """

    NATIVE = "native"
    SIMULATED = "simulated"


@dataclass(frozen=True, eq=False)
class QdqTensor:
    """One quantized tensor of the Q/DQ graph.

    ``graph_name`` is the tensor that carries the quantized-then-dequantized values in the Q/DQ
    graph (what the quantized layers read); ``stored_name`` the initializer holding a weight's
    quantized values (None for activations).
    """

    name: str
    kind: TensorKind
    layer: str
    fmt: NumberFormat
    granularity_label: str
    qparams: QParams
    mode: QdqMode
    graph_name: str
    stored_name: str | None = None
    depth: int = 0

    @classmethod
    def of(
        cls, r: TensorResult, mode: QdqMode, graph_name: str, stored_name: str | None = None
    ) -> QdqTensor:
        """The QdqTensor for analysed tensor `r`, carried in the graph by `graph_name`."""
        return cls(
            r.name,
            r.kind,
            r.layer.name,
            r.config.fmt,
            r.config.granularity.label,
            r.qparams,
            mode,
            graph_name,
            stored_name=stored_name,
            depth=r.layer.depth,
        )

    @property
    def is_8bit_int(self) -> bool:
        """A plain Q/DQ stored as int8/uint8 (int8, uint8, and 2..7-bit INT weights in their
        container): the only formats with QLinear kernels on CPU."""
        return self.mode is QdqMode.NATIVE and container_dtype(self.fmt) in INT8_ONNX

    @property
    def step(self) -> float | None:
        """The quantization step of a per-tensor INT activation (its scale), else None."""
        if self.fmt.kind is not FormatKind.INT or self.qparams.axis is not None:
            return None
        return float(self.qparams.scale)


@dataclass(frozen=True, eq=False)
class QdqLayer:
    """What happened to one quantized layer: its quantized inputs, weight, bias and output.

    ``output`` is the Q/DQ the layer's output goes through (the next quantized layer's input,
    directly or through Relu/MaxPool/reshapes), or None with ``output_note`` saying why not.
    """

    layer: Layer
    weight: QdqTensor | None
    inputs: tuple[QdqTensor, ...]
    float_inputs: tuple[str, ...]
    output: QdqTensor | None
    output_note: str
    bias_int32: bool
    bias_note: str = ""


@dataclass(frozen=True, eq=False)
class QdqModel:
    """The Q/DQ graph and a record of what was quantized, and how.

    ``model`` is a protobuf message and so technically mutable: treat it as read-only (copy it
    before changing it); everything in qviz does. When the float model's weights are in
    files, so are the graph's: its large tensors refer to files in ``data_dir`` (a temporary
    folder ``keepalive`` owns; build sessions with ``data_dir=qdq.data_dir``).
    """

    model: onnx.ModelProto
    tensors: tuple[QdqTensor, ...]
    layers: tuple[QdqLayer, ...]
    opset: int
    notes: tuple[str, ...] = ()
    data_dir: Path | None = None
    keepalive: object = field(default=None, repr=False)
    _by_key: Mapping[tuple[str, TensorKind], QdqTensor] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_by_key", MappingProxyType({(t.name, t.kind): t for t in self.tensors})
        )

    def tensor(self, name: str, kind: TensorKind) -> QdqTensor:
        return self._by_key[(name, kind)]

    @property
    def activations(self) -> tuple[QdqTensor, ...]:
        """Quantized activation tensors in depth order."""
        acts = [t for t in self.tensors if t.kind is TensorKind.ACTIVATION]
        return tuple(sorted(acts, key=lambda t: t.depth))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(q.layer.name for q in self.layers)

    @property
    def simulated(self) -> tuple[QdqTensor, ...]:
        """Tensors only the simulation can represent (never run natively)."""
        return tuple(t for t in self.tensors if t.mode is QdqMode.SIMULATED)

    def serialized(self) -> bytes:
        """The graph as one protobuf (a graph whose tensors are in files: the graph only)."""
        return self.model.SerializeToString()
