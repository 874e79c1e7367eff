"""Calibration benchmark: cost of collecting statistics, and memory that does not grow.

Prints, side by side in one run, on the demo model and on a larger synthetic CNN:
 (a) collect time / plain ONNX Runtime inference time over the same batches (target <= 1.3)
 (b) peak memory (RSS, in a fresh process) at N and 4N samples (target: 4N <= 1.05 x N)
 (d) collect time and peak memory against onnxruntime's own quantize_static calibrators
     (Percentile and Entropy) on the same model and data.
(c), the time per method on one 2048-bin histogram, is bench/bench_methods.py.

Run: .venv/bin/python bench/bench_collect.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class CyclingData:
    """Streams `n` samples by cycling a base array: memory stays flat whatever `n` is."""

    def __init__(self, name: str, base: np.ndarray, n: int) -> None:
        self.name, self.base, self.n = name, base, n
        self.description = f"{n} samples cycled from {len(base)}"
        self.is_random = False
        self.labels = None

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.n, batch_size):
            idx = np.arange(start, min(start + batch_size, self.n)) % len(self.base)
            yield {self.name: self.base[idx]}


def synthetic_cnn(path: Path, width: int = 64, depth: int = 8, size: int = 56) -> Path:
    """A plain conv stack (Conv+Relu x depth, then Gemm), larger than the demo."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(depth):
        w = (rng.standard_normal((width, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    w = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "fc.weight"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc.weight"], ["logits"]))
    graph = helper.make_graph(
        nodes, "synthetic_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def base_data(model_path: Path) -> tuple[str, np.ndarray]:
    if model_path.name == "model.onnx" and model_path.parent.name == "demo":
        return "input", np.load(model_path.parent / "data.npz")["input"][:512]
    rng = np.random.default_rng(1)
    return "input", rng.standard_normal((64, 3, 56, 56)).astype(np.float32)


def time_plain_vs_collect(model_path: Path, n: int, batch: int) -> dict[str, float]:
    from qviz.core.model.loading import load_model
    from qviz.core.runtime.sessions import SessionConfig, build_session
    from qviz.core.stats.collect import collect_stats, run_to_completion

    model = load_model(model_path)
    name, base = base_data(model_path)
    session = build_session(model.model, SessionConfig.for_float())
    out = [o.name for o in session.get_outputs()]
    for feeds in CyclingData(name, base, batch * 2).batches(batch):  # warm up both paths
        session.run(out, feeds)
    run_to_completion(collect_stats(model, CyclingData(name, base, batch * 2), batch_size=batch))
    plain, coll = [], []
    for _ in range(3):  # alternate so both see the same machine load
        t = time.perf_counter()
        for feeds in CyclingData(name, base, n).batches(batch):
            session.run(out, feeds)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_to_completion(collect_stats(model, CyclingData(name, base, n), batch_size=batch))
        coll.append(time.perf_counter() - t)
    p, c = float(np.median(plain)), float(np.median(coll))
    return {"plain_s": p, "collect_s": c, "ratio": c / p}


def child_collect(model_path: str, n: int, batch: int) -> None:
    from qviz.core.model.loading import load_model
    from qviz.core.stats.collect import collect_stats, run_to_completion

    model = load_model(model_path)
    name, base = base_data(Path(model_path))
    t = time.perf_counter()
    run_to_completion(collect_stats(model, CyclingData(name, base, n), batch_size=batch))
    print(json.dumps({"s": time.perf_counter() - t,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_ort(model_path: str, n: int, batch: int, method: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    name, base = base_data(Path(model_path))
    data = CyclingData(name, base, n)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = data.batches(batch)

        def get_next(self):  # ORT's CalibrationDataReader interface
            return next(self.it, None)  # ORT calibrators need equally sized batches

    calibration = {"percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cal = create_calibrator(model_path, calibrate_method=calibration,
                                augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                extra_options={"num_bins": 2048})
        cal.collect_data(Reader())
        cal.compute_data()
        s = time.perf_counter() - t
    print(json.dumps({"s": s,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, model_path, n, batch, *rest = args.child
        if kind == "collect":
            child_collect(model_path, int(n), int(batch))
        else:
            child_ort(model_path, int(n), int(batch), rest[0])
        return

    from qviz.core.demo import demo_paths

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "demo CNN": (demo_paths().model, 2048, 64),  # ORT needs equal batches
            "synthetic CNN (8x conv64 @56x56)": (synthetic_cnn(Path(tmp) / "synth.onnx"),
                                                 128 if args.quick else 256, 16),
        }
        for label, (path, n, batch) in models.items():
            print(f"\n== {label}: {path.name}, N={n}, batch {batch}")
            t = time_plain_vs_collect(path, n, batch)
            print(f"(a) plain ORT {t['plain_s']:.3f} s, collect {t['collect_s']:.3f} s, "
                  f"ratio {t['ratio']:.2f} (target <= 1.3)")
            small = run_child("collect", str(path), str(n), str(batch))
            big = run_child("collect", str(path), str(4 * n), str(batch))
            print(f"(b) peak RSS N={n}: {small['rss_mb']:.0f} MB, 4N={4 * n}: "
                  f"{big['rss_mb']:.0f} MB, ratio {big['rss_mb'] / small['rss_mb']:.3f} "
                  f"(target <= 1.05)")
            for method in ("percentile", "entropy"):
                ort_small = run_child("ort", str(path), str(n), str(batch), method)
                ort_big = run_child("ort", str(path), str(4 * n), str(batch), method)
                print(f"(d) ORT {method:10s} N: {ort_small['s']:.2f} s {ort_small['rss_mb']:.0f} MB"
                      f" | 4N: {ort_big['s']:.2f} s {ort_big['rss_mb']:.0f} MB"
                      f"   vs qviz N: {small['s']:.2f} s {small['rss_mb']:.0f} MB"
                      f" | 4N: {big['s']:.2f} s {big['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
