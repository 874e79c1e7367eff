"""Per-layer speed: where the float and the quantized model spend their time, layer by layer.

`layer_speed` profiles the float model and the Q/DQ model side by side (`profile_pair`) at
the user's batch and thread count, traces every node ORT ran back to the graph qviz built
(`map_nodes`), and charges its time:

* a node computing a qviz layer (QLinearConv, MatMulIntegerToFloat, a float Conv...) → that
  layer's **kernel** time; ORT's op is the layer's kernel (``FusedConv``, ``Conv (NCHWc)``
  in float; ``QLinearConv``, ``QGemm``, ``MatMulNBits``... or a float op when it did not
  fuse);
* a QuantizeLinear / DequantizeLinear that ORT left in the graph → **Q/DQ** time of the layer
  it quantizes for (the layer reading the activation; the layer owning the weight — a weight
  whose DequantizeLinear runs is dequantized again on *every* run);
* a node ORT added itself (a layout Transpose around an NHWC QLinearConv, an NCHWc
  reorder) → **layout** time of the layer it serves;
* anything else (Relu, Add, Softmax...) is the graph's **other** time, kept per node for the
  graph view.

A layer's quantized time is kernel + Q/DQ + layout; its speed-up is float ÷ quantized.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from qviz.core.graph.qdq import QdqModel
from qviz.core.jsonnum import json_number as _num
from qviz.core.model.loading import LoadedModel
from qviz.core.model.onnx_graph import name_nodes, unique_node_names
from qviz.core.runtime.latency import PairTiming, time_pair
from qviz.core.runtime.node_map import NodeMap, map_nodes
from qviz.core.runtime.profile import SessionProfile, TimingBudget, profile_pair
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, Threads, build_session

__all__ = ["LayerSpeed", "NodeSpeed", "SpeedProfile", "attribute", "layer_speed", "named_float"]

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops that pass values through unchanged (or pick one of them): a Q/DQ chain through them
# still belongs to the layer at its end.
_PASS_OPS = frozenset(
    {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
     "Identity"}
)
_LAYOUT_DOMAINS = {"com.microsoft.nchwc": "NCHWc"}
# Ops ORT adds to change a tensor's layout (NCHW <-> NHWC, NCHWc blocks).
_LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})


@dataclass(frozen=True)
class LayerSpeed:
    """One qviz layer's time per run in the float and in the quantized model (ms, medians).

    ``kernel`` is the ORT op that computed it in the quantized model (its float op when the
    layer is float or did not fuse), ``float_kernel`` the op in the float model. ``qdq_ms``
    is the time of the Q/DQ nodes ORT kept for it (``qdq_nodes``), ``layout_ms`` of the layout
    changes ORT added beside it; ``weight_dequantized`` says its weight is dequantized on
    every run.
    """

    name: str
    node: str
    op_type: str
    depth: int
    quantized: bool
    float_ms: float
    kernel_ms: float
    qdq_ms: float = 0.0
    layout_ms: float = 0.0
    float_kernel: str = ""
    kernel: str = ""
    qdq_nodes: tuple[str, ...] = ()
    weight_dequantized: bool = False
    float_layout_ms: float = 0.0

    @property
    def quantized_ms(self) -> float:
        return self.kernel_ms + self.qdq_ms + self.layout_ms

    @property
    def speedup(self) -> float:
        """Float time ÷ quantized time (above 1: the quantized layer is faster)."""
        q = self.quantized_ms
        return self.float_ms / q if q > 0 else (1.0 if self.float_ms == 0 else math.inf)

    @property
    def saved_ms(self) -> float:
        return self.float_ms - self.quantized_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.name,
            "node": self.node,
            "op_type": self.op_type,
            "depth": self.depth,
            "quantized": self.quantized,
            "float_ms": _num(self.float_ms),
            "quantized_ms": _num(self.quantized_ms),
            "speedup": _num(self.speedup),
            "kernel_ms": _num(self.kernel_ms),
            "qdq_ms": _num(self.qdq_ms),
            "layout_ms": _num(self.layout_ms),
            "float_kernel": self.float_kernel,
            "kernel": self.kernel,
            "qdq_nodes": list(self.qdq_nodes),
            "weight_dequantized_every_run": self.weight_dequantized,
        }


@dataclass(frozen=True)
class NodeSpeed:
    """One node of the float graph (by position): its time per run in each model (ms)."""

    index: int
    name: str
    float_ms: float
    quantized_ms: float


@dataclass(frozen=True)
class SpeedProfile:
    """Per-layer (and per-node) times of the float and the quantized model, profiled side by
    side at ``batch_size`` with ``threads`` intra-op threads (0: ORT's choice).

    ``float_run_ms``/``quantized_run_ms`` are the profiled runs (the profiler's own cost
    included: on a small model it can be most of the run); ``timing`` is the whole model
    timed without the profiler, the figure to quote, when it was measured.
    """

    batch_size: int
    threads: int
    runs: int
    float_run_ms: float
    quantized_run_ms: float
    layers: tuple[LayerSpeed, ...]
    nodes: tuple[NodeSpeed, ...] = ()
    other_float_ms: float = 0.0
    other_quantized_ms: float = 0.0
    precision: KernelPrecision = KernelPrecision.DEFAULT
    timing: PairTiming | None = None
    _by_name: Mapping[str, LayerSpeed] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({x.name: x for x in self.layers}))

    def layer(self, name: str) -> LayerSpeed | None:
        return self._by_name.get(name)

    @property
    def speedup(self) -> float:
        """How many times faster the quantized model ran: the unprofiled timing's median
        paired ratio when there is one, else the profiled layers' and other ops' sums."""
        if self.timing is not None:
            return self.timing.speedup
        q = self.layers_quantized_ms + self.other_quantized_ms
        return (self.layers_float_ms + self.other_float_ms) / q if q > 0 else math.inf

    @property
    def layers_float_ms(self) -> float:
        return sum(x.float_ms for x in self.layers)

    @property
    def layers_quantized_ms(self) -> float:
        return sum(x.quantized_ms for x in self.layers)

    @property
    def qdq_ms(self) -> float:
        return sum(x.qdq_ms for x in self.layers)

    @property
    def layout_ms(self) -> float:
        return sum(x.layout_ms for x in self.layers)

    def slower_layers(self) -> tuple[LayerSpeed, ...]:
        """Quantized layers slower than float, the most time lost first."""
        slow = [x for x in self.layers if x.quantized and x.saved_ms < 0]
        return tuple(sorted(slow, key=lambda x: x.saved_ms))

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "runs": self.runs,
            "kernel_precision": self.precision.value,
            "profiled_run_ms": {
                "float": _num(self.float_run_ms),
                "quantized": _num(self.quantized_run_ms),
            },
            "whole_model_ms": None
            if self.timing is None
            else {
                "float": _num(self.timing.a_ms),
                "quantized": _num(self.timing.b_ms),
                "speedup": _num(self.timing.speedup),
                "speedup_quartiles": [_num(self.timing.ratio_low), _num(self.timing.ratio_high)],
                "runs": self.timing.runs,
            },
            "speedup": _num(self.speedup),
            "layers_ms": {
                "float": _num(self.layers_float_ms),
                "quantized": _num(self.layers_quantized_ms),
            },
            "qdq_ms": _num(self.qdq_ms),
            "layout_ms": _num(self.layout_ms),
            "other_float_ms": _num(self.other_float_ms),
            "other_quantized_ms": _num(self.other_quantized_ms),
            "layers": [x.to_json() for x in self.layers],
        }


# --------------------------------------------------------------------------- attribution


def named_float(model: LoadedModel) -> onnx.ModelProto:
    """The float model with every node named as the Q/DQ builder names them (so profiles of
    both map to the same names); the model itself when it already is."""
    graph = model.model.graph
    names = [n.name for n in graph.node]
    if all(names) and len(set(names)) == len(names):
        return model.model
    out = onnx.ModelProto()
    out.CopyFrom(model.model)
    name_nodes(out.graph)
    unique_node_names(out.graph)
    return out


def _kernel_name(node: onnx.NodeProto | None, op: str) -> str:
    if node is not None and node.domain in _LAYOUT_DOMAINS:
        return f"{op} ({_LAYOUT_DOMAINS[node.domain]})"
    return op


@dataclass
class _Charges:
    """Times charged while walking one profile."""

    kernel: dict[str, float] = field(default_factory=dict)  # layer -> ms
    kernel_op: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> op -> ms
    qdq: dict[str, float] = field(default_factory=dict)
    qdq_nodes: dict[str, list[str]] = field(default_factory=dict)
    layout: dict[str, float] = field(default_factory=dict)
    weight_dq: set[str] = field(default_factory=set)
    node_ms: dict[str, float] = field(default_factory=dict)  # source node -> ms
    other: float = 0.0


def _serving(graph: onnx.GraphProto, added: set[str], layer_of: Mapping[str, str]) -> dict[
    str, tuple[str, ...]
]:
    """Each node the Q/DQ builder added → the layers it quantizes for: the layers its values
    reach through other added nodes and pass-through ops, else (a layer's output Q/DQ going
    nowhere quantized) the layer it comes from."""
    by_name = {n.name: n for n in graph.node}
    producer = {o: n.name for n in graph.node for o in n.output if o}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n.name)

    def through(name: str) -> bool:
        return name in added or by_name[name].op_type in _PASS_OPS

    def walk(start: str, down: bool) -> list[str]:
        found: list[str] = []
        seen = {start}
        stack = [start]
        while stack:
            node = by_name[stack.pop()]
            nxt = (
                [c for o in node.output if o for c in consumers.get(o, [])]
                if down
                else [producer[i] for i in node.input if i in producer]
            )
            for other in nxt:
                if other in seen:
                    continue
                seen.add(other)
                if other in layer_of:
                    found.append(layer_of[other])
                elif through(other):
                    stack.append(other)
        return found

    return {
        name: tuple(dict.fromkeys(walk(name, True) or walk(name, False))) for name in added
    }


def _charge(
    profile: SessionProfile,
    node_map: NodeMap,
    layer_of: Mapping[str, str],
    serving: Mapping[str, tuple[str, ...]],
    weight_dqs: set[str],
) -> _Charges:
    """Charge every profiled node of one session to layers, Q/DQ, layout or other."""
    c = _Charges()
    opt_nodes = {n.name: n for n in profile.optimized.node}
    for name, t in profile.nodes.items():
        covered = node_map.covers.get(name, ())
        layers = [layer_of[s] for s in covered if s in layer_of]
        own = node_map.named.get(name)
        if layers:
            share = t.ms / len(layers)
            op = _kernel_name(opt_nodes.get(name), t.op_type)
            for layer in layers:
                c.kernel[layer] = c.kernel.get(layer, 0.0) + share
                ops = c.kernel_op.setdefault(layer, {})
                ops[op] = ops.get(op, 0.0) + share
            for s in covered:
                if s in layer_of:
                    c.node_ms[s] = c.node_ms.get(s, 0.0) + share
        elif own is not None and own not in serving:
            # An original op (a Reshape) that absorbed Q/DQ nodes: its own time, the
            # absorbed Q/DQ cost nothing.
            c.node_ms[own] = c.node_ms.get(own, 0.0) + t.ms
            c.other += t.ms
        elif own is None and t.op_type in _LAYOUT_OPS:
            _charge_layout(c, node_map, name, t.ms, layer_of)
        elif qdq_srcs := [s for s in covered if s in serving]:
            targets = [x for s in qdq_srcs for x in serving[s]]
            if not targets:
                c.other += t.ms
                continue
            share = t.ms / len(targets)
            dequantizes_weight = any(s in weight_dqs for s in qdq_srcs)
            for layer in targets:
                c.qdq[layer] = c.qdq.get(layer, 0.0) + share
                c.qdq_nodes.setdefault(layer, []).append(name)
                if dequantizes_weight and t.op_type == "DequantizeLinear":
                    c.weight_dq.add(layer)
        elif covered:
            share = t.ms / len(covered)
            for s in covered:
                c.node_ms[s] = c.node_ms.get(s, 0.0) + share
            c.other += t.ms
        else:
            _charge_layout(c, node_map, name, t.ms, layer_of)
    return c


def _charge_layout(
    c: _Charges, node_map: NodeMap, name: str, ms: float, layer_of: Mapping[str, str]
) -> None:
    """A node ORT added (a layout change): charged to the layer it serves, else other."""

    def covers_layer(opt: str) -> bool:
        return any(s in layer_of for s in node_map.covers.get(opt, ()))

    near = node_map.nearest(name, covers_layer)
    if near is None:
        c.other += ms
        return
    target = next(layer_of[s] for s in node_map.covers[near] if s in layer_of)
    c.layout[target] = c.layout.get(target, 0.0) + ms


def attribute(
    model: LoadedModel,
    qdq: QdqModel,
    float_profile: SessionProfile,
    quantized_profile: SessionProfile,
    *,
    batch_size: int,
    threads: int = 0,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
) -> SpeedProfile:
    """The `SpeedProfile` of two profiles: `float_profile` of `named_float(model)` and
    `quantized_profile` of `qdq.model`."""
    float_graph = named_float(model).graph
    q_graph = qdq.model.graph
    float_names = {n.name for n in float_graph.node}
    layer_of = {layer.node_name: layer.name for layer in model.layers}
    added = {n.name for n in q_graph.node if n.name not in float_names}
    serving = _serving(q_graph, added, layer_of)
    stored = {t.stored_name for t in qdq.tensors if t.stored_name}
    weight_dqs = {
        n.name for n in q_graph.node if n.name in added and n.input and n.input[0] in stored
    }
    f = _charge(float_profile, map_nodes(float_graph, float_profile.optimized), layer_of, {},
                set())
    q = _charge(quantized_profile, map_nodes(q_graph, quantized_profile.optimized), layer_of,
                serving, weight_dqs)
    quantized_layers = set(qdq.layer_names)
    layers = []
    for layer in model.layers:
        n = layer.name
        f_ops, q_ops = f.kernel_op.get(n, {}), q.kernel_op.get(n, {})
        layers.append(
            LayerSpeed(
                name=n,
                node=layer.node_name,
                op_type=layer.op_type,
                depth=layer.depth,
                quantized=n in quantized_layers,
                float_ms=f.kernel.get(n, 0.0) + f.layout.get(n, 0.0),
                kernel_ms=q.kernel.get(n, 0.0),
                qdq_ms=q.qdq.get(n, 0.0),
                layout_ms=q.layout.get(n, 0.0),
                float_kernel=max(f_ops, key=f_ops.__getitem__) if f_ops else "",
                kernel=max(q_ops, key=q_ops.__getitem__) if q_ops else "",
                qdq_nodes=tuple(dict.fromkeys(q.qdq_nodes.get(n, []))),
                weight_dequantized=n in q.weight_dq,
                float_layout_ms=f.layout.get(n, 0.0),
            )
        )
    index = {n.name: i for i, n in enumerate(float_graph.node)}
    node_speeds = []
    for name in sorted(set(f.node_ms) | set(q.node_ms), key=lambda s: index.get(s, -1)):
        if name in index:
            node_speeds.append(
                NodeSpeed(index[name], name, f.node_ms.get(name, 0.0), q.node_ms.get(name, 0.0))
            )
    return SpeedProfile(
        batch_size=batch_size,
        threads=threads,
        runs=min(float_profile.runs, quantized_profile.runs),
        float_run_ms=float_profile.run_ms,
        quantized_run_ms=quantized_profile.run_ms,
        layers=tuple(layers),
        nodes=tuple(node_speeds),
        other_float_ms=f.other,
        other_quantized_ms=q.other,
        precision=precision,
    )


def layer_speed(
    model: LoadedModel,
    qdq: QdqModel,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: Threads | None = None,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    budget: TimingBudget | None = None,
    whole_model: bool = True,
    batch_size: int | None = None,
) -> SpeedProfile:
    """Profile the float model and `qdq` (fused by ORT) side by side on `feeds` and charge
    every node's time to qviz's layers (see the module docstring); with `whole_model`, also
    time both models without the profiler (`time_pair`, within the same budget).
    `batch_size` is how many samples `feeds` hold (`Dataset.samples_in`; by default the
    first axis of the first input with one)."""
    threads = threads or Threads()
    float_model = named_float(model)
    float_config = SessionConfig.for_float(threads)
    native_config = SessionConfig.for_native(precision, threads)
    float_profile, q_profile = profile_pair(
        float_model, float_config, qdq.model, native_config, feeds, budget,
        data_dirs=(model.data_dir, qdq.data_dir),
    )
    timing = None
    if whole_model:
        timing = time_pair(
            build_session(model.model, float_config, what="the float model",
                          data_dir=model.data_dir),
            build_session(qdq.model, native_config, what="the quantized model",
                          data_dir=qdq.data_dir),
            feeds,
            budget,
        )
    batch = batch_size if batch_size is not None else _batch_size(feeds)
    speed = attribute(model, qdq, float_profile, q_profile, batch_size=batch,
                      threads=threads.intra_op, precision=precision)
    return replace(speed, timing=timing)


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    for v in feeds.values():
        if np.ndim(v) > 0:
            return int(np.shape(v)[0])
    return 1

