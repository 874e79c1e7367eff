"""The synthetic decoder written directly as an ONNX graph, weights streamed to disk.

The graph is built with ``onnx.helper``; every weight is drawn, written to ``NAME.onnx.data``
and dropped before the next is made, and the graph refers to it by offset. So neither a
protobuf over 2 GB nor the whole model in memory ever exists: peak memory is about the
largest weight (the embedding or the LM head) plus the graph (a few hundred kB).

The ops are the ones torch's dynamo exporter writes for :mod:`tools.synthetic.torch_builder`
(RMSNorm as Mul/ReduceMean/Add/Sqrt/Reciprocal/Mul, rotary embeddings as Slice/Neg/Concat,
the causal mask as Expand/Trilu/Add, SiLU as Sigmoid/Mul), so both builders give the same
function; a test checks they agree on the same weights. MatMul nodes are named by their module
path (``model.layers.3.self_attn.q_proj``), which qviz shows as layer names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qviz.core.files.atomic import atomic_path
from tools.synthetic.spec import (
    DECODER_NOTE,
    OPSET,
    DecoderSpec,
    iter_weights,
    metadata,
    rotary_tables,
)

#: Tensors at least this large go to the external data file; smaller ones stay inline.
EXTERNAL_MIN_BYTES = 1024
#: External tensors start at multiples of this (page size: memory-mapping friendly).
ALIGN = 4096
INPUT = "input_ids"
OUTPUT = "logits"


class _Weights:
    """Makes initializers: inline, or appended to an open external data file."""

    def __init__(self, data: BinaryIO | None, location: str) -> None:
        self._data = data
        self._location = location
        self._offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if self._data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        pad = -self._offset % ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        self._data.write(array.tobytes() if array.nbytes < (1 << 20) else array.data)
        tensor = TensorProto(
            name=name,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
            dims=array.shape,
            data_location=TensorProto.EXTERNAL,
        )
        for key, value in (
            ("location", self._location),
            ("offset", str(self._offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._offset += array.nbytes
        self.initializers.append(tensor)
        return name

    def const(self, name: str, value: list[int] | list[float] | float | int) -> str:
        dtype = np.int64 if isinstance(value, int) or (
            isinstance(value, list) and all(isinstance(v, int) for v in value)
        ) else np.float32
        return self.add(name, np.asarray(value, dtype=dtype))


class _Graph:
    """Nodes with names derived from a scope, so every tensor reads like a module path."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._counts: dict[str, int] = {}

    def op(self, op_type: str, inputs: list[str], scope: str, name: str | None = None,
           outputs: int = 1, **attrs: Any) -> list[str]:
        base = f"{scope}/{op_type}" if name is None else name
        k = self._counts.get(base, 0)
        self._counts[base] = k + 1
        node_name = base if k == 0 else f"{base}_{k}"
        outs = [f"{node_name}.output" if outputs == 1 else f"{node_name}.output_{i}"
                for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], scope: str, name: str | None = None,
            **attrs: Any) -> str:
        return self.op(op_type, inputs, scope, name, **attrs)[0]


def build_graph(spec: DecoderSpec, weights: _Weights) -> tuple[onnx.GraphProto, list[str]]:
    """The decoder graph; weights are made through ``weights``. Returns the graph and the
    names of the tensors carrying the planted channels (the RMSNorm outputs)."""
    g = _Graph()
    made = dict((w.name, weights.add(w.name, a)) for w, a in iter_weights(spec))
    c = weights.const
    one, two_f, eps = c("const.one_i64", 1), c("const.two", 2.0), c("const.eps", spec.eps)
    axis_last, zero = c("const.axis_last", [-1]), c("const.zero_i64", [0])
    cos_t, sin_t = rotary_tables(spec)
    cos = weights.add("model.rotary_emb.cos", cos_t)
    sin = weights.add("model.rotary_emb.sin", sin_t)
    shape_qkv = c("const.shape_heads", [0, 0, spec.heads, spec.head_dim])
    shape_merge = c("const.shape_merge", [0, 0, spec.hidden])
    scale = c("const.attn_scale", float(np.sqrt(spec.head_dim)))
    neg_inf = c("const.neg_inf", float("-inf"))

    seq = g.one("Shape", [INPUT], "model", start=1, end=2)
    seq2 = g.one("Concat", [seq, seq], "model.causal_mask", axis=0)
    full = g.one("Expand", [neg_inf, seq2], "model.causal_mask")
    mask = g.one("Trilu", [full, one], "model.causal_mask", upper=1)
    cos_s = g.one("Slice", [cos, zero, seq, zero], "model.rotary_emb")
    sin_s = g.one("Slice", [sin, zero, seq, zero], "model.rotary_emb")

    def rms_norm(x: str, scope: str) -> str:
        sq = g.one("Pow", [x, two_f], scope)
        mean = g.one("ReduceMean", [sq, axis_last], scope, keepdims=1)
        root = g.one("Sqrt", [g.one("Add", [mean, eps], scope)], scope)
        normed = g.one("Mul", [x, g.one("Reciprocal", [root], scope)], scope)
        return g.one("Mul", [normed, made[f"{scope}.weight"]], scope,
                     name=scope)

    def linear(x: str, scope: str) -> str:
        return g.one("MatMul", [x, made[f"{scope}.weight"]], scope, name=scope)


    def heads(x: str, scope: str) -> str:
        return g.one("Transpose", [g.one("Reshape", [x, shape_qkv], scope)], scope,
                     perm=[0, 2, 1, 3])

    def rotate(x: str, scope: str) -> str:
        x1, x2 = g.op("Split", [x], scope, outputs=2, axis=-1, num_outputs=2)
        turned = g.one("Concat", [g.one("Neg", [x2], scope), x1], scope, axis=-1)
        return g.one("Add", [g.one("Mul", [x, cos_s], scope),
                             g.one("Mul", [turned, sin_s], scope)], scope)

    planted: list[str] = []
    h = g.one("Gather", [made["model.embed_tokens.weight"], INPUT], "model.embed_tokens",
              name="model.embed_tokens")
    for n in range(spec.layers):
        p = f"model.layers.{n}"
        a = f"{p}.self_attn"
        x = rms_norm(h, f"{p}.input_layernorm")
        planted.append(x)
        q = rotate(heads(linear(x, f"{a}.q_proj"), a), f"{a}.rotary_q")
        k = rotate(heads(linear(x, f"{a}.k_proj"), a), f"{a}.rotary_k")
        v = heads(linear(x, f"{a}.v_proj"), a)
        kt = g.one("Transpose", [k], a, perm=[0, 1, 3, 2])
        scores = g.one("MatMul", [q, kt], a, name=f"{a}.scores")
        scores = g.one("Add", [g.one("Div", [scores, scale], a), mask], a)
        probs = g.one("Softmax", [scores], a, axis=-1)
        ctx = g.one("MatMul", [probs, v], a, name=f"{a}.context")
        ctx = g.one("Reshape", [g.one("Transpose", [ctx], a, perm=[0, 2, 1, 3]), shape_merge],
                    a)
        h = g.one("Add", [h, linear(ctx, f"{a}.o_proj")], p, name=f"{p}/residual_attn")
        m = f"{p}.mlp"
        x = rms_norm(h, f"{p}.post_attention_layernorm")
        planted.append(x)
        gate = linear(x, f"{m}.gate_proj")
        act = g.one("Mul", [gate, g.one("Sigmoid", [gate], f"{m}.act_fn")], f"{m}.act_fn")
        prod = g.one("Mul", [act, linear(x, f"{m}.up_proj")], m)
        h = g.one("Add", [h, linear(prod, f"{m}.down_proj")], p, name=f"{p}/residual_mlp")
    x = rms_norm(h, "model.norm")
    planted.append(x)
    g.nodes.append(helper.make_node("MatMul", [x, made["lm_head.weight"]], [OUTPUT],
                                    name="lm_head"))

    graph = helper.make_graph(
        g.nodes,
        "synthetic_decoder",
        [helper.make_tensor_value_info(INPUT, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                       ["batch", "seq", spec.vocab])],
        initializer=weights.initializers,
    )
    return graph, planted


def _model(graph: onnx.GraphProto, props: dict[str, str]) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="qviz tools/make_decoder.py",
    )
    model.ir_version = 10  # what ONNX Runtime 1.20+ reads; opset 20 needs IR 9 at least
    helper.set_model_props(model, props)
    return model


def decoder_proto(spec: DecoderSpec) -> onnx.ModelProto:
    """The whole model in memory (weights inline): for tiny models and tests."""
    weights = _Weights(None, "")
    graph, planted = build_graph(spec, weights)
    return _model(graph, metadata("decoder", spec.to_json(), spec.outlier_plan(), planted,
                                  DECODER_NOTE))


@contextmanager
def _maybe_open(path: Path | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield None
        return
    with open(path, "wb") as f:
        yield f


def write_decoder(spec: DecoderSpec, path: Path, *, external: bool) -> list[Path]:
    """Write the decoder to ``path`` (+ ``path.name + '.data'`` when ``external``).

    Both files appear only when complete (written under temporary names, then renamed).
    Returns the files written.
    """
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    if not external and spec.weight_bytes > (2 << 30) - (16 << 20):
        raise ValueError("models over 2 GB need external data")
    with atomic_path(path, make_parents=True) as tmp_model:  # the tool makes its folder
        if external:
            with atomic_path(data_path) as tmp_data:
                with _maybe_open(tmp_data) as f:
                    weights = _Weights(f, data_path.name)
                    graph, planted = build_graph(spec, weights)
                    f.flush()  # type: ignore[union-attr]
                    os.fsync(f.fileno())  # type: ignore[union-attr]
                _save(graph, planted, spec, tmp_model)
            return [path, data_path]
        weights = _Weights(None, "")
        graph, planted = build_graph(spec, weights)
        _save(graph, planted, spec, tmp_model)
    data_path.unlink(missing_ok=True)  # a stale data file from an earlier external write
    return [path]


def _save(graph: onnx.GraphProto, planted: list[str], spec: DecoderSpec, path: Path) -> None:
    model = _model(graph, metadata("decoder", spec.to_json(), spec.outlier_plan(), planted,
                                   DECODER_NOTE))
    path.write_bytes(model.SerializeToString())
