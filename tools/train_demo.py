"""Train qviz's built-in demo model on Fashion-MNIST and export it to ONNX.

Usage::

    .venv/bin/python tools/train_demo.py [--epochs 6] [--seed 0] [--out resources/demo]

Reads the Fashion-MNIST idx files installed by the Debian package ``dataset-fashion-mnist``
(nothing is downloaded), trains a small CNN on the CPU (2 threads), exports it with
``torch.onnx.export(dynamo=True)`` — which folds BatchNorm into the convolutions and records
each node's torch module path in its metadata — and writes into ``--out``:

* ``model.onnx``: one self-contained file, weights inside (no ``.onnx.data`` beside it);
* ``data.npz``: ``input`` = the first 2000 test images, normalized float32 [2000, 1, 28, 28],
  ``labels`` = int64 [2000].

It prints the FP32 test accuracy measured with torch and with onnxruntime so they can be
compared. This is a development tool: torch is needed here, never by qviz's ONNX users.
"""

from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
N_SLICE = 2000
REPO_ROOT = Path(__file__).resolve().parent.parent


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed idx file (uint8 payload) into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not a uint8 idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(shape)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (normalized float32 images [N,1,28,28], int64 labels [N]) for 'train' or 't10k'."""
    images = read_idx(DATA_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(DATA_DIR / f"{split}-labels-idx1-ubyte.gz")
    x = images.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64)


def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class DemoNet(nn.Module):
    """Four Conv+BN+ReLU blocks, flatten, two Linear layers: six quantizable layers.

    Module paths: features.{0,3,6,9} are the convolutions (features.{1,4,7,10} their
    BatchNorms, folded away at export), classifier.0 and classifier.2 the Linear layers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(1, 16, 1),  # 28x28
            *conv_bn_relu(16, 32, 2),  # 14x14
            *conv_bn_relu(32, 32, 1),  # 14x14
            *conv_bn_relu(32, 64, 2),  # 7x7
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(None, {name: x[i : i + batch]})
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch: int = 128
) -> None:
    rng = np.random.default_rng(seed)
    steps_per_epoch = (len(x) + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(x)))
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb, yb = xt[idx], yt[idx]
            # Random horizontal flips: cheap augmentation, clothes are left/right symmetric.
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, "
            f"train acc {100 * correct / total:.2f}%, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """Export with the dynamo exporter, then re-save as one self-contained file."""
    model = model.eval()
    sample = torch.zeros(4, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (sample,),
            str(tmp_path),
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=True,
        )
        proto = onnx.load(str(tmp_path), load_external_data=True)
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    return proto


def describe(proto: onnx.ModelProto) -> None:
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    print(f"opsets: {opsets}")
    for kind, values in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
        shapes = [
            (v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values
        ]
        print(f"{kind}: {shapes}")
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(f"ops: {ops}")
    inits = {t.name: t for t in proto.graph.initializer}
    print("quantizable layers (weight initializer, metadata name_scopes, weight range):")
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        w = numpy_helper.to_array(inits[node.input[1]])
        print(
            f"  {node.op_type:5s} {node.input[1]:20s} {scopes}  "
            f"shape {list(w.shape)}, [{w.min():+.3f}, {w.max():+.3f}]"
        )
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    print(f"first Conv node {conv.name!r} metadata_props:")
    for prop in conv.metadata_props:
        print(f"  {prop.key} = {prop.value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "resources" / "demo")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_split("train")
    x_test, y_test = load_split("t10k")
    print(f"train {x_train.shape}, test {x_test.shape}")

    model = DemoNet()
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    print(f"training took {train_s:.1f} s ({args.epochs} epochs, seed {args.seed})")

    acc_torch = torch_accuracy(model, x_test, y_test)
    print(f"torch FP32 test accuracy (10k): {100 * acc_torch:.2f}%")

    model_path = args.out / "model.onnx"
    proto = export_onnx(model, model_path)
    describe(proto)

    data_path = args.out / "data.npz"
    np.savez_compressed(data_path, input=x_test[:N_SLICE], labels=y_test[:N_SLICE])

    acc_ort = ort_accuracy(model_path, x_test, y_test)
    acc_slice = ort_accuracy(model_path, x_test[:N_SLICE], y_test[:N_SLICE])
    print(f"onnxruntime FP32 test accuracy (10k): {100 * acc_ort:.2f}%")
    print(f"onnxruntime FP32 accuracy on data.npz ({N_SLICE}): {100 * acc_slice:.2f}%")
    for p in (model_path, data_path):
        print(f"{p}: {p.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
