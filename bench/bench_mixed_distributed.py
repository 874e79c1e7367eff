"""A mixed-precision search's wall time on each compute backend, side by side.

One model, one criterion, the same data: the whole search (its sensitivity pass, the
candidates, the confirming evaluation; no cache) run locally and on each backend, in rounds
that alternate the order, so load from other work hits every backend alike. Every backend's
answer must equal the local one (the points in order, the chosen layers, the confirmation's
metrics); the script stops if one does not. Prints the fastest round of each and its ratio to
the fastest local round.

Run: .venv/bin/python bench/bench_mixed_distributed.py [--limit 500] [--repeats 2]
     [--backends local,proc2,ray2] [--criterion 'accuracy_drop<=0.5'] [--allow int4,int8,float]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_distributed import make_backend  # noqa: E402
from qviz.core.calibration.config import QuantConfig  # noqa: E402
from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.evaluation.criteria import Criterion  # noqa: E402
from qviz.core.model.loading import load_model  # noqa: E402
from qviz.core.progress import run_to_completion  # noqa: E402
from qviz.core.search.mixed import MixedResult, mixed_precision  # noqa: E402
from qviz.core.stats.collect import collect_stats  # noqa: E402


def answer(result: MixedResult) -> dict[str, Any]:
    """What must not depend on where the runs went."""
    ev = result.evaluation
    return {
        "points": [(p.label, p.assignment, p.value, p.size_bytes) for p in result.points],
        "choices": [(c.name, c.precision) for c in result.choices],
        "passed": result.passed,
        "confirmation": None if ev is None else sorted(
            (m.value, v) for m, v in ev.quantized_metrics.items()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="samples each candidate runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="local,proc2,ray2")
    parser.add_argument("--criterion", default="accuracy_drop<=0.5")
    parser.add_argument("--allow", default="int4,int8,float")
    args = parser.parse_args()

    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=250))
    criterion = Criterion.parse(args.criterion)
    names = args.backends.split(",")
    if names[0] != "local":
        raise SystemExit("the first backend must be local (the reference answer)")
    print(f"# {platform.processor() or platform.machine()}, demo, {args.criterion}, "
          f"allow {args.allow}, {args.limit} samples per candidate")

    times: dict[str, list[float]] = {n: [] for n in names}
    reference: dict[str, Any] | None = None
    for round_ in range(args.repeats):
        order = names if round_ % 2 == 0 else [names[0], *reversed(names[1:])]
        for name in order:
            backend = make_backend(name)
            t0 = time.perf_counter()
            result = run_to_completion(mixed_precision(
                model, stats, QuantConfig(), data, criterion, args.allow,
                limit=args.limit, compute=None if name == "local" else backend,
            ))
            elapsed = time.perf_counter() - t0
            backend.shutdown()
            got = answer(result)
            if reference is None:
                reference = got
            elif got != reference:
                raise SystemExit(f"{name}: the answer differs from the local one")
            times[name].append(elapsed)
            print(f"round {round_ + 1} {name}: {elapsed:.2f} s, {len(result.points)} points, "
                  f"passed={result.passed}", flush=True)

    best_local = min(times["local"])
    print("\n| backend | search (fastest round) | vs local |\n| --- | --- | --- |")
    for name in names:
        best = min(times[name])
        print(f"| {name} | {best:.2f} s | {best_local / best:.2f}× |")
    print("\nEvery backend's answer (points in order, choices, confirmation) equals the local one.")


if __name__ == "__main__":
    main()
