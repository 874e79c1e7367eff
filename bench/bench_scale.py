"""How qviz scales: each command on models from the demo to 4 GB, beside plain ONNX Runtime.

For every model, in fresh processes timed from outside (``bench/run_guarded.py``: wall time,
CPU time of all threads and peak RSS under ``/usr/bin/time -v``, the interpreter and imports
included). Ratios are of CPU time: on a machine other work keeps busy, wall time measures the
neighbours as much as the command (both are printed).

* plain ORT: session from the file, then every calibration sample in batches (the baseline);
* ``qviz collect`` (activation statistics, then the large weights' statistics);
* ``qviz report`` (per-channel weights, MSE activations): weight analysis of every tensor;
* ``qviz export --file-format qdq`` (W8A8: int8 per-channel weights, uint8 MSE activations);
* the exported model checked in plain ORT: output cosine against the float model.

Then, for the decoders, weight-only int4 per group (``--weight-only --bits 4 --granularity
per-group --group-size 32``) exported and timed against the float model in plain ORT (one
batch, interleaved runs), with the ops ORT chose (MatMulNBits).

Prints a Markdown table (docs/benchmarks.md, "Scaling") and one JSON line per measurement.
Models are made with tools/make_decoder.py (``--builder onnx``) and bench/make_chain.py
into ``--out`` unless already there.

Run: .venv/bin/python bench/bench_scale.py --out /tmp/scale [--models demo,22e6,2.7e8,1e9,chain]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
QVIZ = [str(Path(PY).parent / "qviz")]
GUARD_MB = 20000

_PLAIN_ORT = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.log_severity_level = 3
t = time.perf_counter()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
load = time.perf_counter() - t
arrays = np.load(data)
name = session.get_inputs()[0].name
x = arrays[name] if name in arrays else arrays[list(arrays.keys())[0]]
t = time.perf_counter()
for start in range(0, len(x), batch):
    session.run(None, {name: x[start:start + batch]})
print(json.dumps({"load_s": load, "run_s": time.perf_counter() - t}))
"""

_CHECK_EXPORT = r"""
import json, sys, time
import numpy as np
import onnx
import onnxruntime as ort
float_path, quant_path, data, batch, mode = sys.argv[1:6]
batch = int(batch)
options = ort.SessionOptions()
options.log_severity_level = 3
qopt = ort.SessionOptions()
qopt.log_severity_level = 3
if mode == "latency":
    qopt.optimized_model_filepath = quant_path + ".optimized.onnx"
    qopt.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name",
        "optimized.onnx.data")
f = ort.InferenceSession(float_path, options, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(quant_path, qopt, providers=["CPUExecutionProvider"])
arrays = np.load(data)
name = f.get_inputs()[0].name
x = arrays[name] if name in arrays else arrays[list(arrays.keys())[0]]
out = {}
if mode == "cosine":
    cos = []
    for start in range(0, len(x), batch):
        a = f.run(None, {name: x[start:start + batch]})[0]
        b = q.run(None, {name: x[start:start + batch]})[0]
        a = a.reshape(len(a), -1).astype(np.float64)
        b = b.reshape(len(b), -1).astype(np.float64)
        cos += list((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    out["cosine"] = float(np.mean(cos))
else:
    feeds = {name: x[:batch]}
    for s in (f, q):
        s.run(None, feeds)
    tf, tq = [], []
    budget = float(sys.argv[6])
    start = time.perf_counter()
    while time.perf_counter() - start < budget or len(tf) < 3:
        t0 = time.perf_counter(); f.run(None, feeds); t1 = time.perf_counter()
        q.run(None, feeds); t2 = time.perf_counter()
        tf.append(t1 - t0); tq.append(t2 - t1)
    ops = [n.op_type for n in onnx.load(quant_path + ".optimized.onnx",
                                        load_external_data=False).graph.node]
    out.update(float_ms=1e3 * float(np.median(tf)), quant_ms=1e3 * float(np.median(tq)),
               runs=len(tf), matmulnbits=ops.count("MatMulNBits"), matmul=ops.count("MatMul"))
print(json.dumps(out))
"""


@dataclass
class Model:
    key: str
    path: Path
    calib: Path
    eval: Path
    decoder: bool


def run_guarded(argv: list[str], stdout: Path | None = None) -> dict:
    cmd = [PY, str(ROOT / "bench" / "run_guarded.py"), "--limit-mb", str(GUARD_MB)]
    if stdout is not None:
        cmd += ["--stdout", str(stdout)]
    proc = subprocess.run([*cmd, "--", *argv], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... failed: {result['stderr_tail']}")
    return result


def make(key: str, out: Path) -> Model:
    if key == "demo":
        from qviz.core.demo import demo_paths

        paths = demo_paths()
        return Model(key, paths.model, paths.data, paths.data, False)
    if key == "chain":
        path = out / "chain.onnx"
        if not path.exists():
            subprocess.run([PY, "bench/make_chain.py", "-o", str(path)], cwd=ROOT, check=True)
        return Model(key, path, out / "chain.calib.npz", out / "chain.eval.npz", False)
    path = out / f"decoder_{key}.onnx"
    if not path.exists():
        subprocess.run([PY, "tools/make_decoder.py", "--params", key, "--builder", "onnx",
                        "-o", str(path), "--calib-samples", "32", "--eval-samples", "32",
                        "--data-seq", "64"], cwd=ROOT, check=True, capture_output=True)
    return Model(key, path, out / f"decoder_{key}.calib.npz", out / f"decoder_{key}.eval.npz",
                 True)


def disk_mb(path: Path) -> float:
    files = [path, path.with_name(path.name + ".data")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def child(script: str, *args: str) -> list[str]:
    return [PY, "-c", script, *args]


def app_times(m: Model, out: Path) -> dict:
    """The app on the model (bench/bench_app_update.py, offscreen): open, calibrate and
    measure every tensor, then select tensors down the model and change settings."""
    text = out / "app.txt"
    run_guarded([PY, "bench/bench_app_update.py", "--model", str(m.path), "--data",
                 str(m.calib), "--changes", "10", "--selections", "10"], stdout=text)
    found: dict = {}
    for line in text.read_text().splitlines():
        if match := re.match(r"opened in ([\d.]+) s, calibrated after ([\d.]+) s, every "
                             r"tensor measured after ([\d.]+) s", line):
            found.update(app_open_s=float(match[1]), app_calibrated_s=float(match[2]),
                         app_measured_s=float(match[3]))
        elif match := re.match(r"selecting a tensor .*select \+ paint: median ([\d.]+) ms",
                               line):
            found.update(app_select_ms=float(match[1]))
        elif match := re.match(r"selecting a tensor .*complete: median ([\d.]+) ms", line):
            found.update(app_complete_ms=float(match[1]))
        elif match := re.match(r"(weight|activation)\s+update \+ paint\s+([\d.]+)", line):
            found[f"app_{match[1]}_change_ms"] = float(match[2])
    return found


def measure(m: Model, out: Path, batch: int, app: bool = False) -> dict:
    stats = out / f"{m.key}.qvstats"
    qdq = out / f"{m.key}.w8a8.onnx"
    row: dict = {"model": m.key, "disk_mb": disk_mb(m.path)}
    plain = run_guarded(child(_PLAIN_ORT, str(m.path), str(m.calib), str(batch)),
                        stdout=out / "plain.json")
    inner = json.loads((out / "plain.json").read_text())
    row.update(plain_s=plain["wall_s"], plain_cpu_s=plain["cpu_s"],
               plain_rss_mb=plain["peak_rss_mb"], plain_load_s=inner["load_s"],
               plain_run_s=inner["run_s"])
    collect = run_guarded([*QVIZ, "collect", str(m.path), "--data", str(m.calib), "-o",
                           str(stats), "--batch-size", str(batch), "--quiet"])
    act_only = run_guarded([*QVIZ, "collect", str(m.path), "--data", str(m.calib), "-o",
                            str(out / "act_only.qvstats"), "--batch-size", str(batch),
                            "--quiet", "--no-weight-stats"])
    row.update(collect_s=collect["wall_s"], collect_cpu_s=collect["cpu_s"],
               collect_rss_mb=collect["peak_rss_mb"], collect_act_s=act_only["wall_s"],
               collect_act_cpu_s=act_only["cpu_s"], collect_act_rss_mb=act_only["peak_rss_mb"])
    report = run_guarded([*QVIZ, "report", str(stats), "--method", "mse", "--granularity",
                          "per-channel"], stdout=out / "report.txt")
    entropy = run_guarded([*QVIZ, "report", str(stats), "--method", "entropy",
                           "--weight-method", "entropy", "--granularity", "per-channel"],
                          stdout=out / "report_entropy.txt")
    row.update(report_s=report["wall_s"], report_cpu_s=report["cpu_s"],
               report_rss_mb=report["peak_rss_mb"], report_entropy_s=entropy["wall_s"],
               report_entropy_cpu_s=entropy["cpu_s"],
               report_entropy_rss_mb=entropy["peak_rss_mb"])
    export = run_guarded([*QVIZ, "export", str(stats), "--file-format", "qdq", "-o", str(qdq),
                          "--method", "mse", "--granularity", "per-channel", "--bits", "8"])
    row.update(export_s=export["wall_s"], export_cpu_s=export["cpu_s"],
               export_rss_mb=export["peak_rss_mb"], export_mb=disk_mb(qdq))
    check = subprocess.run(child(_CHECK_EXPORT, str(m.path), str(qdq), str(m.eval), str(batch),
                                 "cosine"), capture_output=True, text=True, check=True)
    row.update(w8a8_cosine=json.loads(check.stdout)["cosine"])
    if m.decoder:
        # The same W8A8 with SmoothQuant (alpha searched per layer): how decoders with
        # outlier channels are quantized to 8-bit activations.
        sq = out / f"{m.key}.w8a8sq.onnx"
        export_sq = run_guarded([*QVIZ, "export", str(stats), "--file-format", "qdq", "-o",
                                 str(sq), "--method", "mse", "--granularity", "per-channel",
                                 "--bits", "8", "--smoothquant", "auto"])
        check = subprocess.run(child(_CHECK_EXPORT, str(m.path), str(sq), str(m.eval),
                                     str(batch), "cosine"), capture_output=True, text=True,
                               check=True)
        row.update(export_sq_s=export_sq["wall_s"], export_sq_cpu_s=export_sq["cpu_s"],
                   export_sq_rss_mb=export_sq["peak_rss_mb"],
                   w8a8_sq_cosine=json.loads(check.stdout)["cosine"])
        for f in out.glob(f"{m.key}.w8a8sq.onnx*"):
            f.unlink()
        w4 = out / f"{m.key}.w4g32.onnx"
        run_guarded([*QVIZ, "export", str(stats), "--file-format", "qdq", "-o", str(w4),
                     "--weight-only", "--bits", "4", "--granularity", "per-group",
                     "--group-size", "32"])
        lat = subprocess.run(child(_CHECK_EXPORT, str(m.path), str(w4), str(m.eval),
                                   str(batch), "latency", "10"),
                             capture_output=True, text=True, check=True)
        row.update({f"w4_{k}": v for k, v in json.loads(lat.stdout).items()})
        cos = subprocess.run(child(_CHECK_EXPORT, str(m.path), str(w4), str(m.eval),
                                   str(batch), "cosine"), capture_output=True, text=True,
                             check=True)
        row.update(w4_cosine=json.loads(cos.stdout)["cosine"], w4_mb=disk_mb(w4))
        for f in out.glob(f"{m.key}.w4g32.onnx*"):
            f.unlink()
    for f in out.glob(f"{m.key}.w8a8.onnx*"):
        f.unlink()
    if app:
        row.update(app_times(m, out))
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | disk | plain ORT: CPU (wall), peak RSS | collect: CPU (wall) | collect ÷ "
        "plain ORT, CPU | peak RSS ÷ plain ORT | report, per-channel MSE: CPU, RSS | report, "
        "per-channel entropy: CPU | export W8A8: CPU, RSS | W8A8 output cosine (with SmoothQuant) "
        "| app: select + paint (complete), change (weight / activation) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['disk_mb']:,.0f} MB | {r['plain_cpu_s']:.1f} s "
            f"({r['plain_s']:.1f} s), {r['plain_rss_mb']:,} MB | {r['collect_cpu_s']:.1f} s "
            f"({r['collect_s']:.1f} s); activations only {r['collect_act_cpu_s']:.1f} s | "
            f"{r['collect_cpu_s'] / r['plain_cpu_s']:.2f} (activations only "
            f"{r['collect_act_cpu_s'] / r['plain_cpu_s']:.2f}) | "
            f"{r['collect_rss_mb'] / r['plain_rss_mb']:.2f} ({r['collect_rss_mb']:,} MB) | "
            f"{r['report_cpu_s']:.1f} s, {r['report_rss_mb']:,} MB | "
            f"{r['report_entropy_cpu_s']:.1f} s | {r['export_cpu_s']:.1f} s, "
            f"{r['export_rss_mb']:,} MB | {r['w8a8_cosine']:.4f}"
            + (f" ({r['w8a8_sq_cosine']:.4f})" if "w8a8_sq_cosine" in r else "")
            + (f" | {r['app_select_ms']:.0f} ms ({r.get('app_complete_ms', 0):.0f} ms), "
               f"{r['app_weight_change_ms']:.0f} / "
               f"{r['app_activation_change_ms']:.0f} ms |" if "app_select_ms" in r else " | — |")
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for models and outputs")
    p.add_argument("--models", default="demo,22e6,2.7e8,1e9",
                   help="comma-separated: demo, chain, or a decoder weight count")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--keep", action="store_true", help="keep generated models")
    p.add_argument("--app", action="store_true",
                   help="also time the app on each model (bench_app_update.py)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {' '.join(load)} at start; batch {args.batch_size}", flush=True)
    rows = []
    for key in args.models.split(","):
        t = time.perf_counter()
        m = make(key, args.out)
        row = measure(m, args.out, args.batch_size, app=args.app)
        row["bench_s"] = time.perf_counter() - t
        print(json.dumps(row), flush=True)
        rows.append(row)
        if not args.keep and m.key != "demo":
            for f in args.out.glob(m.path.stem + "*"):
                f.unlink() if f.is_file() else shutil.rmtree(f)
    with open("/proc/loadavg") as f:
        print(f"# load average {' '.join(f.read().split()[:3])} at the end")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
