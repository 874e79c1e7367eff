"""The Gram matrix ``XᵀX`` of a layer's input rows: what GPTQ rounds weights against.

For a MatMul/Gemm layer ``y = x W`` the rows are the input vectors (contraction axis last);
for a Conv they are its im2col patches (input channel x kernel position, in the order of the
weight's ``(C, kh, kw)`` axes flattened), so ``‖(W_q - W) x‖²`` summed over the calibration
data is ``tr(ΔW H ΔWᵀ)`` with ``H = XᵀX``. Memory is ``d²`` float64 per matrix whatever the
number of samples; :func:`gram_bytes` says what a model needs before anything runs, and
collection refuses with one line above a budget the user can raise.

Layers reading the same activation share one matrix (Q, K and V projections of one norm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from qviz.core.errors import QvizError
from qviz.core.model.layers import Layer
from qviz.core.text import fmt_bytes

__all__ = [
    "DEFAULT_GRAM_BUDGET",
    "GramCollector",
    "GramSpec",
    "GramStats",
    "gram_bytes",
    "gram_specs",
]

DEFAULT_GRAM_BUDGET = 1 << 30
"""Bytes all Gram matrices of a model may take (1 GiB) unless the user raises it."""


@dataclass(frozen=True, eq=False)
class GramStats:
    """``matrix`` = sum over rows of ``x xᵀ`` (d, d) float64, over ``rows`` rows.

    ``kernel`` is the number of kernel positions each input channel spans in the row layout
    (1 for MatMul/Gemm; kh·kw for a Conv's im2col rows): rescaling input channel ``c`` by
    ``1/s_c`` rescales the ``kernel`` consecutive coordinates of that channel.
    """

    matrix: np.ndarray
    rows: int
    kernel: int = 1

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"a Gram matrix must be square, not {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "rows", int(self.rows))
        object.__setattr__(self, "kernel", int(self.kernel))

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """``E[x xᵀ]`` (the matrix divided by the number of rows)."""
        return self.matrix / max(self.rows, 1)

    def scaled(self, s: np.ndarray) -> GramStats:
        """The Gram matrix of the rows of ``x / s`` (``s`` one positive value per channel)."""
        per = np.repeat(np.asarray(s, dtype=np.float64).reshape(-1), self.kernel)
        if per.size != self.dim:
            raise ValueError(f"{per.size // max(self.kernel, 1)} scales for a {self.dim}-row Gram")
        inv = 1.0 / per
        return GramStats(self.matrix * inv[:, None] * inv[None, :], self.rows, self.kernel)


@dataclass(frozen=True)
class GramSpec:
    """How to turn one activation batch into Gram rows for one layer."""

    activation: str
    weight: str
    dim: int
    axis: int  # the contraction axis (MatMul/Gemm), or 1 (Conv channels)
    conv: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    # conv: (kernel, strides, pads, dilations), 2-D

    @property
    def key(self) -> tuple[str, int, object]:
        """Layers with equal keys share one matrix."""
        return (self.activation, self.axis, self.conv)

    @property
    def kernel(self) -> int:
        return 1 if self.conv is None else int(np.prod(self.conv[0]))


def gram_specs(model_proto: onnx.ModelProto, layers: tuple[Layer, ...]) -> tuple[
    list[GramSpec], list[str]
]:
    """The Gram matrix each weighted layer needs, and why others get none."""
    specs: list[GramSpec] = []
    notes: list[str] = []
    for layer in layers:
        if layer.weight is None or layer.weight_shape is None or len(layer.activations) != 1:
            continue
        node = model_proto.graph.node[layer.depth]
        attrs = {a.name: a for a in node.attribute}
        shape = layer.weight_shape
        act = layer.activations[0]
        if layer.op_type == "MatMul" and node.input[1] == layer.weight and len(shape) == 2:
            specs.append(GramSpec(act, layer.weight, shape[0], -1))
        elif layer.op_type == "Gemm" and node.input[1] == layer.weight:
            trans_a = bool(attrs["transA"].i) if "transA" in attrs else False
            trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
            specs.append(GramSpec(act, layer.weight, shape[1] if trans_b else shape[0],
                                  0 if trans_a else -1))
        elif layer.op_type == "Conv" and len(shape) == 4:
            group = attrs["group"].i if "group" in attrs else 1
            auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
            if group != 1 or auto_pad not in ("NOTSET", "VALID"):
                notes.append(f"{layer.name}: no Gram matrix for GPTQ (grouped convolution or "
                             f"auto_pad {auto_pad})")
                continue
            kernel = tuple(shape[2:])
            strides = tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1)
            pads = tuple(attrs["pads"].ints) if "pads" in attrs else (0, 0, 0, 0)
            dil = tuple(attrs["dilations"].ints) if "dilations" in attrs else (1, 1)
            specs.append(GramSpec(act, layer.weight, shape[1] * kernel[0] * kernel[1], 1,
                                  (kernel, strides, pads, dil)))
        else:
            notes.append(f"{layer.name}: no Gram matrix for GPTQ ({layer.op_type} with its "
                         "weight in this position)")
    return specs, notes


def gram_bytes(specs: list[GramSpec]) -> int:
    """Bytes the Gram matrices of ``specs`` take (shared matrices counted once)."""
    dims = {s.key: s.dim for s in specs}
    return sum(8 * d * d for d in dims.values())


def _rows(x: np.ndarray, spec: GramSpec) -> np.ndarray:
    """The Gram rows of one batch (float32, (rows, dim))."""
    a = np.asarray(x, dtype=np.float32)
    if spec.conv is None:
        return np.moveaxis(a, spec.axis, -1).reshape(-1, a.shape[spec.axis])
    (kh, kw), (sh, sw), pads, (dh, dw) = spec.conv
    if a.ndim != 4:
        raise QvizError(f"'{spec.activation}': a 2-D convolution input must be 4-D, not {a.shape}")
    top, left, bottom, right = pads
    padded = np.pad(a, ((0, 0), (0, 0), (top, bottom), (left, right)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, OH, OW, kh, kw
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, a.shape[1] * kh * kw)


class GramCollector:
    """Accumulates the Gram matrices of ``specs`` batch by batch."""

    def __init__(self, specs: list[GramSpec], budget: int = DEFAULT_GRAM_BUDGET) -> None:
        need = gram_bytes(specs)
        if need > budget:
            raise QvizError(
                f"the Gram matrices GPTQ needs take {fmt_bytes(need)}, over the budget of "
                f"{fmt_bytes(budget)}: raise it (--gram-budget GIB) or collect without them"
            )
        self.specs = specs
        self._by_activation: dict[str, list[GramSpec]] = {}
        for s in specs:
            self._by_activation.setdefault(s.activation, []).append(s)
        self._sums: dict[tuple[str, int, object], np.ndarray] = {}
        self._rows: dict[tuple[str, int, object], int] = {}

    @property
    def activations(self) -> set[str]:
        return set(self._by_activation)

    def update(self, activation: str, x: np.ndarray) -> None:
        done: set[tuple[str, int, object]] = set()
        for spec in self._by_activation.get(activation, ()):
            if spec.key in done:
                continue
            done.add(spec.key)
            rows = _rows(x, spec)
            if rows.shape[1] != spec.dim:
                raise QvizError(
                    f"'{activation}' has {rows.shape[1]} channels where the weight "
                    f"'{spec.weight}' expects {spec.dim}"
                )
            if not np.isfinite(rows).all():
                rows = np.where(np.isfinite(rows), rows, 0.0).astype(np.float32)
            # float32 products (BLAS speed), summed over batches in float64.
            batch = (rows.T @ rows).astype(np.float64)
            if spec.key in self._sums:
                self._sums[spec.key] += batch
                self._rows[spec.key] += rows.shape[0]
            else:
                self._sums[spec.key] = batch
                self._rows[spec.key] = rows.shape[0]

    def finish(self) -> Mapping[str, GramStats]:
        """Gram statistics by weight name (layers sharing an input share the object)."""
        made: dict[tuple[str, int, object], GramStats] = {}
        out: dict[str, GramStats] = {}
        for spec in self.specs:
            if spec.key not in self._sums:
                continue
            if spec.key not in made:
                made[spec.key] = GramStats(self._sums[spec.key], self._rows[spec.key], spec.kernel)
            out[spec.weight] = made[spec.key]
        return out
