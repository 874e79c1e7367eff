"""Make a MatMul chain with external data: the "large MLP block" model of the scale issue.

``x [batch, seq, hidden] -> MatMul(hidden x ffn) -> Relu -> MatMul(ffn x hidden) -> Relu -> ...``,
``--matmuls`` weights alternating up and down projections, float32, random normal weights
scaled by 1/sqrt(fan-in) (so activations keep their size along the chain). The weights are
drawn and written to ``NAME.onnx.data`` one at a time (page-aligned), so peak memory is one
weight whatever the chain's size. With the defaults (10 MatMuls of 4096 x 16384) the data file
is 2.68 GB: past protobuf's 2 GB limit, so no tool may hold the model as one protobuf.

Beside the model: ``NAME.calib.npz`` / ``NAME.eval.npz`` with ``x`` [samples, seq, hidden]
(standard normal, independent draws).

Run: .venv/bin/python bench/make_chain.py -o /tmp/chain/chain.onnx [--matmuls 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

if __package__ in (None, ""):  # run as a script: make `qviz` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qviz.core.files.atomic import atomic_path

ALIGN = 4096
INPUT = "x"
OUTPUT = "y"


def write_chain(
    path: Path, *, matmuls: int = 10, hidden: int = 4096, ffn: int = 16384, seed: int = 0
) -> list[Path]:
    """Write the chain to ``path`` + ``path.name + '.data'``; returns both paths."""
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current = INPUT
    with atomic_path(path) as tmp_model, atomic_path(data_path) as tmp_data:
        with open(tmp_data, "wb") as f:
            offset = 0
            for i in range(matmuls):
                k, n = (hidden, ffn) if i % 2 == 0 else (ffn, hidden)
                name = f"chain.{i}.{'up' if i % 2 == 0 else 'down'}.weight"
                w = rng.standard_normal((k, n), dtype=np.float32)
                w *= np.float32(1.0 / np.sqrt(k))
                pad = -offset % ALIGN
                f.write(b"\0" * pad)
                offset += pad
                f.write(w.data)
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=w.shape,
                                     data_location=TensorProto.EXTERNAL)
                for key, value in (("location", data_path.name), ("offset", str(offset)),
                                   ("length", str(w.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                inits.append(tensor)
                offset += w.nbytes
                del w
                out = OUTPUT if i == matmuls - 1 else f"chain.{i}.out"
                mm = out if i == matmuls - 1 else f"chain.{i}.matmul"
                nodes.append(helper.make_node("MatMul", [current, name], [mm],
                                              name=f"chain.{i}.matmul"))
                if i < matmuls - 1:
                    nodes.append(helper.make_node("Relu", [mm], [out], name=f"chain.{i}.relu"))
                current = out
        graph = helper.make_graph(
            nodes, "matmul_chain",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  producer_name="qviz bench/make_chain.py")
        model.ir_version = 9
        tmp_model.write_bytes(model.SerializeToString())
    return [path, data_path]


def write_data(path: Path, *, hidden: int, samples: int, seq: int, seed: int) -> list[Path]:
    stem = path.name.removesuffix(".onnx")
    written = []
    for split, offset in (("calib", 1), ("eval", 2)):
        x = np.random.default_rng([seed, offset]).standard_normal(
            (samples, seq, hidden), dtype=np.float32)
        target = path.with_name(f"{stem}.{split}.npz")
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--matmuls", type=int, default=10)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=16384)
    p.add_argument("--samples", type=int, default=64, help="calibration and evaluation samples")
    p.add_argument("--seq", type=int, default=1, help="tokens per sample (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t = time.perf_counter()
    written = write_chain(args.output, matmuls=args.matmuls, hidden=args.hidden, ffn=args.ffn,
                          seed=args.seed)
    written += write_data(args.output, hidden=args.hidden, samples=args.samples, seq=args.seq,
                          seed=args.seed)
    size = sum(f.stat().st_size for f in written[:2])
    print(f"wrote {', '.join(str(w) for w in written)}: {size / 1e9:.2f} GB "
          f"in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
