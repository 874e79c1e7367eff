"""The channel axis of each activation, from the layers that read or write it.

Per-channel activation statistics are gathered along this axis (the contraction axis of the
layer reading the tensor), so it has to be a feature axis of fixed size.
"""

from __future__ import annotations

import onnx

from qviz.core.model.layers import LAYER_OP_TYPES, Layer

__all__ = ["activation_axes", "known_shapes"]


def known_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Known shapes (None for symbolic dims) of inputs, inferred activations, outputs, weights."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[vi.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim
            )
    for t in graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def activation_axes(model: onnx.ModelProto, layers: tuple[Layer, ...]) -> dict[str, int | None]:
    """Channel axis per activation tensor, from the layers that consume or produce it.

    Per-channel statistics only make sense along a feature axis of fixed size, so where a
    rule would pick an axis whose size is symbolic (a sequence length) the other candidate
    is tried, else the answer is None.
    """
    graph = model.graph
    shapes = known_shapes(graph)
    votes: dict[str, set[int | None]] = {}
    produced: dict[str, int | None] = {}

    def pick(tensor: str, *candidates: int) -> int | None:
        """The first candidate axis (negative allowed) whose size is fixed, non-negative."""
        shape = shapes.get(tensor)
        if shape is None:
            return None
        for axis in candidates:
            if -len(shape) <= axis < len(shape) and shape[axis] is not None:
                return axis % len(shape)
        return None

    def vote(tensor: str, axis: int | None) -> None:
        votes.setdefault(tensor, set()).add(axis)

    for layer in layers:
        if layer.op_type not in LAYER_OP_TYPES:
            continue  # a layer an imported model adds (Add, Softmax, an output): no axis rule
        node = graph.node[layer.depth]
        out = node.output[0]
        if layer.op_type in ("Conv", "ConvTranspose"):
            # NC... layout: channels are axis 1 whatever the rank or spatial sizes.
            vote(node.input[0], 1)
            produced[out] = 1
            continue
        produced[out] = pick(out, -1)
        attrs = {a.name: a.i for a in node.attribute}
        a, b = node.input[0], node.input[1]
        if layer.op_type == "Gemm":
            # Gemm operands are 2-D: A is [M, K] ([K, M] with transA), B is [K, N] or [N, K].
            if a in layer.activations:
                vote(a, 0 if attrs.get("transA") else 1)
            if b in layer.activations:
                vote(b, 1 if attrs.get("transB") else 0)
            continue
        # MatMul: the left operand's features are its last axis; the right operand is reduced
        # along axis -2 (for k^T in attention that is the head dim; for v it is the sequence,
        # so its last axis, the head dim, is taken instead). A 1-D operand has only axis 0.
        if a in layer.activations:
            vote(a, pick(a, -1))
        if b in layer.activations:
            vote(b, pick(b, -2, -1) if len(shapes.get(b, ())) != 1 else 0)
    axes: dict[str, int | None] = dict(produced)
    for tensor, options in votes.items():
        axes[tensor] = next(iter(options)) if len(options) == 1 else None
    return axes
