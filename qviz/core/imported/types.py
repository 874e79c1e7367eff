"""What qviz knows about a model quantized by another tool: its Q/DQ pairs, mapped onto the
float model.

A *pair* is one quantization in the imported graph: a ``QuantizeLinear`` and the
``DequantizeLinear`` nodes that read it (an activation), a ``DequantizeLinear`` of stored
integer codes (a weight, or an int32 bias), or a ``QuantizeLinear`` of a float constant
followed by its ``DequantizeLinear`` (a weight quantized at run time). ``tensor`` names the
float tensor it quantizes as the float model names it; the graph names are those of the
imported model, which the repair edits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType

import onnx

from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.imported_params import ImportedParams

__all__ = ["ImportedPair", "ImportedQuantization", "PairKind"]


class PairKind(Enum):
    """What an imported pair quantizes."""

    WEIGHT = "weight"
    ACTIVATION = "activation"
    BIAS = "bias"  # int32 at scale s_input * s_weight: follows the layer's other pairs


@dataclass(frozen=True, eq=False)
class ImportedPair:
    """One Q/DQ pair of the imported graph (see the module docstring).

    ``source``: for an activation the QuantizeLinear's input; for stored codes the codes'
    initializer; for a run-time weight the float initializer the QuantizeLinear reads.
    ``outputs``: what the DequantizeLinear nodes produce (what the quantized layers read).
    ``tensor``: the float model's name for the quantized tensor ("" until matched, and for a
    pair qviz cannot map, which is kept as imported).
    """

    kind: PairKind
    source: str
    fmt: NumberFormat | None  # None for an int32 bias (no qviz format)
    params: ImportedParams
    q_node: str | None
    dq_nodes: tuple[str, ...]
    outputs: tuple[str, ...]
    tensor: str = ""
    to_graph_output: bool = False  # a DequantizeLinear output is a graph output
    #: The float model's Relu/Clip this pair replaces (ONNX Runtime folds one into the pair of
    #: the layer's output when the pair's range starts where the op clips): removing or
    #: changing the pair must put it back.
    folded: onnx.NodeProto | None = None

    @property
    def stored(self) -> bool:
        """The quantized model stores the codes (no QuantizeLinear runs)."""
        return self.q_node is None


@dataclass(frozen=True, eq=False)
class ImportedQuantization:
    """The imported model and its pairs, matched to the float model qviz measures.

    ``quantized`` is the imported graph (QOperator ops already rewritten as Q/DQ, every node
    named): treat it as read-only. ``node_map`` maps float-model node names to the imported
    graph's. ``float_source`` is None when the float model was derived from the quantized one
    (pairs removed, codes dequantized).
    """

    quantized: onnx.ModelProto
    source: Path
    float_source: Path | None
    pairs: tuple[ImportedPair, ...]
    node_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()
    converted_from: str = ""  # "QOperator" when the file held QLinear ops
    _by_tensor: Mapping[tuple[str, PairKind], ImportedPair] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_map", MappingProxyType(dict(self.node_map)))
        by_tensor = {(p.tensor, p.kind): p for p in self.pairs if p.tensor}
        object.__setattr__(self, "_by_tensor", MappingProxyType(by_tensor))

    @property
    def derived(self) -> bool:
        return self.float_source is None

    def pair(self, tensor: str, kind: PairKind) -> ImportedPair | None:
        """The pair quantizing float tensor `tensor` as `kind`, if any."""
        return self._by_tensor.get((tensor, kind))

    def counts(self) -> dict[PairKind, int]:
        out = dict.fromkeys(PairKind, 0)
        for p in self.pairs:
            out[p.kind] += 1
        return out

    @property
    def float_label(self) -> str:
        """How the UI names the float original."""
        if self.float_source is None:
            return "derived from the quantized model (Q/DQ removed, weights dequantized)"
        return str(self.float_source)
