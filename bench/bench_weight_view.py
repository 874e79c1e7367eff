"""How long a large weight's histograms take to draw from its statistics, offscreen.

Makes a synthetic weight (default 100 M values: 10240 × 10240 float32, Gaussian with a few
loud output channels), computes its statistics once (`compute_stats`: the one pass over its
values the layer view makes, kept per weight), then times what the layer view does each time
it shows the weight:

* from statistics — the display histogram (`weight_histogram`) and the per-tensor error curve
  (`weight_curve` given the statistics), both read from the 2048-bin statistics histogram;
* draw — the weight histogram widget and the error-curve widget set to them and rendered
  (`grab()`: until the pixels exist);

and, side by side, what the view did before this change on each first view of a weight: a
display histogram by `np.histogram` over a float64 copy of the values, and the error curve's
own statistics pass (the markers of weights over 2 M values made a third).

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_weight_view.py [--values 100e6]

Prints the median milliseconds of each step over `--repeats` runs, wall and this thread's CPU
time (the figure to trust on a shared, loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PySide6.QtWidgets import QApplication

from qviz.app.views import plot_style as st
from qviz.app.views.error_curve_view import ErrorCurveView
from qviz.app.views.histogram_view import HistogramView
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.layerdata.curves import weight_curve
from qviz.core.layerdata.layer import MAX_WEIGHT_BINS, MIN_WEIGHT_BINS, weight_histogram
from qviz.core.quant.formats import NumberFormat
from qviz.core.stats.tensor_stats import compute_stats


def synthetic_weight(n_values: float, seed: int = 0) -> np.ndarray:
    side = round(float(np.sqrt(n_values)) / 64) * 64
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((side, side), dtype=np.float32)
    w *= np.float32(0.02)
    w[:: side // 4] *= np.float32(12.0)  # a few loud output channels, as real layers have
    return w


def previous_histogram(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The display histogram as the layer view computed it before: from the values."""
    flat = np.asarray(w, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    bins = int(np.clip(2 * np.sqrt(max(flat.size, 1)), MIN_WEIGHT_BINS, MAX_WEIGHT_BINS))
    counts, edges = np.histogram(flat, bins=bins, range=(float(flat.min()), float(flat.max())))
    return edges, counts.astype(np.float64)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and thread-CPU milliseconds of `fn`."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=float, default=100e6, help="weight size (values)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication([])
    st.configure_pyqtgraph()
    w = synthetic_weight(args.values)
    fmt = NumberFormat.parse("int8")
    print(f"weight {w.shape[0]} x {w.shape[1]} = {w.size / 1e6:.1f} M values, float32")

    c0, t0 = time.thread_time(), time.perf_counter()
    stats = compute_stats(w, "w")
    stats_ms = ((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3)
    lo, hi = choose_range(stats, MethodSpec(Method.MINMAX), fmt)

    hist_view = HistogramView("Weight", st.WEIGHT_COLOR)
    curve_view = ErrorCurveView()
    for widget in (hist_view, curve_view):
        widget.resize(700, 400)
        widget.show()
    app.processEvents()

    def from_stats() -> None:
        weight_histogram(stats)
        weight_curve(w, fmt, 0.0, stats)

    edges, counts = weight_histogram(stats)
    curve = weight_curve(w, fmt, 0.0, stats)

    def draw() -> None:
        hist_view.set_histogram(edges, counts)
        hist_view.set_quantizer(lo, hi, fmt, None, "", "")
        curve_view.set_curves(curve, None)
        hist_view.grab()  # renders every pixel now, offscreen or not
        curve_view.grab()

    rows = [
        ("statistics: one pass over the values (once per weight)", stats_ms),
        ("from statistics: display histogram + error curve", timed(from_stats, args.repeats)),
        ("draw: histogram and error curve set and rendered", timed(draw, args.repeats)),
        ("previous: display histogram from the values", timed(
            lambda: previous_histogram(w), max(1, args.repeats // 2))),
        ("previous: the curve's own statistics pass", timed(
            lambda: compute_stats(w.ravel()), max(1, args.repeats // 2))),
    ]
    print(f"{'step':<58} {'wall ms':>9} {'CPU ms':>9}")
    for name, (wall, cpu) in rows:
        print(f"{name:<58} {wall:>9.1f} {cpu:>9.1f}")
    for i, what in ((0, "wall"), (1, "CPU")):
        shown = rows[1][1][i] + rows[2][1][i]
        before = rows[3][1][i] + rows[4][1][i] + rows[2][1][i]
        print(f"{what}: a view from the statistics {shown:.1f} ms (target 100 ms); the "
              f"previous first view {before:.1f} ms for the same pixels ({before / shown:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
