"""The entropy method's window search on every weight of a model: the direct and the tiled
form of ``ort_entropy_kl`` side by side, on the same rows, in one process.

For each model, every weight's per-channel histograms as ``qviz report --weight-method entropy
--granularity per-channel`` builds them: the large weights' (``STATS_MIN_VALUES`` and up)
from their statistics (256 bins a channel, as ``qviz collect`` stores them), the others from
each channel's values (512 bins, the exact analysis). Each is re-binned once onto
onnxruntime's symmetric layout, then scored by both forms, interleaved (``--repeat``, the
median kept), in CPU time of this process (the machines here are shared: wall time mostly
measures the neighbours). The direct form is the implementation the tiled one replaced
(the same code, bit for bit); every chosen range is checked to be identical.

Prints, per model and kind of weight: rows (channels), bins, CPU seconds of each form for the
window search alone and for the whole range search (re-binning included), their ratios, and
the tiled search's CPU microseconds per row. ``--sizes`` times both forms on synthetic rows
per (bins, rows): where AUTO switches from one to the other.

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_entropy.py MODEL.onnx [...]
     [--stats FILE.qvstats] [--repeat 3] [--sizes]
Models: bench/make_chain.py, tools/make_decoder.py --builder onnx --params 2.7e8.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.calibration.entropy import (  # noqa: E402
    ENTROPY_QUANTIZED_BINS,
    KlForm,
    entropy_bins,
    entropy_ranges,
    kl_form,
    ort_entropy_kl,
    symmetric_counts,
)
from qviz.core.calibration.weights import ROW_BINS  # noqa: E402
from qviz.core.model.loading import load_model  # noqa: E402
from qviz.core.stats.histogram import HistogramRows  # noqa: E402
from qviz.core.stats.stats_file import load_stats  # noqa: E402
from qviz.core.stats.weight_collect import uses_stats  # noqa: E402
from qviz.core.stats.weight_stats import compute_weight_stats  # noqa: E402

FORMS = (KlForm.DIRECT, KlForm.TILED)


@dataclass
class Totals:
    rows: int = 0
    bins: int = 0
    kl: dict[KlForm, float] | None = None
    search: dict[KlForm, float] | None = None

    def add(self, key: str, form: KlForm, seconds: float) -> None:
        table = getattr(self, key)
        if table is None:
            table = {f: 0.0 for f in FORMS}
            setattr(self, key, table)
        table[form] += seconds


def cpu_median(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median CPU seconds of ``fn()`` over ``repeat`` runs, and its last result."""
    times = []
    out = None
    for _ in range(repeat):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), out


def weight_rows(path: Path, stats_path: Path | None):
    """(kind, rows, amax) of every weight with a channel axis, as the report builds them."""
    model = load_model(path)
    stored = load_stats(stats_path).weights if stats_path is not None else {}
    seen: set[str] = set()
    for layer in model.layers:
        name = layer.weight
        if name is None or name in seen or layer.channel_axis is None:
            continue
        seen.add(name)
        if uses_stats(layer):
            ws = stored[name] if name in stored else compute_weight_stats(
                model.weight(name), name, layer.channel_axis)
            if ws is None:
                continue
            rows, vmin, vmax = ws.rows, ws.channel_min, ws.channel_max
            yield "from statistics", rows, np.maximum(np.abs(vmin), np.abs(vmax))
        else:
            w = np.asarray(model.weight(name))
            x = np.moveaxis(w, layer.channel_axis, 0).reshape(w.shape[layer.channel_axis], -1)
            x = x.astype(np.float64)
            rows = HistogramRows.from_values(x, ROW_BINS)
            amax = np.maximum(np.abs(x.min(axis=1)), np.abs(x.max(axis=1)))
            yield "from values", rows, amax


def bench_model(path: Path, stats_path: Path | None, repeat: int) -> None:
    totals: dict[str, Totals] = {}
    for kind, rows, amax in weight_rows(path, stats_path):
        t = totals.setdefault(kind, Totals())
        n = entropy_bins(rows.counts.shape[1])
        counts = symmetric_counts(rows, amax, n)
        t.rows += counts.shape[0]
        t.bins = n
        ranges = {}
        for form in FORMS:  # interleaved, so that load hits both alike
            seconds, _ = cpu_median(functools.partial(ort_entropy_kl, counts, form=form), repeat)
            t.add("kl", form, seconds)
            seconds, ranges[form] = cpu_median(
                functools.partial(entropy_ranges, rows, amax, form=form), repeat)
            t.add("search", form, seconds)
        for a, b in zip(ranges[KlForm.DIRECT], ranges[KlForm.TILED], strict=True):
            if not np.array_equal(a, b):
                raise SystemExit(f"{path.name}: the forms chose different ranges")
    print(f"\n{path.name}")
    print("| weights | rows | bins | KL direct s | KL tiled s | ratio | search direct s "
          "| search tiled s | ratio | tiled µs per row |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, t in totals.items():
        assert t.kl is not None and t.search is not None
        kd, kt = t.kl[KlForm.DIRECT], t.kl[KlForm.TILED]
        sd, st = t.search[KlForm.DIRECT], t.search[KlForm.TILED]
        print(f"| {kind} | {t.rows} | {t.bins} | {kd:.2f} | {kt:.2f} | {kd / kt:.1f}x "
              f"| {sd:.2f} | {st:.2f} | {sd / st:.1f}x | {1e6 * st / t.rows:.0f} |")
    print("(every chosen range identical in both forms)")


def bench_sizes(repeat: int) -> None:
    rng = np.random.default_rng(0)
    print("\n| bins | rows | direct ms | tiled ms | ratio | AUTO |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for n in (256, 512, 1024, 2048, 4096):
        for r in (1, 2, 8, 64):
            x = rng.standard_normal((r, 20_000))
            a = np.abs(x).max(axis=1, keepdims=True)
            idx = np.clip(((x + a) / (2 * a) * n).astype(np.intp), 0, n - 1)
            hist = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
            ms = {}
            for form in FORMS:
                seconds, _ = cpu_median(functools.partial(ort_entropy_kl, hist, form=form),
                                        repeat)
                ms[form] = 1e3 * seconds
            d, t = ms[KlForm.DIRECT], ms[KlForm.TILED]
            print(f"| {n} | {r} | {d:.1f} | {t:.1f} | {d / t:.2f}x | {kl_form(r, n).value} |")
    print(f"(quantized bins {ENTROPY_QUANTIZED_BINS})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--stats", type=Path, action="append", default=[],
                   help="stats file of a model (in the order of the models; optional)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", action="store_true", help="synthetic rows per (bins, rows)")
    args = p.parse_args()
    for i, model in enumerate(args.models):
        bench_model(model, args.stats[i] if i < len(args.stats) else None, args.repeat)
    if args.sizes or not args.models:
        bench_sizes(args.repeat)


if __name__ == "__main__":
    main()
