"""How long a settings change takes to reach the screen, offscreen, on the demo or any model.

Opens the built-in demo (or ``--model`` with ``--data``), waits for calibration and for every
tensor to be measured, selects a layer and then changes one control at a time (method,
granularity), the way a user clicks through them. For each change it times:

* update — from the control's value change to the document, layer view (histograms, channel
  view, error curve), metrics panel and table row all updated (the synchronous path);
* update + paint — the same plus a synchronous repaint of the whole window, i.e. until the
  new pixels exist.

Before that it selects ``--selections`` tensors spread down the model and times each from the
selection to the repainted window (wall and the GUI thread's CPU time, and the paint alone);
``--profile FILE`` writes a cProfile of those selections (read it with ``pstats``). With
``--stats`` the model's statistics are read from a file (``qviz collect``, which stores the
weight statistics too) instead of calibrating in the app.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_app_update.py [--changes 200]
    .venv/bin/python bench/bench_app_update.py --model /tmp/dec/d72.onnx \
        --data /tmp/dec/d72.calib.npz --changes 50

On a model of your own the weight is that of the layer halfway down the graph (``--weight``
names another) and the activation that layer's input (``--activation``). It also prints how
long opening, calibrating and measuring every tensor took, as the app ran them.

Prints the median and 95th percentile in milliseconds for each.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.methods import Method
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import GranularityKind

LAYER_WEIGHT = TensorKey("features.6.weight", TensorKind.WEIGHT)
LAYER_ACTIVATION = TensorKey("relu_1", TensorKind.ACTIVATION)


def wait_until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Run the event loop until `condition()` holds (the bench has no qtbot)."""
    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(10)

    def check() -> None:
        if condition() or time.monotonic() > deadline:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    if not condition():
        loop.exec()
    timer.stop()
    if not condition():
        raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for the model to calibrate")


def single_control_changes(
    window: MainWindow, kind: TensorKind, n: int
) -> list[Callable[[], None]]:
    """`n` clicks, each changing one control, cycling methods (and granularities for a
    weight) through valid combinations only: the core has no per-group Entropy."""
    controls = window.controls
    methods = [Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE]
    grans = list(GranularityKind) if kind is TensorKind.WEIGHT else [GranularityKind.PER_TENSOR]
    method, gran = controls.method_combo.currentData(), controls.granularity_combo.currentData()
    changes: list[Callable[[], None]] = []
    i = 0
    while len(changes) < n:
        i += 1
        if len(grans) > 1 and i % 2:
            gran = grans[(grans.index(gran) + 1) % len(grans)]
            if method is Method.ENTROPY and gran is GranularityKind.PER_GROUP:
                continue
            combo, value = controls.granularity_combo, gran
        else:
            method = methods[(methods.index(method) + 1) % len(methods)]
            if method is Method.ENTROPY and gran is GranularityKind.PER_GROUP:
                method = Method.MSE
            combo, value = controls.method_combo, method
        changes.append(lambda c=combo, v=value: c.setCurrentIndex(c.findData(v)))
    return changes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pick_keys(
    window: MainWindow, weight: str | None, activation: str | None
) -> tuple[TensorKey, TensorKey]:
    """The weight and activation to change: named, or the layer halfway down the graph."""
    doc = window.doc
    if weight is None:
        weights = [t for t in doc.tensors if t.key.kind is TensorKind.WEIGHT]
        if not weights:
            raise SystemExit("the model has no quantizable weight")
        layer = sorted(weights, key=lambda t: t.layer.depth)[len(weights) // 2].layer
        weight = layer.weight
    wkey = doc.find(str(weight), TensorKind.WEIGHT)
    if wkey is None:
        raise SystemExit(f"no quantizable weight named {weight}")
    if activation is None:
        akeys = [k for k in doc.index.layer_keys(wkey) if k.kind is TensorKind.ACTIVATION]
        if not akeys:
            raise SystemExit(f"the layer of {weight} has no measured input: name one")
        return wkey, akeys[0]
    akey = doc.find(activation, TensorKind.ACTIVATION)
    if akey is None:
        raise SystemExit(f"no quantizable activation named {activation}")
    return wkey, akey


def select_times(
    window: MainWindow, app: QApplication, n: int, profile: cProfile.Profile | None = None,
    each: bool = False,
) -> dict[str, list[float]]:
    """Milliseconds from selecting each of `n` tensors spread down the model (weights and
    activations alternately) to the window repainted with its views: wall time, the GUI
    thread's CPU time, and the repaint alone; then until the parts of the view computed in
    the background (a large layer's) are in and repainted too ("complete")."""
    keys = [t.key for t in window.doc.tensors]
    times: dict[str, list[float]] = {
        "select + paint": [], "GUI CPU": [], "paint": [], "complete": [],
    }
    parts = getattr(window, "layer_parts", None)  # absent before the view filled in parts
    if not keys or n <= 0:
        return times
    picked = [keys[round(i * (len(keys) - 1) / max(1, n - 1))] for i in range(n)]
    for key in picked:
        if profile is not None:
            profile.enable()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        window.doc.select(key)
        t1 = time.perf_counter()
        window.repaint()
        t2 = time.perf_counter()
        c1 = time.thread_time()
        if profile is not None:
            profile.disable()
        times["select + paint"].append((t2 - t0) * 1e3)
        times["GUI CPU"].append((c1 - c0) * 1e3)
        times["paint"].append((t2 - t1) * 1e3)
        app.processEvents()
        while parts is not None and parts.is_busy:
            app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
        app.processEvents()
        window.repaint()
        times["complete"].append((time.perf_counter() - t0) * 1e3)
        if each:
            print(f"  {key.name} ({key.kind.value}, {window.doc.element_count(key):,.0f} "
                  f"values): " + ", ".join(f"{m} {v[-1]:.1f} ms" for m, v in times.items()))
    return times


def wait_idle(window: MainWindow, app: QApplication, timeout_s: float) -> None:
    """Until no background work is left (analysis, the live evaluation, computations the
    layer view asked for): the selections are timed on a quiet GUI thread."""
    wait_until(lambda: not window.busy and not window.evaluation.is_pending, timeout_s)
    app.processEvents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="changes timed per kind")
    parser.add_argument("--model", type=Path, help="model to open (default: the demo)")
    parser.add_argument("--data", type=Path, help="calibration data for --model")
    parser.add_argument("--stats", type=Path, help="statistics of --model (instead of --data)")
    parser.add_argument("--profile", type=Path,
                        help="write a cProfile of the timed selections to this file")
    parser.add_argument("--each", action="store_true", help="print every selection's times")
    parser.add_argument("--selections", type=int, default=20,
                        help="tensors selected one after another, timed (default 20)")
    parser.add_argument("--weight", help="weight tensor to change (default: mid-graph layer)")
    parser.add_argument("--activation", help="activation tensor to change (default: its input)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for "
                        "opening and measuring before giving up")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.data is None and args.stats is None):
        parser.error("--model goes with --data or --stats")

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        settings = QSettings(str(Path(tmp) / "bench.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(1600, 1000)
        window.show()
        marks: dict[str, float] = {}
        window.files.modelLoaded.connect(lambda: marks.setdefault("open", time.perf_counter()))
        window.files.calibrated.connect(
            lambda: marks.setdefault("calibrate", time.perf_counter())
        )
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        started = time.perf_counter()
        if args.model is None:
            window.files.open_demo()
            name = "demo model"
        else:
            window.files.open_model(args.model, data_path=args.data, stats_path=args.stats)
            name = args.model.name
        wait_until(lambda: "calibrate" in marks and not window.busy, args.timeout)
        marks["measured"] = time.perf_counter()
        wait_idle(window, app, args.timeout)
        if args.model is None:
            wkey, akey = LAYER_WEIGHT, LAYER_ACTIVATION
        else:
            wkey, akey = pick_keys(window, args.weight, args.activation)
        n_tensors = len(window.doc.tensors)

        # Selecting a layer: click to its views drawn (histograms from the statistics).
        # CPU time of this thread: a busy shared machine does not blur where the time goes.
        profile = cProfile.Profile(time.thread_time) if args.profile is not None else None
        selects = select_times(window, app, args.selections, profile, args.each)
        if profile is not None:
            profile.dump_stats(str(args.profile))
        wait_idle(window, app, args.timeout)
        results: dict[str, dict[str, list[float]]] = {}
        for label, key in (("weight", wkey), ("activation", akey)):
            window.doc.select(key)
            app.processEvents()
            changes = single_control_changes(window, key[1], args.changes + 10)
            update_ms: list[float] = []
            paint_ms: list[float] = []
            # CPU time of the GUI thread: what the change itself costs, whatever else the
            # (shared) machine is doing.
            cpu_ms: list[float] = []
            for i, change in enumerate(changes):
                c0 = time.thread_time()
                t0 = time.perf_counter()
                change()
                t1 = time.perf_counter()
                c1 = time.thread_time()
                window.repaint()  # synchronous: every visible widget paints now
                t2 = time.perf_counter()
                app.processEvents()  # deliver deferred work (throttled previews, layouts)
                if i >= 10:
                    update_ms.append((t1 - t0) * 1e3)
                    paint_ms.append((t2 - t0) * 1e3)
                    cpu_ms.append((c1 - c0) * 1e3)
            results[label] = {
                "update": update_ms, "update + paint": paint_ms, "update (GUI CPU)": cpu_ms,
            }
        window.close()

    print(f"{name}: {n_tensors} quantizable tensors")
    if args.model is not None:
        print(
            f"opened in {marks['open'] - started:.1f} s, calibrated after "
            f"{marks['calibrate'] - started:.1f} s, every tensor measured after "
            f"{marks['measured'] - started:.1f} s"
        )
    for measure, values in selects.items():
        if values:
            print(f"selecting a tensor ({len(values)} tensors down the model), {measure}: "
                  f"median {statistics.median(values):.1f} ms, p95 "
                  f"{percentile(values, 0.95):.1f} ms, max {max(values):.1f} ms")
    print(f"settings change on the selected layer ({wkey.name}; {akey.name}), "
          f"{args.changes} changes each")
    print(f"{'tensor':<11} {'measure':<15} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for label, measures in results.items():
        for measure, values in measures.items():
            print(
                f"{label:<11} {measure:<15} {statistics.median(values):>10.1f} "
                f"{percentile(values, 0.95):>8.1f} {max(values):>8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
