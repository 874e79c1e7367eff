"""Run one command under ``/usr/bin/time -v``; stop it if its RSS passes a limit.

Prints one JSON line: exit code, wall seconds, CPU seconds (user + system, all threads), peak
RSS (MB, from time -v), whether the guard stopped it, and the last lines of its stderr.
Meant for measuring qviz's commands on models that may not fit: on a shared machine a
runaway process must not take everyone's memory.

Run: .venv/bin/python bench/run_guarded.py --limit-mb 14000 -- qviz collect MODEL --data D -o S
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match.group(1)) / 1024 if match else None


def _child_of(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit-mb", type=float, required=True)
    p.add_argument("--stdout", type=Path, help="file for the command's stdout (default: none)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give a command after --")
    out = open(args.stdout, "w") if args.stdout else subprocess.DEVNULL
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=out, stderr=err)
        child, stopped = None, False
        while proc.poll() is None:
            child = child or _child_of(proc.pid)
            rss = _rss_mb(child) if child else None
            if rss is not None and rss > args.limit_mb and not stopped:
                os.kill(child, signal.SIGKILL)  # type: ignore[arg-type]  # the command we started
                stopped = True
            time.sleep(0.2)
        wall = time.perf_counter() - start
        err.seek(0)
        text = err.read()
    if args.stdout:
        out.close()  # type: ignore[union-attr]
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    tail = [ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("\t") and not ln.startswith("Command ")]
    print(json.dumps({
        "command": " ".join(command),
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(int(peak.group(1)) / 1024) if peak else None,
        # CPU time (all threads): on a machine other work keeps busy, wall time measures the
        # neighbours as much as the command.
        "cpu_s": round(float(user.group(1)) + float(system.group(1)), 2) if user and system
        else None,
        "stopped_at_limit": stopped,
        "stderr_tail": tail[-3:],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
