"""Sensitivity sweep wall time on each compute backend, and the cost model behind it.

For one model, one configuration and one evaluation subset, the script times a full
sensitivity sweep (2n+1 quantized graphs, no cache) on:

* ``local``   — today's path: one run at a time in this process (ORT uses every core);
* ``proc1``, ``proc2`` — a pool of 1 / 2 spawned processes on this machine;
* ``ray1``, ``ray2``   — 1 / 2 Ray actors on a Ray started here (``ray.init(num_cpus=cores)``);

checks that every backend's report equals the local one to the bit, and measures the terms of
a cost model of a sweep on W workers::

    T(W) = S + ceil(N / W) * (t + o)

N runs (2n+1); t the time of one run in this process (Q/DQ graph built, session created, the
subset run and compared: the fastest local sweep divided by N); o what running it on a worker
adds per run (shipping the job and its result, the worker's own session set-up), measured by
running each job here and on a 1-worker pool back to back (the median difference: contention
from other work on a shared machine hits both sides of a pair alike); S the start of a pool
(processes or actors started, the context — model, float reference — shipped and loaded once
per worker), timed by opening and closing one. The bytes shipped per job, per result and per
worker are printed too. The model is compared with the 2-worker measurement and used to
predict 8- and 64-core clusters (workers of ``threads`` cores each: every worker runs ORT with
the local run's thread count, which keeps the numbers identical).

Run: .venv/bin/python bench/bench_distributed.py [--model demo|PATH --data NPZ]
     [--limit 2000] [--batch-size 250] [--backends local,proc1,proc2,ray1,ray2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.calibration.analysis import analyze  # noqa: E402
from qviz.core.calibration.config import QuantConfig  # noqa: E402
from qviz.core.compute.backend import ComputeBackend, LocalBackend, wait_for  # noqa: E402
from qviz.core.compute.jobs import MeasureJob, WorkContext  # noqa: E402
from qviz.core.compute.process_pool import (  # noqa: E402
    ProcessBackend,
    available_cores,
    measurement_threads,
)
from qviz.core.compute.ray_backend import RayBackend  # noqa: E402
from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.model.loading import load_model  # noqa: E402
from qviz.core.progress import run_to_completion  # noqa: E402
from qviz.core.search.measure import measure  # noqa: E402
from qviz.core.search.reference import prepare_reference  # noqa: E402
from qviz.core.search.sensitivity import group_by_layer, sensitivity  # noqa: E402
from qviz.core.stats.collect import collect_stats  # noqa: E402


def report_doc(report: Any) -> dict[str, Any]:
    doc = report.to_json()
    doc.pop("elapsed_s", None)
    return doc


def make_backend(name: str) -> ComputeBackend:
    if name == "local":
        return LocalBackend()
    kind, workers = name[:-1], int(name[-1])
    if kind == "proc":
        return ProcessBackend(workers)
    return RayBackend(workers=workers, cpus_per_worker=max(1, available_cores() // workers))


def overhead_side_by_side(
    backend: ComputeBackend, context: WorkContext, jobs: list[MeasureJob]
) -> list[float]:
    """Each job run here and on a 1-worker pool back to back: what the pool adds, per job
    (the same contention hits both sides of each pair)."""
    assert context.reference is not None
    diffs = []
    with backend.open(context, lambda: False, max_workers=1) as pool:
        for job in jobs:
            t0 = time.perf_counter()
            run_to_completion(measure(context.reference, job.results))
            here = time.perf_counter() - t0
            t0 = time.perf_counter()
            run_to_completion(wait_for(pool, pool.submit(job), should_stop=lambda: False,
                                       others=lambda e: None))
            diffs.append(time.perf_counter() - t0 - here)
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", help="evaluation data (.npz); the demo's with --model demo")
    parser.add_argument("--calib", help="calibration data (default: --data)")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--backends", default="local,proc1,proc2,ray1,ray2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if args.model == "demo":
        paths = demo_paths()
        model_path, data_path = paths.model, paths.data
    else:
        model_path, data_path = Path(args.model), Path(args.data)
    model = load_model(model_path)
    data = load_data(data_path, model.inputs)
    calib = load_data(args.calib or data_path, model.inputs)
    stats = run_to_completion(collect_stats(model, calib))
    config = QuantConfig()
    results = analyze(model, stats, config)
    groups = group_by_layer(results)
    n_runs = 1 + 2 * len(groups)
    threads = measurement_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {available_cores()} cores "
          f"({threads} physical: the ORT threads of every run), python {platform.python_version()}")
    print(f"model: {model_path.name}, {len(groups)} quantized layers -> N = {n_runs} runs of "
          f"{args.limit} samples (batch {args.batch_size})")

    # t: one run in this process, timed job by job (the sweep's own jobs).
    ref = run_to_completion(prepare_reference(model, data, limit=args.limit,
                                              batch_size=args.batch_size))
    jobs = [MeasureJob(tuple(results))]
    for name in groups:
        jobs.append(MeasureJob(tuple(groups[name])))
        jobs.append(MeasureJob(tuple(r for o, g in groups.items() if o != name for r in g)))
    per_job = []
    for job in jobs:
        t0 = time.perf_counter()
        run_to_completion(measure(ref, job.results))
        per_job.append(time.perf_counter() - t0)
    t = statistics.mean(per_job)
    job_bytes = statistics.mean(len(pickle.dumps(j)) for j in jobs)
    context = WorkContext(model, reference=ref)
    context_bytes = len(pickle.dumps(context))
    result_bytes = len(pickle.dumps(run_to_completion(measure(ref, jobs[1].results))))
    print(f"t (one run here): {t:.3f} s (min {min(per_job):.3f}, max {max(per_job):.3f})")
    print(f"shipped: {job_bytes / 1024:.1f} KiB per job, {result_bytes / 1024:.2f} KiB per "
          f"result, {context_bytes / 2**20:.1f} MiB of context per worker")

    # Every backend once per round, rounds interleaved; the fastest round counts (on a
    # shared machine the minimum is the run least disturbed by others).
    names = args.backends.split(",")
    backends = {name: make_backend(name) for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    starts: dict[str, list[float]] = {name: [] for name in names}
    local_doc: dict[str, Any] | None = None
    for backend in backends.values():
        if isinstance(backend, RayBackend) and not backend.connected:
            t0 = time.perf_counter()
            backend.connect()
            print(f"ray.init: {time.perf_counter() - t0:.1f} s (once per process)")
    for round_ in range(args.repeats):
        for name, backend in backends.items():
            if not isinstance(backend, LocalBackend):
                t0 = time.perf_counter()
                with backend.open(context, lambda: False):
                    pass
                starts[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = run_to_completion(sensitivity(
                model, stats, config, data, limit=args.limit, batch_size=args.batch_size,
                compute=backend,
            ))  # fmt: skip
            walls[name].append(time.perf_counter() - t0)
            doc = report_doc(report)
            if local_doc is None:
                local_doc = doc
            same = "identical to local" if doc == local_doc else "DIFFERS FROM LOCAL"
            extra = f", pool start {starts[name][-1]:.2f} s" if starts[name] else ""
            print(f"round {round_ + 1}: {name:6s} sweep {walls[name][-1]:7.2f} s ({same}{extra})")
    for backend in backends.values():
        backend.shutdown()
    wall = {name: min(v) for name, v in walls.items()}
    start_s = {name: min(v) for name, v in starts.items() if v}
    print("fastest of each: " + ", ".join(f"{k} {v:.2f} s" for k, v in wall.items()))

    if "local" in wall:
        # One run as the local sweep paid for it (its fastest round): the t of the model.
        t = wall["local"] / n_runs
        print(f"t = fastest local sweep / N = {t:.3f} s per run")
    base = wall.get("local")
    if base:
        print("speed-up over local: " + ", ".join(
            f"{k} {base / v:.2f}x" for k, v in wall.items() if k != "local"))  # fmt: skip
    for kind in ("proc", "ray"):
        one, two = f"{kind}1", f"{kind}2"
        if one not in wall or two not in wall:
            continue
        backend = make_backend(one)
        diffs = overhead_side_by_side(backend, context, jobs)
        backend.shutdown()
        o = statistics.median(diffs)
        s = start_s[one]
        predicted_2 = start_s[two] + math.ceil(n_runs / 2) * (t + o)
        print(f"{kind}: S = {s:.2f} s to start a worker; o = {o:+.3f} s per run (median of "
              f"{len(diffs)} runs side by side, from {min(diffs):+.3f} to {max(diffs):+.3f}); "
              f"model for 2 workers {predicted_2:.1f} s vs measured {wall[two]:.1f} s "
              f"(here the 2 workers share {available_cores()} cores)")
        for cores in (8, 64):
            workers = max(1, cores // threads)
            for n in (n_runs, 451):
                predicted = start_s[two] + math.ceil(n / workers) * (t + o)
                print(f"    {cores}-core cluster ({workers} workers of {threads} threads), "
                      f"N = {n}: {predicted:.1f} s vs local {n * t:.1f} s "
                      f"({n * t / predicted:.1f}x)")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
