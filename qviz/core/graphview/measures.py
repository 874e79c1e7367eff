"""What colours the graph's nodes: one measure at a time, each a function of the document.

A measure is an entry of `MEASURES`: a `NodeMeasure` and a function from the document and the
graph to `NodeReadings` — a `Reading` per node it says something about, the colour scale
they were coloured with, and how a collapsed group combines its nodes' readings (the worst
of them). Nodes without a reading are drawn as float (not quantized) or, when quantized, as
not measured yet. Adding a measure (the per-layer speed-up, say) is one enum member and one
function registered here.

Built in:

* local SQNR — the worst SQNR of the tensors the layer reads quantized (weight, inputs);
* clipped — the largest fraction of a quantized tensor's values outside its clip range;
* sensitivity — the task metric's drop with only this layer quantized, or its recovery with
  only this layer float (the last sensitivity report);
* sim vs native — whether ONNX Runtime ran the layer as an integer kernel (which one) or left
  it in float (why), from the last full evaluation's fusion report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.evaluation.display import fmt_metric, fmt_metric_change, metric_unit
from qviz.core.graphview.groups import GroupTree
from qviz.core.graphview.marks import layer_quantized_keys, quantized_weights
from qviz.core.graphview.opgraph import OpGraph
from qviz.core.graphview.scales import ColourScale
from qviz.core.model.layers import Layer
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.fusion import WEIGHT_ONLY_KERNELS
from qviz.core.text import fmt_db, fmt_num, fmt_pct

__all__ = [
    "MEASURES",
    "Measure",
    "NodeMeasure",
    "NodeReadings",
    "Reading",
    "group_readings",
    "read_measure",
]

# Local SQNR: 35 dB is about int8 per-channel quality on a well-behaved tensor; below 20 dB
# the noise is a tenth of the signal's power (the layer table's colours use the same marks).
GOOD_DB = 35.0
FAIR_DB = 20.0


class NodeMeasure(Enum):
    SQNR = "sqnr"
    CLIPPED = "clipped"
    DROP = "drop"
    RECOVERY = "recovery"
    NATIVE = "native"


@dataclass(frozen=True)
class Reading:
    """One node's number: ``value`` (None: quantized, not measured yet), the short ``text``
    drawn on the node, its ``colour`` and the tooltip ``lines``."""

    value: float | None
    text: str
    colour: str | None
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeReadings:
    """A measure's readings by node id, the scale they are coloured with, and whether a
    higher value is worse (a group shows its worst node). ``note`` says what the legend
    should add (no report yet, measured for earlier settings); ``stale`` readings are drawn
    faded."""

    measure: NodeMeasure
    readings: Mapping[str, Reading]
    scale: ColourScale
    higher_is_worse: bool
    fmt: Callable[[float], str]
    note: str = ""
    stale: bool = False

    def reading(self, item: str) -> Reading | None:
        return self.readings.get(item)


@dataclass(frozen=True)
class Measure:
    kind: NodeMeasure
    label: str
    description: str
    read: Callable[[Document, OpGraph], NodeReadings] = field(repr=False)


def _layers(doc: Document, graph: OpGraph) -> list[tuple[str, Layer]]:
    """(node id, layer) for every layer of the document's model that is a node here."""
    if doc.model is None:
        return []
    out = []
    for layer in doc.model.layers:
        nid = graph.node_of_layer(layer.name)
        if nid is not None:
            out.append((nid, layer))
    return out


def _tensor_readings(
    doc: Document, graph: OpGraph, measure: NodeMeasure, scale: ColourScale,
    value_of: Callable[[TensorKey], float | None], worst: Callable[[Sequence[float]], float],
    fmt: Callable[[float], str], higher_is_worse: bool,
) -> NodeReadings:
    """Readings from each quantized tensor's own number (SQNR, clipped fraction)."""
    readings: dict[str, Reading] = {}
    q_weights = quantized_weights(doc)
    for nid, layer in _layers(doc, graph):
        keys = layer_quantized_keys(doc, layer, q_weights)
        if not keys:
            continue  # kept float: no reading, drawn as float
        values, lines = [], []
        for k in keys:
            v = value_of(k)
            what = "weight" if k.kind is TensorKind.WEIGHT else "input"
            lines.append(f"{what} {k.name}: " + ("not measured yet" if v is None else fmt(v)))
            if v is not None and not math.isnan(v):
                values.append(v)
        if not values:
            readings[nid] = Reading(None, "…", None, tuple(lines))
            continue
        v = worst(values)
        readings[nid] = Reading(v, fmt(v), scale.colour(v), tuple(lines))
    return NodeReadings(measure, MappingProxyType(readings), scale, higher_is_worse, fmt)


SQNR_SCALE = ColourScale(
    "Local SQNR (worst tensor of the layer)",
    ((10.0, "#d73027"), (FAIR_DB, "#fc8d59"), (27.5, "#fee08b"), (GOOD_DB, "#91cf60"),
     (45.0, "#1a9850")),
    ("≤ 10 dB", f"{FAIR_DB:g} dB", "27.5 dB", f"{GOOD_DB:g} dB", "≥ 45 dB"),
)
CLIPPED_SCALE = ColourScale(
    "Clipped (largest fraction of a tensor)",
    ((1e-5, "#fff7ec"), (1e-4, "#fdd49e"), (1e-3, "#fc8d59"), (1e-2, "#d7301f"),
     (1e-1, "#7f0000")),
    ("≤ 0.001 %", "0.01 %", "0.1 %", "1 %", "≥ 10 %"),
    log=True,
)


def _sqnr(doc: Document, graph: OpGraph) -> NodeReadings:
    def value(k: TensorKey) -> float | None:
        r = doc.result(k)
        return None if r is None else float(r.metrics.sqnr_db)

    return _tensor_readings(doc, graph, NodeMeasure.SQNR, SQNR_SCALE, value, min, fmt_db,
                            higher_is_worse=False)


def _clipped(doc: Document, graph: OpGraph) -> NodeReadings:
    def value(k: TensorKey) -> float | None:
        r = doc.result(k)
        return None if r is None else float(r.metrics.clipped_fraction)

    return _tensor_readings(doc, graph, NodeMeasure.CLIPPED, CLIPPED_SCALE, value, max,
                            fmt_pct, higher_is_worse=True)


def _sensitivity(kind: NodeMeasure) -> Callable[[Document, OpGraph], NodeReadings]:
    drop = kind is NodeMeasure.DROP

    def read(doc: Document, graph: OpGraph) -> NodeReadings:
        report = doc.measures.sensitivity
        title = "Δ if quantized alone" if drop else "Recovery if float"
        if report is None:
            scale = ColourScale(title, ((0.0, "#f7f7f7"),), ("no report",))
            return NodeReadings(kind, MappingProxyType({}), scale, True, fmt_num,
                                note="Run ▸ Sensitivity (F6) to measure each layer")
        m = report.metric

        def fmt(v: float) -> str:
            return fmt_metric_change(v, m)

        values: dict[str, tuple[float, tuple[str, ...]]] = {}
        for nid, layer in _layers(doc, graph):
            row = doc.measures.sensitivity_row(layer.name)
            if row is None:
                continue
            v = row.drop if drop else row.recovery
            if v is None or math.isnan(v):
                continue
            values[nid] = (v, (
                f"only this layer quantized: {fmt_metric(row.quantized_only.value(m), m)} "
                f"(float {fmt_metric(report.float_value, m)})",
                f"only this layer float: {fmt_metric(row.float_only.value(m), m)} "
                f"(all quantized {fmt_metric(report.quantized_value, m)})",
            ))
        top = max((abs(v) for v, _ in values.values()), default=0.0) or 1.0
        scale = ColourScale(
            f"{title} ({metric_unit(m)})",
            ((-top, "#2166ac"), (0.0, "#f7f7f7"), (top, "#b2182b")),
            (fmt(-top), "0", fmt(top)),
        )
        readings = {nid: Reading(v, fmt(v), scale.colour(v), lines)
                    for nid, (v, lines) in values.items()}
        stale = doc.measures.sensitivity_stale
        return NodeReadings(kind, MappingProxyType(readings), scale, True, fmt,
                            note="measured for earlier settings" if stale else "", stale=stale)

    return read


class Native(Enum):
    """Categories of the sim-vs-native measure, in increasing badness (their codes)."""

    INTEGER = 0
    WEIGHT_ONLY = 1
    SATURATES = 2
    FLOAT = 3


NATIVE_SCALE = ColourScale(
    "Sim vs native (last full evaluation)",
    ((0.0, "#1a9850"), (1.0, "#80cdc1"), (2.0, "#fdae61"), (3.0, "#d73027")),
    ("integer kernel", "weight-only kernel", "may saturate (u8s8)", "left in float"),
    categorical=True,
)


def _native_text(v: float) -> str:
    return NATIVE_SCALE.labels[int(v)]


def _native(doc: Document, graph: OpGraph) -> NodeReadings:
    report = doc.measures.fusion
    if report is None:
        return NodeReadings(NodeMeasure.NATIVE, MappingProxyType({}), NATIVE_SCALE, True,
                            _native_text, note="Run ▸ Evaluate (Ctrl+R) to see the kernels")
    readings: dict[str, Reading] = {}
    for nid, layer in _layers(doc, graph):
        kernel = report.kernels.get(layer.name)
        if kernel is not None:
            if layer.name in report.saturating:
                cat = Native.SATURATES
            elif kernel in WEIGHT_ONLY_KERNELS:
                cat = Native.WEIGHT_ONLY
            else:
                cat = Native.INTEGER
            lines = (f"ONNX Runtime runs it as {kernel}",)
            text = kernel
        elif layer.name in report.unfused:
            cat, text = Native.FLOAT, "float"
            lines = (f"left in float: {report.unfused[layer.name]}",)
        else:
            continue  # not quantized when evaluated
        code = float(cat.value)
        readings[nid] = Reading(code, text, NATIVE_SCALE.colour(code), lines)
    stale = not doc.measures.fusion_current
    return NodeReadings(NodeMeasure.NATIVE, MappingProxyType(readings), NATIVE_SCALE, True,
                        _native_text, note="measured for earlier settings" if stale else "",
                        stale=stale)


MEASURES: dict[NodeMeasure, Measure] = {
    m.kind: m
    for m in (
        Measure(NodeMeasure.SQNR, "Local SQNR",
                "The worst SQNR of the tensors the layer quantizes (weight and inputs)", _sqnr),
        Measure(NodeMeasure.CLIPPED, "Clipped %",
                "The largest fraction of a quantized tensor's values outside its clip range",
                _clipped),
        Measure(NodeMeasure.DROP, "Sensitivity: Δ alone",
                "How much the task metric gets worse with only this layer quantized "
                "(Run ▸ Sensitivity)", _sensitivity(NodeMeasure.DROP)),
        Measure(NodeMeasure.RECOVERY, "Sensitivity: recovery",
                "How much the task metric improves with only this layer kept float "
                "(Run ▸ Sensitivity)", _sensitivity(NodeMeasure.RECOVERY)),
        Measure(NodeMeasure.NATIVE, "Sim vs native",
                "Which integer kernel ONNX Runtime ran the layer as, or why it stayed float "
                "(Run ▸ Evaluate)", _native),
    )
}


def read_measure(doc: Document, graph: OpGraph, measure: NodeMeasure) -> NodeReadings:
    return MEASURES[measure].read(doc, graph)


def group_readings(readings: NodeReadings, tree: GroupTree) -> dict[str, Reading]:
    """A reading per group: the worst of its nodes' (with how many nodes had one)."""
    out: dict[str, Reading] = {}
    pick = max if readings.higher_is_worse else min
    for gid in tree.groups:
        found = [r for n in tree.nodes_in(gid) if (r := readings.reading(n)) is not None]
        if not found:
            continue
        valued = [r for r in found if r.value is not None]
        if not valued:
            out[gid] = Reading(None, "…", None, (f"{len(found)} layers, none measured yet",))
            continue
        worst = pick(valued, key=lambda r: r.value if r.value is not None else math.nan)
        assert worst.value is not None
        text = readings.fmt(worst.value)
        out[gid] = Reading(worst.value, text, worst.colour,
                           (f"worst of {len(valued)} layers: {text}",))
    return out
