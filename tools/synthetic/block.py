"""A pre-norm transformer MLP block whose LayerNorm output has planted loud channels.

``hidden_states [batch, seq, hidden]`` -> LayerNormalization -> MatMul (fc1) + bias -> GELU ->
MatMul (fc2) + bias -> + residual -> ``output``. The LayerNorm's scale is ``gain`` at the
planted channels (three by default, 10x to 100x) and about 1 elsewhere, so the input of fc1,
the LayerNorm output, has those channels that much louder than the rest: the case where a
per-tensor activation scale fails and SmoothQuant-style migration helps. fc1's weights are
scaled for that input's power (the outliers carry much of the signal, as in real models).
Small enough for tests (hidden 64, fc1 width 256 by default: 33 k weights).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qviz.core.files.atomic import atomic_path
from tools.synthetic.spec import DEFAULT_GAINS, NORM_JITTER, OPSET, metadata, outlier_plan

INPUT = "hidden_states"
OUTPUT = "output"
NORM_OUTPUT = "block.norm.output"
BLOCK_NOTE = (
    "random weights; the planted channels are about gain times louder than a typical channel "
    "on the last axis of the listed tensor (the LayerNorm output, fc1's input)"
)
_GELU_POWER = 0.4252  # E[gelu(z)^2] for z ~ N(0, 1)


@dataclass(frozen=True)
class BlockSpec:
    hidden: int = 64
    ffn: int = 256
    outliers: int = 3
    gain_range: tuple[float, float] = DEFAULT_GAINS
    seed: int = 0
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden < 2 or self.ffn < 1:
            raise ValueError(f"hidden must be >= 2 and ffn >= 1, got {self.hidden}, {self.ffn}")
        if not 0 <= self.outliers <= self.hidden // 2:
            raise ValueError(f"outliers must be in [0, hidden/2], got {self.outliers}")

    def outlier_plan(self) -> dict[int, float]:
        return outlier_plan(self.hidden, self.outliers, self.gain_range, self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def block_weights(spec: BlockSpec) -> dict[str, np.ndarray]:
    """The block's weights by initializer name, deterministic in ``spec.seed``."""
    d, f = spec.hidden, spec.ffn
    rng = np.random.default_rng([spec.seed, 300])
    gamma = (1.0 + NORM_JITTER * rng.standard_normal(d)).astype(np.float32)
    for channel, gain in spec.outlier_plan().items():
        gamma[channel] = gain
    beta = (0.02 * rng.standard_normal(d)).astype(np.float32)
    power = float(np.sum(gamma.astype(np.float64) ** 2))
    fc1 = (rng.standard_normal((d, f)) / math.sqrt(power)).astype(np.float32)
    fc1_b = (0.02 * rng.standard_normal(f)).astype(np.float32)
    fc2 = (rng.standard_normal((f, d)) / math.sqrt(f * _GELU_POWER)).astype(np.float32)
    fc2_b = (0.02 * rng.standard_normal(d)).astype(np.float32)
    return {
        "block.norm.weight": gamma,
        "block.norm.bias": beta,
        "block.mlp.fc1.weight": fc1,
        "block.mlp.fc1.bias": fc1_b,
        "block.mlp.fc2.weight": fc2,
        "block.mlp.fc2.bias": fc2_b,
    }


def block_proto(spec: BlockSpec | None = None) -> onnx.ModelProto:
    """The planted-outlier block as an in-memory ONNX model (weights inline)."""
    spec = spec or BlockSpec()
    w = block_weights(spec)
    inits = [numpy_helper.from_array(a, name) for name, a in w.items()]
    inits += [
        numpy_helper.from_array(np.array(1 / math.sqrt(2), np.float32), "const.inv_sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "const.one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "const.half"),
    ]
    n = helper.make_node
    nodes = [
        n("LayerNormalization", [INPUT, "block.norm.weight", "block.norm.bias"], [NORM_OUTPUT],
          name="block.norm", axis=-1, epsilon=spec.eps),
        n("MatMul", [NORM_OUTPUT, "block.mlp.fc1.weight"], ["fc1.mm"], name="block.mlp.fc1"),
        n("Add", ["fc1.mm", "block.mlp.fc1.bias"], ["fc1.out"], name="block.mlp.fc1/Add"),
        # GELU, erf form (what PyTorch's nn.GELU() computes).
        n("Mul", ["fc1.out", "const.inv_sqrt2"], ["gelu.scaled"], name="block.mlp.gelu/Mul"),
        n("Erf", ["gelu.scaled"], ["gelu.erf"], name="block.mlp.gelu/Erf"),
        n("Add", ["gelu.erf", "const.one"], ["gelu.plus1"], name="block.mlp.gelu/Add"),
        n("Mul", ["fc1.out", "gelu.plus1"], ["gelu.prod"], name="block.mlp.gelu/Mul_1"),
        n("Mul", ["gelu.prod", "const.half"], ["gelu.out"], name="block.mlp.gelu/Mul_2"),
        n("MatMul", ["gelu.out", "block.mlp.fc2.weight"], ["fc2.mm"], name="block.mlp.fc2"),
        n("Add", ["fc2.mm", "block.mlp.fc2.bias"], ["fc2.out"], name="block.mlp.fc2/Add"),
        n("Add", [INPUT, "fc2.out"], [OUTPUT], name="block.residual"),
    ]
    dims: list[str | int] = ["batch", "seq", spec.hidden]
    graph = helper.make_graph(
        nodes,
        "planted_outlier_block",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, dims)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="qviz tools/make_decoder.py")
    model.ir_version = 10
    helper.set_model_props(model, metadata("outlier_block", spec.to_json(),
                                           spec.outlier_plan(), [NORM_OUTPUT], BLOCK_NOTE))
    return model


def write_block(spec: BlockSpec, path: Path) -> Path:
    with atomic_path(path, make_parents=True) as tmp:  # the tool makes its output folder
        tmp.write_bytes(block_proto(spec).SerializeToString())
    return Path(path)
