"""Quantized models made the way users make them: onnxruntime's ``quantize_static`` run on the
demo CNN and on a transformer block built here, whose attention adds a mask of float32's most
negative value (-3.4e38) to the scores, as exported models do. The import tests use them;
run as a script to write them for the app::

    .venv/bin/python tools/quantized_examples.py --out examples/

writes the demo quantized (QDQ and QOperator) and the block with its float original and data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from qviz.core.demo import demo_paths

MASK_FILL = float(np.finfo(np.float32).min)
D_MODEL, HEADS, SEQ = 32, 2, 8
#: The tensor the mask addition produces (scores + mask), read by the Softmax.
MASKED_SCORES = "masked_scores"


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _samples(data: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    return [{k: v[i : i + 1] for k, v in data.items()} for i in range(n)]


def quantize_demo(
    out: Path, *, fmt: QuantFormat = QuantFormat.QDQ, per_channel: bool = True, n: int = 64
) -> Path:
    """The demo CNN quantized by ORT's quantize_static (int8, calibrated on n demo images)."""
    paths = demo_paths()
    images = np.load(paths.data)["input"]
    quantize_static(
        str(paths.model), str(out), _Reader(_samples({"input": images}, n)),
        quant_format=fmt, per_channel=per_channel,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    return out


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def transformer_block(seed: int = 0) -> onnx.ModelProto:
    """One pre-norm attention block plus feed-forward, with an additive attention mask
    ``(1 - attention_mask) * -3.4e38`` as exporters write it."""
    rng = np.random.default_rng(seed)
    d, h = D_MODEL, HEADS
    hd = d // h

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)

    inits = [
        _init("ln_gamma", 1.0 + 0.1 * rng.normal(size=d)),
        _init("ln_beta", 0.1 * rng.normal(size=d)),
        # Sharp attention (scores spread over several units), as trained models have.
        _init("wq", 3 * w(d, d)), _init("bq", 0.1 * rng.normal(size=d)),
        _init("wk", 3 * w(d, d)), _init("bk", 0.1 * rng.normal(size=d)),
        _init("wv", w(d, d)), _init("bv", 0.1 * rng.normal(size=d)),
        _init("wo", 3 * w(d, d)), _init("bo", 0.1 * rng.normal(size=d)),
        _init("w1", w(d, 2 * d)), _init("b1", 0.1 * rng.normal(size=2 * d)),
        _init("w2", w(2 * d, d)), _init("b2", 0.1 * rng.normal(size=d)),
        _init("inv_sqrt_hd", np.array(1.0 / np.sqrt(hd))),
        _init("one", np.array(1.0)), _init("mask_fill", np.array(MASK_FILL)),
        numpy_helper.from_array(np.array([0, 0, h, hd], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 0, d], np.int64), "model_shape"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "mask_axes"),
    ]
    n = helper.make_node

    def linear(name: str, x: str, w: str, b: str, out: str) -> list[onnx.NodeProto]:
        return [n("MatMul", [x, w], [f"{out}_mm"], name=f"{name}_proj"),
                n("Add", [f"{out}_mm", b], [out], name=f"{name}_bias")]

    nodes = [
        n("LayerNormalization", ["x", "ln_gamma", "ln_beta"], ["ln"], name="ln", axis=-1),
        *linear("q", "ln", "wq", "bq", "q"),
        *linear("k", "ln", "wk", "bk", "k"),
        *linear("v", "ln", "wv", "bv", "v"),
        n("Reshape", ["q", "heads_shape"], ["q_h"], name="q_heads"),
        n("Transpose", ["q_h"], ["q_t"], name="q_t", perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "heads_shape"], ["k_h"], name="k_heads"),
        n("Transpose", ["k_h"], ["k_t"], name="k_t", perm=[0, 2, 3, 1]),
        n("Reshape", ["v", "heads_shape"], ["v_h"], name="v_heads"),
        n("Transpose", ["v_h"], ["v_t"], name="v_t", perm=[0, 2, 1, 3]),
        n("MatMul", ["q_t", "k_t"], ["scores_raw"], name="scores"),
        n("Mul", ["scores_raw", "inv_sqrt_hd"], ["scores"], name="scale_scores"),
        n("Unsqueeze", ["attention_mask", "mask_axes"], ["mask_4d"], name="mask_4d"),
        n("Sub", ["one", "mask_4d"], ["mask_inv"], name="mask_inv"),
        n("Mul", ["mask_inv", "mask_fill"], ["mask_add"], name="mask_fill"),
        n("Add", ["scores", "mask_add"], [MASKED_SCORES], name="mask_addition"),
        n("Softmax", [MASKED_SCORES], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v_t"], ["ctx_h"], name="context"),
        n("Transpose", ["ctx_h"], ["ctx_t"], name="ctx_t", perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "model_shape"], ["ctx"], name="ctx_merge"),
        *linear("o", "ctx", "wo", "bo", "o"),
        n("Add", ["x", "o"], ["res1"], name="residual_1"),
        *linear("ffn_up", "res1", "w1", "b1", "f1"),
        n("Relu", ["f1"], ["f1_relu"], name="ffn_relu"),
        *linear("ffn_down", "f1_relu", "w2", "b2", "f2"),
        n("Add", ["res1", "f2"], ["y"], name="residual_2"),
    ]
    graph = helper.make_graph(
        nodes, "attention_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, d]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", SEQ])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def block_data(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for the block: padded sequences (the last positions masked out)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SEQ, D_MODEL)).astype(np.float32)
    lengths = rng.integers(SEQ // 2, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.float32)
    return {"x": x, "attention_mask": mask}


def quantize_block(folder: Path, n: int = 32) -> tuple[Path, Path, Path]:
    """(float model, quantize_static model quantizing every op it can, data .npz)."""
    float_path = folder / "block.onnx"
    onnx.save(transformer_block(), float_path)
    data = block_data(n)
    data_path = folder / "block_data.npz"
    np.savez(data_path, **data)
    qdq_path = folder / "block_qdq.onnx"
    quantize_static(
        str(float_path), str(qdq_path), _Reader(_samples(data, n)),
        # Per-tensor: ORT 1.32 quantizes LayerNormalization's output per channel with a
        # scale it cannot run ("scale must be 1D tensor with size 8").
        quant_format=QuantFormat.QDQ, per_channel=False,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    return float_path, qdq_path, data_path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="write quantize_static examples")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (
        quantize_demo(args.out / "demo_qdq.onnx"),
        quantize_demo(args.out / "demo_qoperator.onnx", fmt=QuantFormat.QOperator),
        *quantize_block(args.out),
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
