"""Where the current configuration quantizes: the Q/DQ placement drawn on the graph.

Which layers read quantized values, which are kept float, which weights are stored quantized
(and in what format), which edges carry a quantized activation (a QuantizeLinear →
DequantizeLinear pair sits on them in the exported graph), and which layers ONNX Runtime ran
as integer kernels in the last full evaluation. The rule for an activation shared between a
quantized and a float layer is the Q/DQ builder's own (`receives_quantized_input`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.graph.qdq import receives_quantized_input
from qviz.core.graphview.opgraph import OpGraph
from qviz.core.model.layers import Layer
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.fusion import INTEGER_KERNELS, WEIGHT_ONLY_KERNELS

__all__ = ["QuantMarks", "layer_quantized_keys", "quant_marks", "quantized_weights"]


@dataclass(frozen=True)
class QuantMarks:
    """Node ids of quantized layers and of layers kept float; the weight format of each
    layer whose weight is quantized; the (src, dst, tensor) edges that carry Q/DQ'd values;
    the integer (or weight-only) kernel ORT ran each fused layer as, and whether that fusion
    report is for the current settings."""

    quantized: frozenset[str]
    kept_float: frozenset[str]
    weight_formats: Mapping[str, str]
    qdq_edges: frozenset[tuple[str, str, str]]
    kernels: Mapping[str, str]
    kernels_current: bool

    def edge_is_quantized(self, src: str, dst: str, tensor: str) -> bool:
        return (src, dst, tensor) in self.qdq_edges


def quantized_weights(doc: Document) -> set[str]:
    """The weights the configuration quantizes."""
    if doc.model is None:
        return set()
    return {
        layer.weight for layer in doc.model.layers
        if layer.weight is not None
        and doc.has(key := TensorKey(layer.weight, TensorKind.WEIGHT))
        and doc.config_for(key).quantize
    }


def layer_quantized_keys(doc: Document, layer: Layer, q_weights: set[str]) -> list[TensorKey]:
    """The tensors ``layer`` reads quantized: its weight when quantized, and each input
    activation that is quantized and that this layer reads through its Q/DQ (a layer whose
    weight is kept float reads float inputs, unless the activation is its own)."""
    keys = []
    if layer.weight is not None and layer.weight in q_weights:
        keys.append(TensorKey(layer.weight, TensorKind.WEIGHT))
    for act in layer.activations:
        key = TensorKey(act, TensorKind.ACTIVATION)
        if (doc.has(key) and doc.config_for(key).quantize
                and receives_quantized_input(layer, doc.tensor(key).layer.name, q_weights)):
            keys.append(key)
    return keys


def quant_marks(doc: Document, graph: OpGraph) -> QuantMarks:
    """The marks for the document's current configuration and fusion report."""
    model = doc.model
    if model is None:
        return QuantMarks(frozenset(), frozenset(), {}, frozenset(), {}, False)
    layers = {layer.name: layer for layer in model.layers}
    q_weights = quantized_weights(doc)
    quantized: set[str] = set()
    kept_float: set[str] = set()
    formats: dict[str, str] = {}
    reads_quantized: dict[str, set[str]] = {}  # node id -> its inputs read Q/DQ'd
    for name, layer in layers.items():
        nid = graph.node_of_layer(name)
        if nid is None:
            continue
        inputs = {k.name for k in layer_quantized_keys(doc, layer, q_weights)
                  if k.kind is TensorKind.ACTIVATION}
        reads_quantized[nid] = inputs
        if layer.weight in q_weights:
            assert layer.weight is not None
            formats[nid] = doc.config_for(TensorKey(layer.weight, TensorKind.WEIGHT)).fmt.spec
        if inputs or layer.weight in q_weights:
            quantized.add(nid)
        else:
            kept_float.add(nid)
    edges = frozenset(
        (e.src, e.dst, e.tensor) for e in graph.edges if e.tensor in reads_quantized.get(e.dst, ())
    )
    kernels: dict[str, str] = {}
    report = doc.measures.fusion
    if report is not None:
        for name, kernel in report.kernels.items():
            nid = graph.node_of_layer(name)
            if nid is not None and (kernel in INTEGER_KERNELS or kernel in WEIGHT_ONLY_KERNELS):
                kernels[nid] = kernel
    return QuantMarks(
        frozenset(quantized), frozenset(kept_float), MappingProxyType(formats), edges,
        MappingProxyType(kernels), doc.measures.fusion_current,
    )
