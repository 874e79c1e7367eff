"""Build the quantized graph: Q/DQ pairs inserted into the float ONNX graph.

The Q/DQ graph is qviz's one quantized artifact. Run op by op (optimizations off) it *is* the
simulation; run with ONNX Runtime's optimizations on, ORT fuses its patterns into real INT8
kernels; saved to disk it is what ships. So every number in it comes from qviz's own
`quantize` with the analysed `QParams`: the graph and the GUI cannot disagree.

What is inserted, per quantized tensor:

* **weights** — the float initializer is replaced by the quantized values in their storage type
  (int8, uint8, int4, uint4, float8) plus a ``DequantizeLinear`` (``axis`` per channel,
  ``axis`` + ``block_size`` per group). INT widths ONNX has no type for (2, 3, 5, 6, 7 bits)
  are stored in an int8/uint8 *container* (`container_dtype`): the values are qviz's
  `quantize` at the narrow width, so they lie within its range, and the DequantizeLinear is
  exact. They run natively like int8 — 7-bit weights are ONNX Runtime's ``reduce_range``, the
  cure for the 16-bit saturation of its u8s8 kernels on AVX2 CPUs without VNNI. Only NF4 has
  no container: it is stored as fake-quantized float32 values, exact in simulation, never
  native.
* **activations** (always per tensor) — ``QuantizeLinear`` → ``DequantizeLinear`` on the
  tensor, feeding only the quantized layers that read it; the float tensor keeps its name, so
  graph inputs, outputs and every other consumer are untouched. INT 2/3/5/6/7-bit activations
  are quantized into int8/uint8 and clipped to their own width *after* dequantization, which
  is bit-identical to qviz's `fake_quantize` at that width, NaN included (QuantizeLinear
  saturates to the container's range). A Clip *before* the QuantizeLinear would leave the
  DQ → layer pattern intact for ORT, but Clip passes NaN, which QuantizeLinear then maps to
  the container's minimum (int8: -128, where int7 wants -64): so they stay simulation only.
* **layer outputs** — ORT fuses ``DQ → Conv → Q`` into ``QLinearConv`` only when the Conv's
  output goes straight into a ``QuantizeLinear``. When a layer's output reaches the next
  quantized layer's input through ops that commute with quantization (Relu, Clip, MaxPool,
  reshapes), a Q/DQ with the *next input's* parameters is also put on the layer's output.
  That is numerically a no-op — re-quantizing values already on the grid returns them, and
  Relu/Clip/max of grid values are grid values — so the simulation is unchanged while ORT gets
  the pattern it needs.
* **biases** of Conv/Gemm layers whose input and weight are both 8-bit integers are stored as
  int32 at scale ``s_input · s_weight`` (zero point 0), as ORT's integer kernels require. This
  is the one value not produced by qviz's formats; its rounding error is at most half of
  ``s_input · s_weight`` per output element.

Layers whose weight the user keeps in float stay float (mixed precision is only a
configuration); see `receives_quantized_input` for the precise rule on shared activations.

The module map: the record's types in ``qdq_types``, element types, containers and opsets in
``containers``, the graph edits in ``qdq_builder``; this module plans the whole graph, and sizes
and saves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from qviz.core.errors import QvizError
from qviz.core.graph.containers import format_text
from qviz.core.graph.placement import place_for_fusion
from qviz.core.graph.qdq_builder import QdqBuilder
from qviz.core.graph.qdq_files import save_qdq
from qviz.core.graph.qdq_types import QdqLayer, QdqMode, QdqModel, QdqTensor
from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.model.onnx_graph import default_opset, unique_node_names

if TYPE_CHECKING:  # analysis imports the calibration stack; the graph builder needs none of it
    from qviz.core.calibration.analysis import TensorResult

# The record types are part of this module's API: build_qdq returns them.
__all__ = [
    "QdqLayer",
    "QdqMode",
    "QdqModel",
    "QdqTensor",
    "build_qdq",
    "initializer_bytes",
    "receives_quantized_input",
    "save_qdq_model",
]


def receives_quantized_input(layer: Layer, owner: str, quantized_weights: set[str]) -> bool:
    """Whether `layer` reads the Q/DQ'd version of an activation owned by layer `owner`.

    A layer whose weight is quantized reads quantized inputs; so does a layer without a weight
    (activation x activation MatMul). A layer whose weight the user kept in float keeps float
    inputs — mixed precision — unless the activation is its own (it is the activation's first
    reader, ``owner``), which is how activation-only quantization of one layer is expressed.
    """
    if layer.weight is None or layer.weight in quantized_weights:
        return True
    return layer.name == owner


# --------------------------------------------------------------------------- planning


def build_qdq(
    model: LoadedModel, results: Sequence[TensorResult], *, place: bool = True
) -> QdqModel:
    """The Q/DQ graph for `results` (from `analyze` or a saved config), with its record.

    With `place` (the default), activation quantization is then moved back through
    data-movement ops where that is exact, so ONNX Runtime fuses the chains
    (`qviz.core.graph.placement`); the simulation is the same either way.

    Raises QvizError for a configuration the graph cannot express (NF4 or per-channel
    activations) or when the model cannot be upgraded to the opset the formats need.
    """
    if model.imported is not None:
        # An imported model's quantized graph is the imported graph, repaired where the
        # configuration differs from it (what is measured is what ships).
        from qviz.core.imported.repair import repair_qdq

        return repair_qdq(model, results)
    b = QdqBuilder(model, results)
    by_key: dict[tuple[str, TensorKind], TensorResult] = {}
    for r in results:
        if (r.name, r.kind) in by_key:
            raise QvizError(f"{r.kind.value} '{r.name}' is configured twice")
        by_key[(r.name, r.kind)] = r
    quantized_weights = {name for name, kind in by_key if kind is TensorKind.WEIGHT}

    # An activation whose every reader is kept float is not quantized anywhere: no Q/DQ.
    read_quantized = {
        act
        for layer in model.layers
        for act in layer.activations
        if (owner := by_key.get((act, TensorKind.ACTIVATION))) is not None
        and receives_quantized_input(layer, owner.layer.name, quantized_weights)
    }
    notes: list[str] = list(b.notes)  # e.g. a bias correction that found no node
    weights: dict[str, QdqTensor] = {}
    acts: dict[str, QdqTensor] = {}
    for r in sorted(results, key=lambda r: (r.layer.depth, r.kind.value)):
        if r.kind is TensorKind.WEIGHT:
            weights[r.name] = b.quantize_weight(r)
        elif r.name in read_quantized:
            acts[r.name] = b.quantize_activation(r)
        else:
            notes.append(f"activation '{r.name}' is left float: every layer reading it is float")

    # Rewire each quantized layer to read the dequantized tensors.
    rewired: dict[str, set[str]] = {}
    plans: list[tuple[Layer, onnx.NodeProto, QdqTensor | None, list[QdqTensor], list[str]]] = []
    for layer in model.layers:
        node = b.node_of(layer)
        w = weights.get(layer.weight) if layer.weight is not None else None
        inputs: list[QdqTensor] = []
        floats: list[str] = []
        for act in layer.activations:
            qa = acts.get(act)
            if qa is not None and receives_quantized_input(layer, qa.layer, quantized_weights):
                inputs.append(qa)
                rewired.setdefault(act, set()).add(node.name)
                for i, name in enumerate(node.input):
                    if name == act:
                        node.input[i] = qa.graph_name
            else:
                floats.append(act)
        if w is not None:
            for i, name in enumerate(node.input):
                if name == layer.weight:
                    node.input[i] = w.graph_name
        if w is not None or inputs:
            plans.append((layer, node, w, inputs, floats))

    layers: list[QdqLayer] = []
    for layer, node, w, inputs, floats in plans:
        bias_int32, bias_note = False, ""
        if w is not None and len(inputs) == 1:
            bias_int32, bias_note = b.quantize_bias(node, inputs[0], w)
        output, note = b.quantize_output(node, acts, rewired)
        layers.append(
            QdqLayer(layer, w, tuple(inputs), tuple(floats), output, note, bias_int32, bias_note)
        )

    proto = b.finish()
    unique_node_names(proto.graph)
    tensors = tuple(sorted([*weights.values(), *acts.values()], key=lambda t: t.depth))
    simulated = sorted(
        {f"{format_text(t.fmt)} {t.kind.value}s" for t in tensors if t.mode is QdqMode.SIMULATED}
    )
    if simulated:
        notes.append("simulation only (no integer kernel reads them): " + ", ".join(simulated))
    opset = default_opset(proto)
    assert opset is not None  # upgrade_opset refuses a model without one
    folder = b.folder
    built = QdqModel(
        proto,
        tensors,
        tuple(layers),
        opset,
        tuple(notes),
        data_dir=b.data_dir,
        keepalive=folder,
    )
    return place_for_fusion(built) if place else built


# --------------------------------------------------------------------------- size and saving


def _element_bytes(data_type: int) -> float:
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 0.5
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0.0
    return float(helper.tensor_dtype_to_np_dtype(data_type).itemsize)


def initializer_bytes(model: onnx.ModelProto, nominal: Mapping[str, float] | None = None) -> int:
    """Bytes of every initializer in its stored type (4-bit types count half a byte each,
    rounded up per tensor). `nominal` maps initializer names to bits per element to count
    instead (fake-quantized weights stored as float but meant for a narrower format)."""
    nominal = nominal or {}
    total = 0.0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1
        per = nominal[init.name] / 8 if init.name in nominal else _element_bytes(init.data_type)
        total += float(np.ceil(n * per))
    return int(total)


def save_qdq_model(qdq: QdqModel, path: str | Path, *, external: bool | None = None) -> list[Path]:
    """Write the Q/DQ graph atomically: one ``.onnx`` file, or ``.onnx`` + ``.onnx.data`` when
    ``external`` (default: when the float model's weights were in files) or when the graph
    does not fit in one protobuf. Returns the files written."""
    if external is None:
        external = qdq.data_dir is not None
    return save_qdq(qdq.model, qdq.data_dir, path, external=external)
