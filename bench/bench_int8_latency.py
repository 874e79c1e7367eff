"""Latency of the demo: float vs the Q/DQ graph run natively by ONNX Runtime.

For a few configurations and batch sizes, prints the median time per batch of the float model
and of the Q/DQ model under ORT's default optimizations (fused INT8 kernels), with ORT's
default and "precise" (session.x64quantprecision=1, U8U8) int8 kernels, plus the accuracy of
each on the 2000 demo images, so the speed is always seen next to what it costs.

Run: .venv/bin/python bench/bench_int8_latency.py [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.calibration.analysis import analyze  # noqa: E402
from qviz.core.calibration.config import QuantConfig, TensorConfig  # noqa: E402
from qviz.core.calibration.methods import Method, MethodSpec  # noqa: E402
from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.graph.qdq import build_qdq  # noqa: E402
from qviz.core.model.loading import load_model  # noqa: E402
from qviz.core.quant.formats import NumberFormat, PerAxis, PerTensor  # noqa: E402
from qviz.core.runtime.cpu import u8s8_may_saturate  # noqa: E402
from qviz.core.runtime.fusion import fusion_report  # noqa: E402
from qviz.core.runtime.sessions import (  # noqa: E402
    KernelPrecision,
    SessionConfig,
    Threads,
    build_session,
)
from qviz.core.stats.collect import collect_stats, run_to_completion  # noqa: E402


def median_ms(s: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    for _ in range(3):
        s.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def accuracy(s: ort.InferenceSession, x: np.ndarray, labels: np.ndarray) -> float:
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    return 100.0 * float(np.mean(out.argmax(1) == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    demo = demo_paths()
    model = load_model(demo.model)
    data = load_data(demo.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data))
    with np.load(demo.data) as npz:
        x, labels = npz["input"], npz["labels"]

    int8, uint8 = NumberFormat(), NumberFormat(signed=False, symmetric=False)
    configs = {
        "int8 w per-channel, int8 sym act (MSE)": (int8, int8),
        "int8 w per-channel, uint8 asym act (MSE)": (int8, uint8),
    }
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"onnxruntime {ort.__version__}, u8s8 may saturate: {u8s8_may_saturate()}"
    )
    threads = Threads(intra_op=args.threads)
    float_config = SessionConfig.for_float(threads)
    native = SessionConfig.for_native(threads=threads)
    precise = SessionConfig.for_native(KernelPrecision.PRECISE, threads)
    for name, (wfmt, afmt) in configs.items():
        cfg = QuantConfig(
            TensorConfig(MethodSpec(Method.MINMAX), PerAxis(), wfmt),
            TensorConfig(MethodSpec(Method.MSE), PerTensor(), afmt),
        )
        qdq = build_qdq(model, analyze(model, stats, cfg))
        report = fusion_report(qdq)
        print(f"\n{name}: {len(report.fused)}/{report.n_layers} layers fused")
        f_s = build_session(model.model, float_config)
        n_s = build_session(qdq.model, native)
        p_s = build_session(qdq.model, precise)
        print(
            f"  accuracy: float {accuracy(f_s, x, labels):.2f} %, native default "
            f"{accuracy(n_s, x, labels):.2f} %, native precise {accuracy(p_s, x, labels):.2f} %"
        )
        for batch in (1, 64, 256):
            feeds = {model.inputs[0].name: x[:batch]}
            f_ms = median_ms(f_s, feeds, args.repeats)
            n_ms = median_ms(n_s, feeds, args.repeats)
            p_ms = median_ms(p_s, feeds, args.repeats)
            print(
                f"  batch {batch:>3}: float {f_ms:8.3f} ms   int8 default {n_ms:8.3f} ms "
                f"({f_ms / n_ms:4.2f}x)   int8 precise {p_ms:8.3f} ms ({f_ms / p_ms:4.2f}x)"
            )


if __name__ == "__main__":
    main()
