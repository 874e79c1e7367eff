"""Synthetic decoders: generation cost, and plain ONNX Runtime loading and running them.

For each size, in fresh processes (so each peak RSS is that step's own):
 (a) ``tools/make_decoder.py`` generation: wall time and peak RSS;
 (b) plain ONNX Runtime (no qviz): session creation from the file, then every calibration
     sample in batches: load time, run time, peak RSS.
These are the baselines qviz's own collect/report/evaluate/export are measured against
(docs/scaling_baseline.md).

Run: .venv/bin/python bench/bench_decoder.py [--sizes tiny,22e6,1e9] [--out DIR] [--keep]
The 1e9 model needs about 4.1 GB of disk and of memory for ONNX Runtime.

``--plain-ort MODEL DATA`` runs only (b) in this process, for timing it whole from outside
(``/usr/bin/time -v``) beside qviz's commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_ORT_CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime as ort
path, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
load = time.perf_counter() - t
ids = np.load(data)["input_ids"]
t = time.perf_counter()
for start in range(0, len(ids), batch):
    out = session.run(None, {"input_ids": ids[start:start + batch]})[0]
    assert np.all(np.isfinite(out))
run = time.perf_counter() - t
print(json.dumps({"load_s": load, "run_s": run, "samples": len(ids), "seq": ids.shape[1],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(argv: list[str]) -> tuple[float, str]:
    """Run ``argv`` in a fresh process; its wall time and stdout. Each child prints its own
    peak RSS (RUSAGE_CHILDREN would give the largest child so far, not this one's)."""
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        raise RuntimeError(f"{' '.join(argv[:3])}... failed ({proc.returncode}): {last}")
    return wall, proc.stdout


def generate(size: str, out_dir: Path, samples: int, seq: int) -> dict[str, float | str]:
    path = out_dir / f"decoder_{size}.onnx"
    argv = [sys.executable, "tools/make_decoder.py", "-o", str(path),
            "--calib-samples", str(samples), "--eval-samples", str(samples),
            "--data-seq", str(seq)]
    if size != "tiny":
        argv += ["--params", size]
    wall, out = run_child(argv)
    rss = float(next(line for line in out.splitlines() if "peak RSS" in line)
                .split("peak RSS")[1].split()[0])
    files = sorted(out_dir.glob(f"decoder_{size}.onnx*"))
    return {"model": str(path), "gen_s": wall, "gen_rss_mb": rss,
            "disk_mb": sum(f.stat().st_size for f in files) / 1e6,
            "summary": out.splitlines()[0]}


def plain_ort(model: str, batch: int) -> dict[str, float]:
    data = model[: -len(".onnx")] + ".calib.npz"
    _, out = run_child([sys.executable, "-c", _ORT_CHILD, model, data, str(batch)])
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,22e6,1e9",
                   help="comma-separated: tiny or a weight count (default tiny,22e6,1e9)")
    p.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    p.add_argument("--seq", type=int, default=64, help="tokens per sample (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, help="folder for the models (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the models (with --out)")
    p.add_argument("--plain-ort", nargs=2, metavar=("MODEL", "DATA"),
                   help="only load and run MODEL on DATA (.npz with input_ids) here")
    args = p.parse_args()
    if args.plain_ort:
        sys.argv = ["-c", *args.plain_ort, str(args.batch_size)]
        exec(compile(_ORT_CHILD, "plain_ort", "exec"), {"__name__": "__main__"})
        return
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="bench-decoder-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.samples} samples x {args.seq} tokens, batch {args.batch_size}")
    header = (f"{'size':>6} {'weights':>10} {'disk MB':>9} {'gen s':>7} {'gen RSS MB':>11} "
              f"{'ORT load s':>11} {'ORT run s':>10} {'ORT RSS MB':>11}")
    print(header)
    try:
        for size in args.sizes.split(","):
            g = generate(size, out_dir, args.samples, args.seq)
            o = plain_ort(str(g["model"]), args.batch_size)
            weights = str(g["summary"]).split(" M weights")[0].split()[-1]
            print(f"{size:>6} {weights + ' M':>10} {g['disk_mb']:>9.1f} {g['gen_s']:>7.1f} "
                  f"{g['gen_rss_mb']:>11.0f} {o['load_s']:>11.2f} {o['run_s']:>10.2f} "
                  f"{o['rss_mb']:>11.0f}", flush=True)
    finally:
        if not (args.keep and args.out):
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
