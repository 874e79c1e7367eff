"""Residual joins as QLinearAdd: a small ResNet timed in float and int8, side by side.

Builds the residual CNN of the tests (`tests/core/fusion_models.make_residual_net`),
quantizes it with qviz's defaults, and times in ONNX Runtime (interleaved runs, medians):
float against the Q/DQ model with the residual Adds quantized (QLinearAdd), and float against
the same configuration with the Adds kept float (their inputs and outputs then stay float, so
the convolutions before them do not fuse either). Every figure is printed as measured.

Run:
  .venv/bin/python bench/bench_residual.py --channels 64 --size 32 --blocks 4 --batches 1,16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import random_data
from qviz.core.graph.qdq import build_qdq
from qviz.core.model.loading import from_proto
from qviz.core.runtime.latency import time_pair
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, build_session
from qviz.core.runtime.speed_check import keep_float
from qviz.core.stats.collect import collect_stats, run_to_completion
from tests.core.fusion_models import make_residual_net


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--seconds", type=float, default=4.0, help="timing per pair and batch")
    args = p.parse_args(argv)
    model = from_proto(make_residual_net(args.channels, args.size, args.blocks))
    data = random_data(model.inputs, 64)
    stats = run_to_completion(collect_stats(model, data, batch_size=16))
    results = analyze(model, stats, QuantConfig())
    adds = [layer.name for layer in model.layers if layer.op_type == "Add"]
    configs = (
        ("residual Adds quantized", build_qdq(model, results)),
        ("residual Adds float", build_qdq(model, keep_float(results, adds))),
    )
    float_session = build_session(model.model, SessionConfig.for_float())
    budget = TimingBudget(seconds=args.seconds, min_runs=10, max_runs=100_000)
    print(f"residual net: {args.channels} channels, {args.size}x{args.size}, "
          f"{args.blocks} blocks ({len(adds)} Adds)")
    for batch in (int(b) for b in args.batches.split(",")):
        feeds = next(iter(data.batches(batch)))
        for label, qdq in configs:
            q = build_session(qdq.model, SessionConfig.for_native(KernelPrecision.DEFAULT))
            t = time_pair(float_session, q, feeds, budget)
            print(f"batch {batch:3d}  {label:24s} float {t.a_ms:8.3f} ms  int8 {t.b_ms:8.3f} ms"
                  f"  speed-up {t.speedup:.2f}x  (quartiles {t.ratio_low:.2f}-"
                  f"{t.ratio_high:.2f}, {t.runs} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
