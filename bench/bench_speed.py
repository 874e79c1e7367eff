"""INT8 that is actually faster: per-layer speed, the fastest configuration, plain ORT timing.

For one model and its data, in one process, on this machine:

1. the default configuration (every layer int8, qviz's defaults): each layer's time in the
   float and the quantized model (ORT's profiler, interleaved runs, medians), the whole
   model timed without the profiler, and the layers that run slower quantized with why;
2. ``qviz mixed --objective fastest`` (the core's ``mixed_precision``) for the criterion:
   the configuration it chooses, and the same per-layer table for it;
3. both exported as Q/DQ files and timed in **plain ONNX Runtime** (a fresh
   ``InferenceSession`` on the file, default options) against the float model, interleaved,
   at each batch asked for: median ms of each and the median of the paired ratios.

Every figure is printed as measured; nothing is derived from another run.

Run:
  .venv/bin/python bench/bench_speed.py --demo --batches 1,64
  .venv/bin/python bench/bench_speed.py --model D.onnx --data D.calib.npz \\
      --eval-data D.eval.npz --criterion 'cosine>=0.99' --batches 1,8 --limit 32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.calibration.analysis import analyze  # noqa: E402
from qviz.core.calibration.config import QuantConfig  # noqa: E402
from qviz.core.data.dataset import Dataset, load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.evaluation.criteria import Criterion  # noqa: E402
from qviz.core.files.export import export_qdq  # noqa: E402
from qviz.core.graph.qdq import build_qdq  # noqa: E402
from qviz.core.model.loading import LoadedModel, load_model  # noqa: E402
from qviz.core.runtime.cpu import u8s8_may_saturate  # noqa: E402
from qviz.core.runtime.fusion import fusion_report  # noqa: E402
from qviz.core.runtime.profile import TimingBudget  # noqa: E402
from qviz.core.runtime.sessions import Threads  # noqa: E402
from qviz.core.runtime.slowdown import explain_slow_layers  # noqa: E402
from qviz.core.runtime.speed import layer_speed  # noqa: E402
from qviz.core.runtime.speed_check import timing_feeds  # noqa: E402
from qviz.core.runtime.speed_text import speed_lines  # noqa: E402
from qviz.core.search.mixed import Objective, mixed_precision  # noqa: E402
from qviz.core.stats.collect import collect_stats, run_to_completion  # noqa: E402


def plain_ort(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_plain(float_path: Path, q_path: Path, feeds: dict[str, np.ndarray], seconds: float,
               threads: int) -> str:
    """Both files in plain ORT, interleaved and alternating, for `seconds` (5 runs at least)."""
    f, q = plain_ort(float_path, threads), plain_ort(q_path, threads)
    for _ in range(3):
        f.run(None, feeds)
        q.run(None, feeds)
    tf: list[float] = []
    tq: list[float] = []
    end = time.perf_counter() + seconds
    while len(tf) < 5 or time.perf_counter() < end:
        pair = ((f, tf), (q, tq)) if len(tf) % 2 == 0 else ((q, tq), (f, tf))
        for s, out in pair:
            t0 = time.perf_counter()
            s.run(None, feeds)
            out.append((time.perf_counter() - t0) * 1e3)
    ratios = sorted(a / b for a, b in zip(tf, tq, strict=True))
    quart = statistics.quantiles(ratios, n=4)
    return (f"float {statistics.median(tf):9.3f} ms   Q/DQ {statistics.median(tq):9.3f} ms   "
            f"speed-up {statistics.median(ratios):.2f}x (middle half {quart[0]:.2f}-"
            f"{quart[2]:.2f}x, {len(tf)} runs each)")


def section(title: str) -> None:
    print(f"\n=== {title}")


def per_layer(model: LoadedModel, results: list, feeds: dict[str, np.ndarray], threads: int,
              seconds: float) -> None:
    qdq = build_qdq(model, results)
    fusion = fusion_report(qdq)
    print(f"fused {len(fusion.fused)}/{fusion.n_layers}: "
          + ", ".join(sorted(set(fusion.kernels.values()))))
    for name, why in fusion.unfused.items():
        print(f"  not fused: {name}: {why}")
    speed = layer_speed(model, qdq, feeds, threads=Threads(threads),
                        budget=TimingBudget(seconds=seconds, min_runs=5, max_runs=400))
    bits = {p.layer.name: p.weight.fmt.bits for p in qdq.layers if p.weight is not None}
    slow = explain_slow_layers(speed, fusion, model.layers, bits)
    for line in speed_lines(speed, slow):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the built-in demo")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path, help="calibration data")
    parser.add_argument("--eval-data", type=Path, help="evaluation data (default: --data)")
    parser.add_argument("--criterion", default="accuracy_drop<=1")
    parser.add_argument("--allow", default="int4,int8,float")
    parser.add_argument("--batches", default="1,64", help="batches to time at (first: the "
                        "per-layer tables and the search's per-layer times)")
    parser.add_argument("--limit", type=int, default=500, help="search subset")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=6.0, help="plain-ORT timing budget")
    args = parser.parse_args()
    if args.demo:
        demo = demo_paths()
        args.model, args.data = demo.model, demo.data
    if args.model is None or args.data is None:
        parser.error("give --demo, or --model and --data")
    batches = [int(b) for b in args.batches.split(",")]

    model = load_model(args.model)
    calib: Dataset = load_data(args.data, model.inputs)
    data = load_data(args.eval_data or args.data, model.inputs)
    print(f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, "
          f"threads {args.threads or 'ORT default'}, u8s8 may saturate: {u8s8_may_saturate()}")
    print(f"model {args.model}: {len(model.layers)} layers; data {data.description}")
    t = time.perf_counter()
    stats = run_to_completion(collect_stats(model, calib, batch_size=min(args.batch_size, 32)))
    print(f"calibrated in {time.perf_counter() - t:.1f} s")
    feeds = timing_feeds(data, batches[0])

    section(f"default configuration (every layer int8), batch {batches[0]}")
    default = analyze(model, stats, QuantConfig())
    per_layer(model, default, feeds, args.threads, 3.0)

    section(f"qviz mixed --objective fastest --criterion '{args.criterion}' --allow "
            f"{args.allow} --speed-batch {args.batches}")
    t = time.perf_counter()
    result = run_to_completion(mixed_precision(
        model, stats, QuantConfig(), data, Criterion.parse(args.criterion), args.allow,
        objective=Objective.FASTEST, limit=args.limit, batch_size=args.batch_size,
        speed_batches=tuple(batches), threads=Threads(args.threads),
    ))  # fmt: skip
    print(f"searched in {time.perf_counter() - t:.0f} s; {len(result.points)} configurations")
    for c in result.choices:
        print(f"  {c.name:40s} {c.precision}")
    print(result.verdict.text if result.verdict else
          f"{'PASS' if result.passed else 'FAIL'} (the float model itself)")
    for batch, timing in result.timings:
        print(f"  confirmed by the search at batch {batch}: {timing.speedup:.2f}x")
    for n in result.notes:
        print(f"  note: {n}")
    if result.results:
        per_layer(model, list(result.results), feeds, args.threads, 3.0)

    section("plain ONNX Runtime: the exported Q/DQ files against the float model")
    with tempfile.TemporaryDirectory() as tmp:
        exported = {"default int8": Path(tmp) / "default.onnx"}
        export_qdq(model, default, exported["default int8"])
        if result.results:
            exported["fastest"] = Path(tmp) / "fastest.onnx"
            export_qdq(model, list(result.results), exported["fastest"])
        for batch in batches:
            f = timing_feeds(data, batch)
            for name, path in exported.items():
                line = time_plain(Path(args.model), path, f, args.seconds, args.threads)
                print(f"batch {batch:>4} {name:>13}: {line}")


if __name__ == "__main__":
    main()
