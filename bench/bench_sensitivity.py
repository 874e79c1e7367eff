"""How long per-layer sensitivity and the mixed-precision search take on the demo, as a ratio
to one full evaluation pass.

"One full evaluation pass" is what a user pays to check one configuration: `evaluate` of the
all-int4-weights configuration over the 2000 demo images, natively, without the latency
measurement (it runs the float model, the simulation and the native session side by side).
Against it, the script times:

* sensitivity (13 quantized graphs for the demo's 6 layers) on the default 500-sample subset
  and on every sample, with an empty cache, and again from the cache (a re-opened session);
* the mixed-precision search for ``accuracy_drop<=0.5`` over ``int4,int8,float`` on the
  500-sample subset with its confirmation on all 2000 samples, with an empty sensitivity
  cache and with a warm one.

It also prints what the search found, so the timing is always seen next to its result.

Run: .venv/bin/python bench/bench_sensitivity.py [--repeats 3] [--precise-int8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataclasses import replace  # noqa: E402

from qviz.core.calibration.analysis import analyze  # noqa: E402
from qviz.core.calibration.config import QuantConfig  # noqa: E402
from qviz.core.calibration.methods import Method, MethodSpec  # noqa: E402
from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.evaluation.criteria import Criterion  # noqa: E402
from qviz.core.evaluation.evaluate import Metric, evaluate  # noqa: E402
from qviz.core.model.loading import TensorKind, load_model  # noqa: E402
from qviz.core.runtime.cpu import u8s8_may_saturate  # noqa: E402
from qviz.core.runtime.sessions import KernelPrecision  # noqa: E402
from qviz.core.search.mixed import Precision, assignment_config, mixed_precision  # noqa: E402
from qviz.core.search.sensitivity import run_to_completion, sensitivity  # noqa: E402
from qviz.core.search.sensitivity_cache import SensitivityCache  # noqa: E402
from qviz.core.stats.collect import collect_stats  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precise-int8", action="store_true")
    args = parser.parse_args()
    precision = KernelPrecision.PRECISE if args.precise_int8 else KernelPrecision.DEFAULT

    demo = demo_paths()
    model = load_model(demo.model)
    data = load_data(demo.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=250))
    base = QuantConfig()
    base = base.with_default(
        TensorKind.ACTIVATION, replace(base.activations, spec=MethodSpec(Method.MINMAX))
    )
    int4 = assignment_config(model, base, {}, Precision.parse("int4"))
    results = analyze(model, stats, int4)
    criterion = Criterion.parse("accuracy_drop<=0.5")

    def full_eval() -> Any:
        return run_to_completion(
            evaluate(model, results, data, native=True, precision=precision, latency=False)
        )

    def sens(limit: int | None, cache: SensitivityCache | None) -> Callable[[], Any]:
        return lambda: run_to_completion(
            sensitivity(model, stats, int4, data, limit=limit, precision=precision, cache=cache)
        )

    def search(cache: SensitivityCache | None) -> Any:
        return run_to_completion(
            mixed_precision(
                model, stats, base, data, criterion, "int4,int8,float", precision=precision,
                cache=cache,
            )
        )  # fmt: skip

    cpu = platform.processor() or platform.machine()
    saturates = (
        " (AVX2 without VNNI: the default kernels can saturate)" if u8s8_may_saturate() else ""
    )
    print(
        f"demo: {len(data)} samples, {len(model.layers)} layers; CPU {cpu}, {os.cpu_count()} "
        f"cores; int8 kernels: {precision.value}{saturates}"
    )
    t_eval, ev = timed(full_eval, args.repeats)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t_s500, rep = timed(sens(500, None), args.repeats)
        rows.append(("sensitivity, 500 samples (13 graphs)", t_s500))
        t_sall, _ = timed(sens(None, None), args.repeats)
        rows.append((f"sensitivity, all {len(data)} samples", t_sall))
        cache = SensitivityCache(Path(tmp) / "warm")
        sens(500, cache)()
        t_hit, hit = timed(sens(500, cache), args.repeats)
        assert hit.cached
        rows.append(("sensitivity, from the cache (re-opened session)", t_hit))
        cold_times = []
        found = None
        for i in range(args.repeats):
            cold = SensitivityCache(Path(tmp) / f"cold{i}")
            t0 = time.perf_counter()
            found = search(cold)
            cold_times.append(time.perf_counter() - t0)
        rows.append(("mixed search + confirmation, empty cache", statistics.median(cold_times)))
        warm = SensitivityCache(Path(tmp) / "cold0")
        t_warm, _ = timed(lambda: search(warm), args.repeats)
        rows.append(("mixed search + confirmation, sensitivity cached", t_warm))

    print(f"\none full evaluation pass (evaluate, native, {ev.n_samples} samples): "
          f"{t_eval:.2f} s (median of {args.repeats})\n")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"{'job'.ljust(width)}  {'seconds':>8}  {'x one pass':>10}")
    for name, t in rows:
        print(f"{name.ljust(width)}  {t:8.2f}  {t / t_eval:10.2f}")

    assert found is not None and found.evaluation is not None
    e = found.evaluation
    f_acc = e.float_metrics[Metric.ACCURACY]
    print(
        f"\nall int4 weights: {ev.quantized_metrics[Metric.ACCURACY]:.2f} % "
        f"(float {f_acc:.2f} %), {ev.size.quantized_bytes} bytes"
    )
    print(
        f"mixed ({criterion.spec}): {e.quantized_metrics[Metric.ACCURACY]:.2f} % measured on "
        f"{e.n_samples} samples ({e.mode.value}), {found.size_bytes} bytes, "
        f"{len(found.points)} configurations tried, {found.verdict.text if found.verdict else ''}"
    )
    print(
        "changed: " + ", ".join(f"{c.name} ({c.node_name}) -> {c.precision}" for c in found.changed)
    )
    ranking = ", ".join(s.name for s in rep.ranking())
    print(f"sensitivity ranking (int4 weights): {ranking}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
