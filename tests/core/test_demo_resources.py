"""The built-in demo (resources/demo) is a working, self-contained FP32 model with its data.

Figures come from resources/demo/README.md (measured by tools/train_demo.py with onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

DEMO_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo"
MODEL = DEMO_DIR / "model.onnx"
DATA = DEMO_DIR / "data.npz"

# Seen with onnxruntime on data.npz when the model was trained: 93.10 %. Allow 0.1 point.
SLICE_ACCURACY_SEEN = 0.9310
TOLERANCE = 0.001


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(MODEL), load_external_data=False)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    with np.load(DATA, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_model_is_one_self_contained_file(model: onnx.ModelProto) -> None:
    assert not (DEMO_DIR / "model.onnx.data").exists()
    for tensor in model.graph.initializer:
        assert tensor.data_location != onnx.TensorProto.EXTERNAL, tensor.name
    onnx.checker.check_model(model)


def test_graph_is_quantizable_with_batchnorm_folded(model: onnx.ModelProto) -> None:
    ops = [node.op_type for node in model.graph.node]
    assert sum(op in ("Conv", "Gemm", "MatMul") for op in ops) >= 6
    assert "BatchNormalization" not in ops
    # The dynamo exporter records torch module paths in the node metadata.
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    keys = {prop.key for prop in conv.metadata_props}
    assert {"namespace", "pkg.torch.onnx.name_scopes"} <= keys


def test_data_file_layout(data: dict[str, np.ndarray]) -> None:
    assert set(data) == {"input", "labels"}
    x, y = data["input"], data["labels"]
    assert x.dtype == np.float32 and x.shape == (2000, 1, 28, 28)
    assert y.dtype == np.int64 and y.shape == (2000,)
    assert set(np.unique(y).tolist()) == set(range(10))
    # Normalized with mean 0.2860, std 0.3530: background pixels (0) map to -0.2860 / 0.3530.
    assert x.min() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)
    assert x.max() == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)


def test_io_names_and_dynamic_batch(session: ort.InferenceSession, data) -> None:
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.shape[1:] == [1, 28, 28]
    assert not isinstance(inp.shape[0], int)  # symbolic batch dimension
    (logits,) = session.run(None, {"input": data["input"][:7]})
    assert logits.shape == (7, 10) and logits.dtype == np.float32


def test_fp32_accuracy_on_demo_data(session: ort.InferenceSession, data) -> None:
    (logits,) = session.run(None, {"input": data["input"]})
    accuracy = float((logits.argmax(axis=1) == data["labels"]).mean())
    assert accuracy >= SLICE_ACCURACY_SEEN - TOLERANCE
