"""Import a quantized ONNX model: read its pairs, derive or match its float original.

The loader (`qviz.core.model.loading`) calls these three steps when a file holds quantized
ops: `read_quantized` (QOperator ops rewritten as Q/DQ, pairs read), then either
`derive_float` (the float model is the quantized one without its pairs) or loading the float
original the user gave, then `attach` (pairs matched to the float model, layers added for the
pairs qviz's own discovery does not cover). This package never imports the loader, so the
loader can call it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qviz.core.errors import QvizError
from qviz.core.imported.layering import extra_layers
from qviz.core.imported.matching import match_float
from qviz.core.imported.qoperator import NO_QDQ_FORM, convert_qoperator
from qviz.core.imported.reading import is_dq, is_q, read_pairs
from qviz.core.imported.stripping import restore_folded_relus, strip_pairs
from qviz.core.imported.types import ImportedPair, ImportedQuantization, PairKind
from qviz.core.model.layers import Layer
from qviz.core.model.onnx_graph import name_nodes, unique_node_names
from qviz.core.model.rewrites import constants_to_initializers

__all__ = [
    "QuantizedFile",
    "attach",
    "combined_sha256",
    "derive_float",
    "is_quantized",
    "is_quantized_file",
    "read_quantized",
]


def is_quantized(model: onnx.ModelProto) -> bool:
    """True when the top-level graph holds Q/DQ nodes or quantized ops."""
    for n in model.graph.node:
        if is_q(n) or is_dq(n) or n.op_type in NO_QDQ_FORM or n.op_type.startswith("QLinear"):
            return True
        if n.op_type == "QGemm":
            return True
    return False


@dataclass
class QuantizedFile:
    """The imported graph (every node named, Constant nodes as initializers, QOperator ops
    rewritten as Q/DQ) and its pairs."""

    model: onnx.ModelProto
    pairs: list[ImportedPair]
    converted_from: str = ""
    notes: list[str] = field(default_factory=list)


def read_quantized(model: onnx.ModelProto) -> QuantizedFile:
    """Read a quantized model (copied); QvizError in one line when it cannot be."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    notes = constants_to_initializers(graph)
    name_nodes(graph)
    unique_node_names(graph)
    converted = convert_qoperator(copy)
    pairs = read_pairs(copy)
    if not pairs:
        raise QvizError("the model holds quantized ops but no Q/DQ pair qviz can read")
    counts = Counter(p.kind for p in pairs)
    notes.append(
        "imported "
        + ", ".join(f"{counts[k]} {k.value} pairs" for k in PairKind if counts[k])
        + (" (QOperator nodes rewritten as Q/DQ)" if converted else "")
    )
    return QuantizedFile(copy, pairs, "QOperator" if converted else "", notes)


def derive_float(qf: QuantizedFile) -> tuple[onnx.ModelProto, list[str]]:
    """The float model inside the quantized one, and notes saying how it was made."""
    stripped = strip_pairs(qf.model, qf.pairs)
    restored = restore_folded_relus(stripped, qf.pairs)
    notes = [
        "float model derived from the quantized one (Q/DQ pairs removed, integer weights "
        "dequantized): weight errors are zero by construction; open the float original "
        "to measure them"
    ]
    if restored:
        notes.append(f"{restored} Relus folded into Q/DQ pairs by the quantizer were restored")
    stripped.model.graph.name = stripped.model.graph.name or "derived"
    return stripped.model, notes


def attach(
    qf: QuantizedFile,
    source: Path,
    float_source: Path | None,
    float_model: onnx.ModelProto,
    layers: tuple[Layer, ...],
    data_dir: Path | None = None,
) -> tuple[ImportedQuantization, tuple[Layer, ...]]:
    """Match the pairs to `float_model` (whose layers qviz found; `data_dir`: the folder its
    external tensors lie in) and add the layers the pairs need; returns the import and every
    layer, in graph order."""
    stripped = strip_pairs(qf.model, qf.pairs)
    match = match_float(qf.model, qf.pairs, stripped, float_model, data_dir)
    extras = extra_layers(float_model, layers, match.pairs, qf.model, match.node_map)
    unmapped = [p for p in match.pairs if not p.tensor and p.kind is not PairKind.BIAS]
    notes = [*qf.notes, *match.notes]
    if float_source is None:  # the Relus matching finds folded are the ones derive restored
        notes = [n for n in notes if "Relu/Clip nodes of the float model" not in n]
    if extras:
        ops = Counter(layer.op_type for layer in extras)
        notes.append("layers added for pairs on the inputs of "
                     + ", ".join(f"{n} {op}" for op, n in ops.most_common()))
    if unmapped:
        notes.append(f"{len(unmapped)} pairs qviz cannot map to a tensor are kept as imported")
    imported = ImportedQuantization(
        quantized=qf.model,
        source=source,
        float_source=float_source,
        pairs=tuple(match.pairs),
        node_map=match.node_map,
        notes=tuple(notes),
        converted_from=qf.converted_from,
    )
    merged = tuple(sorted([*layers, *extras], key=lambda layer: layer.depth))
    return imported, merged


def combined_sha256(quantized_sha256: str, float_sha256: str | None) -> str:
    """What a quantized model plus its float original is known by (statistics, sessions and
    caches made with one float original do not apply to another)."""
    text = f"qviz-imported|{quantized_sha256}|{float_sha256 or 'derived'}"
    return hashlib.sha256(text.encode()).hexdigest()


def is_quantized_file(path: Path) -> bool:
    """Whether the .onnx file `path` holds a quantized graph (its weights are not read);
    False for anything that is not a readable ONNX file (loading says why)."""
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: the loader reports it properly
        return False
    return is_quantized(model)
