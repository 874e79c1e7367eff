"""A large transformer-style ONNX graph built in code: the graph view's scale test.

`make_transformer_stack(blocks)` is a decoder-like stack of pre-norm blocks whose nodes are
named the way PyTorch's ONNX exporter names them (``/model/layers.3/self_attn/q_proj/MatMul``),
with RMSNorm written out as its seven elementwise ops, as exporters leave it. 38 nodes per
block: 40 blocks make about 1,530 nodes, 130 blocks about 4,950. Weights are tiny (hidden 16)
and deterministic, so the model loads, checks and runs in milliseconds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
NODES_PER_BLOCK = 38


class _Builder:
    def __init__(self, hidden: int, heads: int, seed: int) -> None:
        self.d, self.h = hidden, heads
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, *shape: int) -> str:
        w = (self.rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        return self.const(name, w)

    def op(self, scope: str, op_type: str, inputs: list[str], suffix: str = "",
           **attrs: object) -> str:
        name = f"{scope}/{op_type}{suffix}"
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def rms_norm(self, scope: str, x: str, weight: str) -> str:
        two = self.const(f"{scope}.two", np.array(2.0, np.float32))
        eps = self.const(f"{scope}.eps", np.array(1e-6, np.float32))
        sq = self.op(scope, "Pow", [x, two])
        mean = self.op(scope, "ReduceMean", [sq], axes=[-1], keepdims=1)
        var = self.op(scope, "Add", [mean, eps])
        std = self.op(scope, "Sqrt", [var])
        inv = self.op(scope, "Reciprocal", [std])
        normed = self.op(scope, "Mul", [x, inv])
        return self.op(scope, "Mul", [normed, weight], "_1")

    def block(self, i: int, x: str) -> str:
        d, h = self.d, self.h
        dh = d // h
        p = f"/model/layers.{i}"
        w = f"model.layers.{i}"
        ln1 = self.rms_norm(f"{p}/input_layernorm",
                            x, self.const(f"{w}.input_layernorm.weight", np.ones(d, np.float32)))
        split = self.const(f"{w}.heads_shape", np.array([0, 0, h, dh], np.int64))
        merged = self.const(f"{w}.merged_shape", np.array([0, 0, d], np.int64))
        heads = {}
        for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            scope = f"{p}/self_attn/{name}_proj"
            proj = self.op(scope, "MatMul", [ln1, self.weight(f"{w}.self_attn.{name}_proj.weight",
                                                               d, d)])
            shaped = self.op(f"{p}/self_attn", "Reshape", [proj, split], f"_{name}")
            heads[name] = self.op(f"{p}/self_attn", "Transpose", [shaped], f"_{name}", perm=perm)
        attn = f"{p}/self_attn"
        scores = self.op(attn, "MatMul", [heads["q"], heads["k"]])
        scale = self.const(f"{w}.self_attn.scale", np.array(np.sqrt(dh), np.float32))
        scaled = self.op(attn, "Div", [scores, scale])
        probs = self.op(attn, "Softmax", [scaled], axis=-1)
        ctx = self.op(attn, "MatMul", [probs, heads["v"]], "_1")
        ctx_t = self.op(attn, "Transpose", [ctx], "_out", perm=[0, 2, 1, 3])
        ctx_m = self.op(attn, "Reshape", [ctx_t, merged], "_out")
        o = self.op(f"{attn}/o_proj", "MatMul",
                    [ctx_m, self.weight(f"{w}.self_attn.o_proj.weight", d, d)])
        res1 = self.op(p, "Add", [x, o])
        ln2 = self.rms_norm(
            f"{p}/post_attention_layernorm", res1,
            self.const(f"{w}.post_attention_layernorm.weight", np.ones(d, np.float32)))
        mlp = f"{p}/mlp"
        gate = self.op(f"{mlp}/gate_proj", "MatMul",
                       [ln2, self.weight(f"{w}.mlp.gate_proj.weight", d, 2 * d)])
        up = self.op(f"{mlp}/up_proj", "MatMul",
                     [ln2, self.weight(f"{w}.mlp.up_proj.weight", d, 2 * d)])
        sig = self.op(f"{mlp}/act_fn", "Sigmoid", [gate])
        silu = self.op(f"{mlp}/act_fn", "Mul", [gate, sig])
        prod = self.op(mlp, "Mul", [silu, up])
        down = self.op(f"{mlp}/down_proj", "MatMul",
                       [prod, self.weight(f"{w}.mlp.down_proj.weight", 2 * d, d)])
        return self.op(p, "Add", [res1, down], "_1")


def make_transformer_stack(
    blocks: int = 40, *, hidden: int = 16, heads: int = 2, vocab: int = 32, seed: int = 0
) -> onnx.ModelProto:
    """hidden_states [N, S, hidden] -> `blocks` pre-norm blocks -> RMSNorm -> LM head [N, S,
    vocab]; about NODES_PER_BLOCK x `blocks` + 8 nodes."""
    b = _Builder(hidden, heads, seed)
    x = "hidden_states"
    for i in range(blocks):
        x = b.block(i, x)
    x = b.rms_norm("/model/norm", x, b.const("model.norm.weight", np.ones(hidden, np.float32)))
    b.op("/lm_head", "MatMul", [x, b.weight("lm_head.weight", hidden, vocab)])
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes, "transformer_stack",
        [helper.make_tensor_value_info("hidden_states", FLOAT, ["N", "S", hidden])],
        [helper.make_tensor_value_info("logits", FLOAT, ["N", "S", vocab])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "qviz-tests"
    return model
