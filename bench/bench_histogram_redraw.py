"""How fast the layer view redraws, on the built-in demo, offscreen.

Calibrates the demo (about a second), analyses every tensor with the default settings and
then times the layer view alone (the main window's part is bench_app_update.py):

* show_layer, cold — first time a layer is shown (weight histogram, error curves and method
  markers computed; the layer view caches them);
* show_layer, method changed — the layer re-shown after the activation's (or the weight's)
  method changed, as the main window does after a control change or a finished drag (the
  new results are computed beforehand: that is core time, timed in bench_methods.py);
* drag step, activation — one move of the activation clip band: snap, grid and text update,
  ``histogram_metrics`` preview, metrics panel, error-curve marker;
* drag step, weight — the same for the weight band (``exact_metrics`` over the whole weight;
  throttled above 250k values, so the classifier's 401k-value weight is also timed alone);
* each of the above "+ paint": until the new pixels exist (the event loop runs and Qt
  repaints what the change dirtied; with ``--full`` the whole layer view for show_layer,
  and the dragged histogram, the metrics panel and the error curve for a drag step, are
  repainted entirely: the worst case).

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_histogram_redraw.py [--full]

Prints median and 95th percentile milliseconds of wall time and of process CPU time (CPU time
is the better figure on a shared, loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PySide6.QtWidgets import QApplication, QWidget

from qviz.app.views.layer_view import LayerView
from qviz.core.calibration.analysis import TensorResult, analyze_tensor, quant_tensors
from qviz.core.calibration.config import QuantConfig
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import exact_metrics
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion
from qviz.core.stats.tensor_stats import compute_stats

METHODS = (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)


def layer_inputs(
    model: LoadedModel,
    stats: CalibrationStats,
    index: int,
    weight_method: Method | None = None,
    act_method: Method | None = None,
) -> tuple:
    """What the main window passes to show_layer for layer ``index`` (default settings, or
    the given methods), followed by (model, stats, index)."""
    cfg = QuantConfig()
    wcfg, acfg = cfg.weights, cfg.activations
    if weight_method is not None:
        wcfg = replace(wcfg, spec=MethodSpec(weight_method))
    if act_method is not None:
        acfg = replace(acfg, spec=MethodSpec(act_method))
    layer = model.layers[index]
    tensors = {(t.name, t.kind): t for t in quant_tensors(model)}
    assert layer.weight is not None
    w = model.weight(layer.weight)
    wr: TensorResult = analyze_tensor(
        model, stats, tensors[(layer.weight, TensorKind.WEIGHT)], wcfg
    )
    act = layer.activations[0]
    ar = analyze_tensor(model, stats, tensors[(act, TensorKind.ACTIVATION)], acfg)
    wstats = compute_stats(w)
    ranges = {}
    for m in METHODS:
        ranges[(layer.weight, m)] = choose_range(wstats, MethodSpec(m), cfg.weights.fmt)
        ranges[(act, m)] = choose_range(stats.tensors[act], MethodSpec(m), cfg.activations.fmt)
    return wr, w, ar, stats.tensors[act], ranges, (model, stats, index)


def timed(fn: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def report(name: str, samples: tuple[list[float], list[float]]) -> None:
    def stats(xs: list[float]) -> str:
        xs = sorted(xs)
        p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
        return f"median {statistics.median(xs):7.1f}  p95 {p95:7.1f}"

    wall, cpu = samples
    print(f"{name:<44} wall {stats(wall)}   cpu {stats(cpu)}")


def paint(*widgets: QWidget) -> None:
    """Paint what changed, as the event loop does after a mouse move or a click.

    ``QWidget.repaint`` is not enough for plots: a graphics view paints scene changes only
    after the scene has processed them in the event loop. So run the loop (twice, so that
    updates the first pass schedules are painted too). Qt repaints only the regions the
    changed items dirtied, exactly as in the application. ``FULL_REPAINT`` (``--full``)
    marks ``widgets`` entirely dirty first: the worst case, e.g. a window resize."""
    if FULL_REPAINT:
        for w in widgets:
            w.update()
    QApplication.processEvents()
    QApplication.processEvents()


FULL_REPAINT = False


def bench_layer(view: LayerView, inputs: tuple, label: str, repeat: int) -> None:
    wr, w, ar, astats = inputs[:4]
    print(f"\n{label}: weight {w.shape}, activation histogram {astats.histogram.bins} bins")

    def cold() -> None:
        view._cache.clear()  # the bench's one peek inside: measure the uncached path
        view._whist = None
        view.show_layer(*inputs[:5])

    report("show_layer, cold", timed(cold, max(3, repeat // 5)))
    report("show_layer, cold + paint", timed(lambda: (cold(), paint(view)), 3))
    # A settings change: the main window re-analyses one tensor and re-shows the layer.
    # Alternate the activation between two methods (the weight stays as it is), then the
    # weight between two methods; the new results are computed beforehand (core time).
    model, stats, index = inputs[-1]
    alt_a = layer_inputs(model, stats, index, act_method=Method.PERCENTILE)
    alt_w = layer_inputs(model, stats, index, weight_method=Method.MSE)
    flip_a = iter([alt_a[:5], inputs[:5]] * repeat * 2)
    flip_w = iter([alt_w[:5], inputs[:5]] * repeat * 2)
    view.show_layer(*inputs[:5])
    report("show_layer, activation method changed",
           timed(lambda: view.show_layer(*next(flip_a)), repeat))
    report("show_layer, activation method changed + paint",
           timed(lambda: (view.show_layer(*next(flip_a)), paint(view)), repeat))
    report("show_layer, weight method changed + paint",
           timed(lambda: (view.show_layer(*next(flip_w)), paint(view)), repeat))
    view.show_layer(*inputs[:5])

    # Drag steps: alternate between two ranges so every step really moves the band, and move
    # one line as a mouse drag does (the region's own signals and the view's handlers run).
    changed = (view.metrics_panel, view.error_curve)
    for name, hist, result in (("activation", view.activation_hist, ar),
                               ("weight", view.weight_hist, wr)):
        hi = float(np.max(result.metrics.hi))
        targets = iter([0.6 * hi, 0.8 * hi] * (2 * repeat))

        def step(hist=hist, targets=targets) -> None:
            hist.region.lines[1].setValue(next(targets))

        report(f"drag step, {name}", timed(step, repeat))
        report(f"drag step, {name} + paint",
               timed(lambda step=step, hist=hist: (step(), paint(hist, *changed)), repeat))
    fmt = wr.config.fmt
    w_hi = float(np.max(wr.metrics.hi))
    qp = compute_qparams(-0.5 * w_hi, 0.5 * w_hi, fmt)
    report("  (exact_metrics of the weight alone)", timed(lambda: exact_metrics(w, qp, fmt),
                                                          repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--full", action="store_true", help="repaint whole widgets (worst case)")
    args = parser.parse_args()
    global FULL_REPAINT
    FULL_REPAINT = args.full
    app = QApplication.instance() or QApplication([])

    paths = demo_paths()
    model = load_model(paths.model)
    stats = run_to_completion(collect_stats(model, load_data(paths.data, model.inputs)))
    view = LayerView()
    view.resize(1600, 1000)
    view.show()
    app.processEvents()

    for index, label in ((2, "conv features.6 (9k weights)"), (4, "gemm classifier.0 (401k)")):
        bench_layer(view, layer_inputs(model, stats, index), label, args.repeat)
        app.processEvents()

    edges = np.linspace(-1, 1, 2049)
    counts = np.random.default_rng(0).poisson(1000, 2048).astype(float)
    curve = view.activation_hist.curve
    report(
        "\nsetData of a 2048-bin step curve + paint (hist)",
        timed(lambda: (curve.setData(edges, counts), paint(view.activation_hist)), args.repeat),
    )
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
