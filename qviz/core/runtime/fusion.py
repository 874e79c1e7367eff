"""Which quantized layers ONNX Runtime actually turned into integer kernels, and why not.

A Q/DQ graph only *describes* quantization; ORT decides at session creation which
``DQ → op → Q`` patterns it can replace by a real integer kernel (QLinearConv, QGemm,
QLinearMatMul, MatMulInteger...). The only reliable way to know is to ask it: the session
saves its optimized graph, and the layers are found again in it by node name (ORT keeps the
original node's name on the fused node) or by the quantized weight initializer they read.

For a layer left in float the reason is given where qviz can know it (its format has no
integer kernel on the CPU, the weights are per-group, the output is not quantized...).

On x86-64 CPUs with AVX2 but no VNNI, ORT's default u8s8 kernels add pairs of uint8 x int8
products in 16 bits and can saturate (`qviz.core.runtime.cpu`). With 7-bit weights (ONNX
Runtime's ``reduce_range``; qviz's int7, stored in int8) a pair is at most
2 x 255 x 64 = 32640, which fits: the report says so when fused layers have 8-bit weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import onnx

from qviz.core.graph.containers import container_dtype
from qviz.core.graph.qdq import QdqLayer, QdqMode, QdqModel, QdqTensor
from qviz.core.quant.formats import FormatKind
from qviz.core.runtime.cpu import u8s8_may_saturate
from qviz.core.runtime.sessions import (
    KernelPrecision,
    Optimization,
    SessionConfig,
    build_session,
)

__all__ = [
    "INTEGER_KERNELS",
    "KEEP_FLOAT",
    "SATURATION_NOTE",
    "WEIGHT_ONLY_KERNELS",
    "FusionReport",
    "fusion_report",
    "unfused",
    "unfused_reason",
]

#: ORT ops that compute with integer inputs and weights.
INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearConvTranspose",
        "QAttention",
        "DynamicQuantizeLSTM",
    }
)
#: ORT ops that keep weights quantized and dequantize them inside the kernel.
WEIGHT_ONLY_KERNELS = frozenset({"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"})


@dataclass(frozen=True)
class FusionReport:
    """Layers (by display name) ORT fused into integer kernels, and the others with a reason.

    ``kernels`` maps each fused layer to the ORT op it became; ``weight_only`` lists layers run
    by a weight-only kernel (MatMulNBits: int4 weights, float activations); ``fixes`` says,
    for each layer left in float, what would let it fuse (or that keeping it float costs
    nothing in speed). ``saturating``
    lists the fused layers whose 8-bit signed weights ORT's default u8s8 kernels can saturate
    on this CPU (AVX2 without VNNI); it is empty where that cannot happen.
    """

    fused: tuple[str, ...]
    unfused: Mapping[str, str]
    kernels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    weight_only: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    saturating: tuple[str, ...] = ()
    fixes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "unfused", MappingProxyType(dict(self.unfused)))
        object.__setattr__(self, "kernels", MappingProxyType(dict(self.kernels)))
        object.__setattr__(self, "fixes", MappingProxyType(dict(self.fixes)))

    @property
    def n_layers(self) -> int:
        return len(self.fused) + len(self.unfused)

    def to_json(self) -> dict[str, object]:
        return {
            "fused": list(self.fused),
            "kernels": dict(self.kernels),
            "weight_only": list(self.weight_only),
            "unfused": dict(self.unfused),
            "fixes": dict(self.fixes),
            "saturating": list(self.saturating),
            "notes": list(self.notes),
        }


def optimized_graph(qdq: QdqModel, precision: KernelPrecision) -> onnx.ModelProto:
    """The graph ORT runs after its (extended) optimizations, read back from disk.

    "Extended" holds every Q/DQ fusion; "all" only adds layout changes (NCHWc) on top, which
    ORT warns make a saved graph machine-specific.
    """
    with tempfile.TemporaryDirectory(prefix="qviz-fusion-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        config = SessionConfig.for_native(precision, optimization=Optimization.EXTENDED)
        build_session(
            qdq.model,
            config,
            what="the quantized model",
            optimized_model_path=path,
            data_dir=qdq.data_dir,
        )
        # The graph only: its weights (in a data file beside it for a large model) are not
        # needed to see which kernels ORT chose.
        return onnx.load(path, load_external_data=False)


# What fixes each kind of unfused layer. Keeping the layer float is always an answer: it then
# runs at float speed without the Q/DQ nodes a layer left unfused pays for on every run.
KEEP_FLOAT = "keep the layer float (it then runs at float speed, without Q/DQ nodes)"


def _format_reason(t: QdqTensor, what: str) -> tuple[str, str] | None:
    """Why a tensor's format rules out ORT's CPU integer kernels and what would not, or None
    if it does not."""
    if t.mode is QdqMode.SIMULATED:
        if container_dtype(t.fmt) is None:
            return (
                f"{what} in {t.fmt.spec} have no ONNX type: simulation only",
                "use int8 (or per-group int4 weights on a MatMul, ORT's MatMulNBits), or "
                + KEEP_FLOAT,
            )
        return (
            f"{what} in {t.fmt.spec} are clipped to {t.fmt.bits} bits after an 8-bit Q/DQ: "
            f"simulation only, no integer kernel reads them",
            f"use 8-bit {what} (int8 or uint8), or {KEEP_FLOAT}",
        )
    if t.fmt.kind in (FormatKind.FP8_E4M3FN, FormatKind.FP8_E5M2):
        return (
            f"{what} in {t.fmt.spec}: ONNX Runtime's CPU provider has no FP8 kernels",
            f"use int8 {what}, or {KEEP_FLOAT}",
        )
    if t.fmt.bits == 4:
        return (
            f"{what} in {t.fmt.spec}: no 4-bit integer kernel for this op on CPU",
            "use int8 weights (per-group int4 runs natively only on a MatMul, as MatMulNBits), "
            "or " + KEEP_FLOAT,
        )
    return None


def unfused(plan: QdqLayer) -> tuple[str, str]:
    """Why ORT left a quantized layer in float (the best explanation qviz can give), and what
    would let it fuse."""
    layer = plan.layer
    if plan.weight is not None:
        found = _format_reason(plan.weight, "weights")
        if found:
            return found
        if plan.weight.qparams.block_size is not None and layer.op_type != "MatMul":
            return (
                f"per-group weights: ORT has no blocked-weight {layer.op_type} kernel",
                "use per-channel weights, or " + KEEP_FLOAT,
            )
    elif layer.weight is not None:
        return (
            "weights kept in float",
            "quantize its weights too, or keep its input float as well",
        )
    for t in plan.inputs:
        found = _format_reason(t, "activations")
        if found:
            return found
    if plan.float_inputs:
        names = ", ".join(plan.float_inputs)
        return f"input {names} is not quantized", f"quantize {names} too, or {KEEP_FLOAT}"
    if layer.weight is None and layer.op_type == "MatMul":
        if plan.output is None:
            return (
                f"activation x activation MatMul needs a quantized output to become "
                f"QLinearMatMul ({plan.output_note})",
                "quantize the input its output feeds (ORT fuses DQ → MatMul → Q), or "
                + KEEP_FLOAT,
            )
        return "activation x activation MatMul not fused by ONNX Runtime", KEEP_FLOAT
    if layer.op_type == "Add" and plan.output is None:
        # A join whose output goes to a float op (the last residual Add before the pool):
        # quantized inputs let the layers before it fuse; ORT runs the Add itself in float.
        return (
            f"an Add becomes QLinearAdd only with its output quantized ({plan.output_note}); "
            "its quantized inputs still let the layers before it fuse",
            "nothing to gain here: the op its output feeds has no integer kernel in qviz, or "
            + KEEP_FLOAT,
        )
    if layer.op_type in ("Conv", "ConvTranspose") and plan.output is None:
        return (
            f"output not quantized ({plan.output_note})",
            "quantize the input of the layer its output feeds (ORT fuses DQ → Conv → Q "
            "only), or " + KEEP_FLOAT,
        )
    if plan.weight is not None and plan.weight.qparams.block_size is not None:
        return (
            "per-group weights: not matched by ORT's blocked MatMul fusion",
            "use int4 weights in blocks of 16, 32, 64 or 128 along the reduction axis "
            "(MatMulNBits), or per-channel int8",
        )
    if plan.bias_note:
        return plan.bias_note, "use 8-bit integer inputs and weights, or " + KEEP_FLOAT
    return "ONNX Runtime did not fuse this pattern (no reason known to qviz)", KEEP_FLOAT


def unfused_reason(plan: QdqLayer) -> str:
    """The best explanation qviz can give for a quantized layer ORT left in float."""
    return unfused(plan)[0]


def _kernel_of_layers(optimized: onnx.ModelProto, qdq: QdqModel) -> dict[str, str]:
    """Layer display name -> op type of the node that computes it in the optimized graph."""
    by_node = {p.layer.node_name: p.layer.name for p in qdq.layers}
    by_weight = {
        p.weight.stored_name: p.layer.name
        for p in qdq.layers
        if p.weight is not None and p.weight.stored_name
    }
    found: dict[str, str] = {}
    for node in optimized.graph.node:
        name = by_node.get(node.name)
        if name is None:
            name = next((by_weight[i] for i in node.input if i in by_weight), None)
        if name is not None and name not in found:
            found[name] = node.op_type
    return found


#: The note a report carries when fused layers can saturate. (On qviz's demo this cost 4.5
#: accuracy points natively with 8-bit weights, and 0.3 with 7-bit ones: docs/benchmarks.md.)
SATURATION_NOTE = (
    "this CPU has AVX2 without VNNI, so ORT's default int8 kernels can saturate their 16-bit "
    "sums with 8-bit weights: compare native with simulated accuracy, and if they differ use "
    "7-bit weights (int7, ORT's reduce_range) or the precise int8 kernels "
    "(session.x64quantprecision=1, slower)"
)


def _saturation_prone(plan: QdqLayer) -> bool:
    """Whether ORT's u8s8 kernels get int8 values beyond 7 bits as this layer's second
    operand: 8-bit signed weights (or the second activation of an activation x activation
    MatMul). 2..7-bit weights in their int8 container cannot saturate."""
    if plan.weight is not None:
        second: QdqTensor | None = plan.weight
    else:
        second = plan.inputs[1] if len(plan.inputs) == 2 else None
    return (
        second is not None
        and container_dtype(second.fmt) == onnx.TensorProto.INT8
        and second.fmt.bits == 8
    )


# Zero-point types for which "zero point 0" is the type minimum, so a Relu before the Q is
# redundant and ORT may drop it.
_ZERO_IS_MIN = frozenset({onnx.TensorProto.UINT8, onnx.TensorProto.UINT4, onnx.TensorProto.UINT16})


def _dropped_relu_notes(qdq: QdqModel, optimized: onnx.ModelProto) -> list[str]:
    """Relus ORT removed before a QuantizeLinear whose type can hold negative values.

    ORT drops ``Relu → QuantizeLinear`` when the zero point is the type's minimum (the Q then
    clips at 0 anyway). ORT 1.32 does it for int4 and FP8 zero points of 0 too, which are not
    minima: negative values then pass through and native results go wrong. Seen, not guessed.
    """
    graph = qdq.model.graph
    inits = {i.name: i for i in graph.initializer}
    kept = {n.name for n in optimized.graph.node}
    notes = []
    for relu in graph.node:
        if relu.op_type != "Relu" or relu.name in kept:
            continue
        for q in graph.node:
            if q.op_type != "QuantizeLinear" or relu.output[0] not in q.input[:1]:
                continue
            zp = inits.get(q.input[2]) if len(q.input) > 2 else None
            if zp is None or zp.data_type in _ZERO_IS_MIN:
                continue
            if zp.data_type == onnx.TensorProto.INT8 and onnx.numpy_helper.to_array(zp) == -128:
                continue
            dtype = onnx.helper.tensor_dtype_to_string(zp.data_type).removeprefix("TensorProto.")
            notes.append(
                f"ONNX Runtime removed Relu '{relu.name}' before a {dtype} QuantizeLinear "
                f"(zero point not the type minimum): negative values pass, native results "
                f"are wrong there"
            )
    return notes


def fusion_report(
    qdq: QdqModel, precision: KernelPrecision = KernelPrecision.DEFAULT
) -> FusionReport:
    """Create an optimizing ORT session for `qdq` and report, per quantized layer, whether it
    now runs as an integer kernel (and which), or why not."""
    optimized = optimized_graph(qdq, precision)
    kernels = _kernel_of_layers(optimized, qdq)
    fused: list[str] = []
    weight_only: list[str] = []
    unfused_layers: dict[str, str] = {}
    fixes: dict[str, str] = {}
    fused_kernels: dict[str, str] = {}
    notes: list[str] = []
    for plan in qdq.layers:
        name = plan.layer.name
        op = kernels.get(name, "")
        integer = op in INTEGER_KERNELS or op.startswith("QLinear")
        simulated = plan.weight is not None and plan.weight.mode is QdqMode.SIMULATED
        float_weight = plan.weight is None and plan.layer.weight is not None
        if integer and (simulated or float_weight):
            # ORT quantizes float weights between a DQ'd input and a Q'd output on its own
            # (WeightBiasQuantization): fused, but not with the weights qviz configured.
            what = "weights are simulation only" if simulated else "weights are float"
            unfused_layers[name] = (
                f"{what}; ORT re-quantized them to int8 itself and ran {op}, so native "
                f"results do not show the configured format"
            )
            fixes[name] = "quantize its weights as int8 in qviz, or " + KEEP_FLOAT
        elif integer or op in WEIGHT_ONLY_KERNELS:
            fused.append(name)
            fused_kernels[name] = op
            if op in WEIGHT_ONLY_KERNELS:
                weight_only.append(name)
        else:
            unfused_layers[name], fixes[name] = unfused(plan)
    notes.extend(_dropped_relu_notes(qdq, optimized))
    saturating: tuple[str, ...] = ()
    if precision is KernelPrecision.DEFAULT and u8s8_may_saturate():
        fused_plans = {p.layer.name: p for p in qdq.layers if p.layer.name in fused_kernels}
        saturating = tuple(
            name
            for name, plan in fused_plans.items()
            if fused_kernels[name] not in WEIGHT_ONLY_KERNELS and _saturation_prone(plan)
        )
    if saturating:
        notes.append(SATURATION_NOTE)
    return FusionReport(
        tuple(fused),
        unfused_layers,
        fused_kernels,
        tuple(weight_only),
        tuple(notes),
        saturating,
        fixes,
    )
