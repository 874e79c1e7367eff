"""Time each calibration method on one 2048-bin histogram (median of repeats, milliseconds).

Run: ``.venv/bin/python bench/bench_methods.py``. The GUI recomputes a range on every click,
so every method must take milliseconds; the target for ENTROPY is at most 5 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import error_curve, histogram_metrics
from qviz.core.quant.formats import NumberFormat
from qviz.core.stats.tensor_stats import TensorStats, compute_stats


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    # CPU time of this process: the machines here are shared, and wall time under load
    # mostly measures the neighbours.
    fn()  # warm caches (and numpy's first-call overheads)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000.0)
    return statistics.median(times)


def tensors(bins: int) -> dict[str, TensorStats]:
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(1_000_000).astype(np.float32)
    return {
        "gaussian (two-sided)": compute_stats(gauss, bins=bins),
        "relu (one-sided)": compute_stats(np.maximum(gauss, 0.0), bins=bins),
        "laplace (heavy tail)": compute_stats(rng.laplace(size=1_000_000), bins=bins),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--bins", type=int, default=2048)
    args = parser.parse_args()
    formats = [
        NumberFormat.parse("int8"),
        NumberFormat.parse("uint8", symmetric=False),
        NumberFormat.parse("int4"),
        NumberFormat.parse("fp8_e4m3fn"),
    ]
    specs = [
        MethodSpec(Method.MINMAX),
        MethodSpec(Method.PERCENTILE, 99.99),
        MethodSpec(Method.ENTROPY),
        MethodSpec(Method.MSE),
    ]
    print(f"choose_range on a {args.bins}-bin histogram, median CPU ms of {args.repeats} runs")
    header = f"{'tensor':22s} {'format':12s}" + "".join(f"{s.method.value:>12s}" for s in specs)
    print(header)
    print("-" * len(header))
    worst_entropy = 0.0
    for name, stats in tensors(args.bins).items():
        for fmt in formats:
            row = f"{name:22s} {fmt.label:12s}"
            for spec in specs:
                ms = median_ms(lambda t=stats, s=spec, f=fmt: choose_range(t, s, f), args.repeats)
                if spec.method is Method.ENTROPY and fmt.label == "int8 sym":
                    worst_entropy = max(worst_entropy, ms)
                row += f"{ms:12.2f}"
            print(row)
    print()
    stats = tensors(args.bins)["gaussian (two-sided)"]
    fmt = formats[0]
    lo, hi = choose_range(stats, MethodSpec(Method.PERCENTILE), fmt)
    clips = np.linspace(0.05, stats.abs_max, 200)
    print(
        f"histogram_metrics (int8):      "
        f"{median_ms(lambda: histogram_metrics(stats, lo, hi, fmt), args.repeats):8.2f} ms"
    )
    print(
        f"error_curve, 200 clips (int8): "
        f"{median_ms(lambda: error_curve(stats, fmt, clips), args.repeats):8.2f} ms"
    )
    verdict = "OK" if worst_entropy <= 5.0 else "OVER TARGET"
    print(
        f"\nentropy, int8 sym, slowest tensor: {worst_entropy:.2f} ms (target <= 5 ms: {verdict})"
    )


if __name__ == "__main__":
    main()
