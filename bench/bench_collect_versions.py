"""`qviz collect` of two checkouts side by side: CPU and wall time, peak RSS; alternating runs.

For a before/after figure of a change to calibration: each run is a fresh process timed
from outside (``/usr/bin/time -v``), the two checkouts taking turns so that both see the
same machine; plain ONNX Runtime on the same batches is timed in the same rounds.

Run: .venv/bin/python bench/bench_collect_versions.py MODEL DATA --old /path/to/old/checkout
     [--rounds 2] [--batch-size 8] [--weight-stats]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_scale import _PLAIN_ORT  # noqa: E402  (the same baseline as the scaling table)


def _seconds(clock: str) -> float:
    """``/usr/bin/time``'s elapsed time, ``[h:]m:ss.ss``, in seconds."""
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def timed(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, int, float]:
    """(CPU seconds, peak RSS MB, wall seconds) of one process run in `cwd` (``python -m``
    imports from there first)."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        subprocess.run(["/usr/bin/time", "-v", "-o", out.name, *argv], env=env, cwd=cwd,
                       check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fields = dict(line.strip().split(": ", 1) for line in Path(out.name).read_text()
                      .splitlines() if ": " in line)
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    wall = _seconds(fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"])
    return cpu, int(fields["Maximum resident set size (kbytes)"]) // 1024, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--old", type=Path, required=True, help="the other checkout's root")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weight-stats", action="store_true",
                   help="collect the large weights' statistics too (default: activations)")
    args = p.parse_args()
    runs: dict[str, list[tuple[float, int, float]]] = {"plain ORT": [], "old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        collect = [sys.executable, "-m", "qviz", "collect", args.model, "--data", args.data,
                   "-o", str(Path(tmp) / "s.qvstats"), "--batch-size", str(args.batch_size),
                   "--quiet", *([] if args.weight_stats else ["--no-weight-stats"])]
        plain = [sys.executable, "-c", _PLAIN_ORT, args.model, args.data,
                 str(args.batch_size)]
        for _ in range(args.rounds):
            runs["plain ORT"].append(timed(plain, dict(os.environ)))
            for label, root in (("old", args.old), ("new", ROOT)):
                env = dict(os.environ, PYTHONPATH=str(root))
                runs[label].append(timed(collect, env, cwd=root))
    base = statistics.median(c for c, _, _ in runs["plain ORT"])
    rss = statistics.median(r for _, r, _ in runs["plain ORT"])
    base_wall = statistics.median(w for _, _, w in runs["plain ORT"])
    for label, values in runs.items():
        cpu = statistics.median(c for c, _, _ in values)
        peak = statistics.median(r for _, r, _ in values)
        wall = statistics.median(w for _, _, w in values)
        print(f"{label:<10} CPU {cpu:6.1f} s (÷ plain {cpu / base:.2f}), wall {wall:6.1f} s "
              f"(÷ plain {wall / base_wall:.2f}), peak RSS {peak:,} MB (÷ plain {peak / rss:.2f})")
    print(json.dumps({k: v for k, v in runs.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
