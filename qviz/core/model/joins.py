"""Which Adds joining two branches are quantizable layers: the residual joins of CNNs.

ONNX Runtime runs ``DQ(a), DQ(b) → Add → Q`` as one QLinearAdd. In a residual CNN
(``conv2 → Add(skip) → Relu → next conv``) the Add is then integer, and so is the conv before
it (its output is quantized: QLinearConv); left float, the Add makes ORT dequantize before it
and requantize after, and the conv before it stays float with its weights dequantized on every
run. So such an Add is a layer without a weight (``Layer.weight`` None, ``activations=(a, b)``,
like the activation x activation MatMul), but only where quantizing it lets the chain stay
integer:

* both its inputs come from layers or other such joins (through the same ops, backwards): no
  quantization is added after a float op (this leaves out the rotary-embedding Add of
  attention, whose inputs are Muls);
* its output reaches, through one chain of ops that carry a quantization exactly (Relu, Clip,
  MaxPool, reshapes, Concat...: the Q/DQ builder's transparent ops and the placement pass's
  data-movement ops), a tensor that only layers and other such joins read — so the builder
  or the placement pass quantizes the Add's output too (QLinearAdd needs its Q);
* or it reads such a tensor (the last residual join of a ResNet, whose output goes to the
  float average pool: its skip input is the previous join's output, which the next conv reads
  quantized, so this Add must read it quantized too for that tensor to be quantized at all).

A transformer's residual Add feeds a LayerNorm/RMSNorm (and the next residual Add): neither
rule holds, so encoders and decoders are unchanged. Mul is not included: ORT fuses QLinearMul
the same way, but the Muls between two activations in the models qviz sees are SwiGLU and
SiLU gates and norm scales, where quantizing the product is not what the user asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

from qviz.core.model.onnx_graph import subgraph_references

__all__ = ["JOIN_OP_TYPES", "PASS_THROUGH_OPS", "quantizable_joins"]

#: Op types a join layer can be.
JOIN_OP_TYPES = frozenset({"Add"})

#: Ops between a join and the next quantized input through which its output's quantization is
#: carried exactly: the Q/DQ builder's transparent ops (qviz.core.graph.qdq_builder) and the
#: ops the placement pass moves quantizations through (qviz.core.graph.placement.DATA_INPUTS).
#: The graph package builds on this one, so the names are listed here; a test keeps them equal.
PASS_THROUGH_OPS = frozenset(
    {
        "Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
        "Identity", "Expand", "Tile", "Slice", "Gather", "Concat", "Pad",
    }
)  # fmt: skip


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _candidate(node: onnx.NodeProto, consts: Mapping[str, object]) -> bool:
    """An Add of two different activations (no constant operand, no bias add)."""
    if node.op_type not in JOIN_OP_TYPES or not _is_default_domain(node):
        return False
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return False
    a, b = node.input
    return bool(a) and bool(b) and a != b and a not in consts and b not in consts


def _carries(node: onnx.NodeProto, tensor: str) -> bool:
    """Whether `node` carries a quantization of its input `tensor` to its one output exactly."""
    if node.op_type not in PASS_THROUGH_OPS or not _is_default_domain(node):
        return False
    if len([o for o in node.output if o]) != 1:
        return False
    if node.op_type == "Concat":
        return True
    if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
        return False  # a pad value other than 0 is not on the grid
    return node.input[0] == tensor


def quantizable_joins(
    graph: onnx.GraphProto,
    consts: Mapping[str, object],
    layer_inputs: Callable[[onnx.NodeProto], tuple[str, ...] | None],
) -> frozenset[int]:
    """Indices (in ``graph.node``) of the Adds that are quantizable layers (module docstring).

    ``consts`` holds the constant tensors' names; ``layer_inputs(node)`` is the activations a
    weighted or activation-product layer quantizes, None for a node that is no such layer.
    """
    nodes = list(graph.node)
    candidates = {i for i, n in enumerate(nodes) if _candidate(n, consts)}
    if not candidates:
        return frozenset()
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}

    def reads_as_activation(node: onnx.NodeProto, tensor: str) -> bool:
        found = layer_inputs(node)
        return found is not None and tensor in found

    def from_integer(tensor: str) -> bool:
        """Whether `tensor` is a layer's or a join's output, perhaps through pass-through ops."""
        seen: set[str] = set()
        while tensor not in seen and tensor not in consts:
            seen.add(tensor)
            i = producer.get(tensor)
            if i is None:
                return False  # a model input: quantizing it is a new Q at run time
            node = nodes[i]
            if i in candidates or layer_inputs(node) is not None:
                return True
            if not _carries(node, node.input[0] if node.input else ""):
                return False
            if node.op_type == "Concat":
                return all(from_integer(x) for x in node.input if x and x not in consts)
            tensor = node.input[0]
        return False

    candidates = {i for i in candidates if all(from_integer(x) for x in nodes[i].input)}
    if not candidates:
        return frozenset()
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in dict.fromkeys(n.input):
            if name:
                consumers.setdefault(name, []).append(i)
    outputs = {o.name for o in graph.output}
    refs = subgraph_references(graph)

    def quantized_readers_only(tensor: str) -> bool:
        readers = consumers.get(tensor, [])
        return bool(readers) and all(
            r in candidates or reads_as_activation(nodes[r], tensor) for r in readers
        )

    def end_of_chain(tensor: str) -> str | None:
        """The tensor the join's output quantization is carried to, or None."""
        seen: set[str] = set()
        while tensor not in seen:
            seen.add(tensor)
            if tensor in outputs or tensor in refs:
                return None
            if quantized_readers_only(tensor):
                return tensor
            readers = consumers.get(tensor, [])
            if len(readers) != 1 or not _carries(nodes[readers[0]], tensor):
                return None
            tensor = nodes[readers[0]].output[0]
        return None

    joins: set[int] = set()
    for i in candidates:
        end = end_of_chain(nodes[i].output[0])
        if end is not None:
            joins.add(i)
            # Every join reading that tensor must read it quantized for it to be quantized.
            joins.update(r for r in consumers[end] if r in candidates)
    return frozenset(joins)
