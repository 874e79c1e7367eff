"""SmoothQuant "auto" export before and after a change, side by side, on one model.

For each source tree (``--before REV``, checked out into a temporary git worktree, and this
one), in fresh processes timed from outside (``bench/run_guarded.py``: CPU time of all threads,
wall time, peak RSS under ``/usr/bin/time -v``, interpreter and imports included):

* ``qviz export STATS --file-format qdq --method mse --granularity per-channel --bits 8
  --smoothquant auto`` (W8A8 with the alpha searched per activation);
* the exported model in plain ONNX Runtime: output cosine against the float model;
* with ``--alphas``: the plan alone (in its own process), the alpha it chose for every
  activation and its estimated errors, compared between the trees (they must be the same);
* with ``--plain``: this tree's export without ``--smoothquant`` (the reference cost).

Prints one JSON line per measurement, then the ratios after / before.

Run: .venv/bin/python bench/bench_smoothquant.py --model /tmp/scale/decoder_2.7e8.onnx \\
       --stats /tmp/scale/2.7e8.qvstats --eval /tmp/scale/decoder_2.7e8.eval.npz \\
       --out /tmp/sq_bench [--alphas] [--plain]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GUARD_MB = 20000
SETTINGS = ["--file-format", "qdq", "--method", "mse", "--granularity", "per-channel",
            "--bits", "8"]

_ALPHAS = r"""
import json, sys, time
from pathlib import Path
from qviz.cli.common import open_stats_and_model
from qviz.cli.options import config_for_model
from qviz.cli.parser import build_parser
from qviz.core.transforms.plan import transform_model
stats_path, settings = sys.argv[1], json.loads(sys.argv[2])
args = build_parser().parse_args(["export", stats_path, "-o", "unused.onnx", *settings,
                                  "--smoothquant", "auto"])
stats, model = open_stats_and_model(Path(stats_path), None)
config = config_for_model(args, model)
start = time.process_time()
plan = transform_model(model, stats, config)
import qviz
print(json.dumps({"plan_cpu_s": time.process_time() - start, "qviz": qviz.__file__, "alphas": {
    act: [a.alpha, [float(e) for e in a.search.errors]] for act, a in plan.scalings.items()}}))
"""

_COSINE = r"""
import json, sys
import numpy as np
import onnxruntime as ort
float_path, quant_path, data, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = ort.SessionOptions()
options.log_severity_level = 3
f = ort.InferenceSession(float_path, options, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(quant_path, options, providers=["CPUExecutionProvider"])
arrays = np.load(data)
name = f.get_inputs()[0].name
x = arrays[name] if name in arrays else arrays[list(arrays.keys())[0]]
cos = []
for start in range(0, len(x), batch):
    a = f.run(None, {name: x[start:start + batch]})[0]
    b = q.run(None, {name: x[start:start + batch]})[0]
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    cos += list((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
print(json.dumps({"cosine": float(np.mean(cos))}))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def guarded(argv: list[str], tree: Path) -> dict:
    cmd = [PY, str(ROOT / "bench" / "run_guarded.py"), "--limit-mb", str(GUARD_MB), "--",
           *argv]
    # Run from the tree: `python -m` and `-c` put the working folder first on sys.path.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=tree,
                          check=True)
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... failed: {result['stderr_tail']}")
    return result


def child(script: str, tree: Path, *args: str) -> dict:
    proc = subprocess.run([PY, "-c", script, *args], capture_output=True, text=True,
                          env=_env(tree), cwd=tree, check=True)
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def export(tree: Path, args: argparse.Namespace, target: Path, smooth: bool) -> dict:
    extra = ["--smoothquant", "auto"] if smooth else []
    run = guarded([PY, "-m", "qviz", "export", str(args.stats), "-o", str(target), *SETTINGS,
                   *extra, "--quiet"], tree)
    cosine = child(_COSINE, tree, str(args.model), str(target), str(args.eval),
                   str(args.batch_size))["cosine"]
    for f in target.parent.glob(target.name + "*"):
        f.unlink()
    return {"cpu_s": run["cpu_s"], "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
            "cosine": round(cosine, 5)}


def measure(label: str, tree: Path, args: argparse.Namespace) -> dict:
    row = {"tree": label, **export(tree, args, args.out / f"{label}.w8a8sq.onnx", True)}
    print(json.dumps({"what": "export --smoothquant auto", **row}), flush=True)
    if args.alphas:
        found = child(_ALPHAS, tree, str(args.stats), json.dumps(SETTINGS))
        if not Path(found["qviz"]).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"{label}: imported qviz from {found['qviz']}, not {tree}")
        row["plan_cpu_s"] = round(found["plan_cpu_s"], 2)
        row["alphas"] = found["alphas"]
        print(json.dumps({"what": "plan alone", "tree": label,
                          "plan_cpu_s": row["plan_cpu_s"]}), flush=True)
    return row


def compare_alphas(before: dict, after: dict) -> str:
    a, b = before["alphas"], after["alphas"]
    if a.keys() != b.keys():
        return f"different activations rescaled: {len(a)} before, {len(b)} after"
    changed = [act for act in a if a[act][0] != b[act][0]]
    worst = max((abs(x - y) / max(abs(x), 1e-300) for act in a
                 for x, y in zip(a[act][1], b[act][1], strict=True)), default=0.0)
    return (f"alphas: {len(a)} activations, {len(changed)} chose differently"
            f"{' (' + ', '.join(changed[:5]) + ')' if changed else ''}; largest relative "
            f"difference of an estimated error {worst:.1e}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the float ONNX model")
    p.add_argument("--stats", type=Path, required=True, help="its qviz statistics")
    p.add_argument("--eval", type=Path, required=True, help="data for the cosine check")
    p.add_argument("--before", help="git revision to compare against (default: where this "
                   "branch left main)")
    p.add_argument("--out", type=Path, required=True, help="folder for the exports")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--alphas", action="store_true", help="compare the chosen alphas too")
    p.add_argument("--plain", action="store_true", help="also export without SmoothQuant")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.before is None:
        args.before = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT,
                                     check=True, capture_output=True, text=True).stdout.strip()[:9]
    with tempfile.TemporaryDirectory(prefix="qviz-before-") as tmp:
        before_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            before = measure(f"before ({args.before})", before_tree, args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)],
                           cwd=ROOT, check=False, capture_output=True)
    after = measure("after", ROOT, args)
    print(f"\n{args.model.name}: export --smoothquant auto, after / before")
    for key in ("cpu_s", "wall_s", "peak_rss_mb"):
        print(f"  {key:12s} {before[key]:>9} -> {after[key]:>9}  "
              f"({after[key] / before[key]:.2f}x)")
    print(f"  {'cosine':12s} {before['cosine']:>9} -> {after['cosine']:>9}")
    if args.alphas:
        print(f"  {'plan_cpu_s':12s} {before['plan_cpu_s']:>9} -> {after['plan_cpu_s']:>9}  "
              f"({after['plan_cpu_s'] / before['plan_cpu_s']:.2f}x)")
        print("  " + compare_alphas(before, after))
    if args.plain:
        plain = export(ROOT, args, args.out / "plain.w8a8.onnx", False)
        print(json.dumps({"what": "export without SmoothQuant", "tree": "after", **plain}))
        print(f"  SmoothQuant auto / plain export (after): CPU "
              f"{after['cpu_s'] / plain['cpu_s']:.2f}x, peak RSS "
              f"{after['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
