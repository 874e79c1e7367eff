"""Screenshots of the app on the built-in demo, made offscreen.

Opens the demo at 1600x1000, waits for calibration and for every tensor to be measured,
selects a conv layer worth looking at (the conv whose activation has the lowest SQNR, after
the network input) and writes into ``screenshots/``:

* ``main_window.png`` — the whole window;
* ``layer_view.png`` — the layer view (histograms, channel view, error curve, metrics);
* ``error_curve.png`` — the error-versus-clip-threshold plot;
* ``per_channel.png`` — the per-channel ranges of the weight;
* ``sensitivity.png`` — the window after Run ▸ Sensitivity: the chart along depth in its dock
  and the table's Δ alone / Recovery columns, the most sensitive layer selected;
* ``pareto.png`` — the Mixed precision dialog after a search for ``accuracy_drop<=0.5`` with
  int4/int8/float allowed: the measured answer, the chosen layers and the Pareto plot.
* ``model_panel.png`` — the model dock after Run ▸ Evaluate: PASS/FAIL against the criteria,
  float vs quantized accuracy, size, latency, fused layers, the error along depth, notes;
* ``export_dialog.png`` — File ▸ Export… after writing the report with the evaluation;
* ``export_qdq.png`` — the same dialog after writing the Q/DQ model: its speed against float
  and the layers left float because their integer kernel is slower here;
* ``compare.png`` — A/B comparison: the configuration pinned as A (Edit ▸ Pin as A), then B
  with 4-bit weights on the selected conv: A's band on the histogram, A beside B and the
  change in the metrics panel, the table's Δ vs A column, A's and B's end-to-end numbers;
* ``graph_view.png`` — View ▸ Graph: the whole graph coloured by local SQNR, Q/DQ edges,
  quantized weights and the integer kernels of the full evaluation marked, the selected
  layer highlighted;
* ``input_channels.png``, ``smoothquant_before.png``, ``smoothquant_after.png`` — the
  transforms on the planted-outlier block (``tools/screenshots_transforms.py``);
* ``large_model.png`` — the window on a synthetic Llama-style decoder of 72 blocks (over a
  thousand quantizable tensors, made by ``tools/make_decoder.py`` into a temporary folder):
  the layer table as a tree of blocks with each block's worst and weighted SQNR, the worst
  tensor selected (its block opened), the error along depth banded by block.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/screenshots.py [--out screenshots]
    .venv/bin/python tools/screenshots.py --only-large   # just large_model.png (minutes)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey
from qviz.core.model.loading import TensorKind

REPO = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Run the event loop until `condition()` holds."""
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
        raise SystemExit("timed out waiting for the demo")


def interesting_conv(window: MainWindow) -> TensorKey:
    """The weight of the conv whose input activation quantizes worst (the input excepted:
    its histogram is just the image's pixel values)."""
    doc = window.doc
    best: tuple[float, TensorKey] | None = None
    for tensor in doc.tensors:
        layer = tensor.layer
        if tensor.kind is not TensorKind.ACTIVATION or layer.op_type != "Conv":
            continue
        if doc.model is not None and tensor.name in {i.name for i in doc.model.inputs}:
            continue
        result = doc.result(tensor.key)
        if result is None or layer.weight is None:
            continue
        sqnr = float(result.metrics.sqnr_db)
        if not math.isnan(sqnr) and (best is None or sqnr < best[0]):
            best = (sqnr, TensorKey(layer.weight, TensorKind.WEIGHT))
    if best is None:
        raise SystemExit("no conv layer with statistics in the demo")
    return best[1]


def evaluate_full(window: MainWindow) -> None:
    """Wait for the live evaluation, then run Run ▸ Evaluate (every sample, native INT8), so
    the model panel and the table's sim-vs-native column show everything."""
    ev = window.evaluation
    wait_until(lambda: ev.current is not None and not ev.is_pending)
    full: list[object] = []
    ev.evaluated.connect(lambda outcome: full.append(outcome) if outcome.full else None)
    window.evaluation.evaluate_full()
    wait_until(lambda: bool(full) and not window.busy, 300.0)


def model_panel_shots(app: QApplication, window: MainWindow, out: Path, tmp: Path) -> None:
    """``model_panel.png`` (the model dock after the full evaluation) and ``export_dialog.png``
    (File ▸ Export… after writing the report with the evaluation)."""
    from qviz.core.files.export import ExportFormat

    settle(app, window)
    save(window.model_dock, out / "model_panel.png")
    print(f"model panel: {window.model_panel.source_label.text()}; "
          f"{window.model_panel.verdict_label.text()}")
    dialog = window.open_export_dialog()
    assert dialog is not None
    done: list[object] = []
    dialog.exported.connect(done.append)
    dialog.set_format(ExportFormat.REPORT)
    (tmp / "export").mkdir(exist_ok=True)
    dialog.set_path(tmp / "export" / "model-report.html")
    dialog.export_now()
    wait_until(lambda: bool(done) and not dialog.busy)
    settle(app, window)
    save(dialog, out / "export_dialog.png")
    # The Q/DQ model: timed against float, layers whose integer kernel is slower left float.
    done.clear()
    dialog.set_format(ExportFormat.QDQ)
    dialog.set_path(tmp / "export" / "model.qdq.onnx")
    dialog.export_now()
    wait_until(lambda: bool(done) and not dialog.busy, 300.0)
    settle(app, window)
    save(dialog, out / "export_qdq.png")
    dialog.close()


def graph_view_shot(app: QApplication, window: MainWindow, out: Path) -> None:
    """``graph_view.png``: the graph dock, floated at a portrait size, coloured by local SQNR."""
    from qviz.core.graphview.measures import NodeMeasure

    dock = window.graph_dock
    dock.show()
    dock.setFloating(True)
    dock.resize(600, 1180)  # tall enough for the whole demo at a readable zoom
    view = dock.view
    view.set_measure(NodeMeasure.SQNR)
    wait_until(lambda: view.layout_shown is not None and view.readings is not None)
    settle(app, window)
    save(dock, out / "graph_view.png")
    print(f"graph view: {view.status_label.text()}")
    dock.hide()
    dock.setFloating(False)


def compare_shot(app: QApplication, window: MainWindow, key: TensorKey, out: Path) -> None:
    """``compare.png``: A pinned, B with 4-bit weights on the conv weight ``key``; then back."""
    doc = window.doc
    window.commands.pin.trigger()
    doc.select(key)
    ev = window.evaluation
    evaluated: list[object] = []
    ev.evaluated.connect(evaluated.append)
    window.controls.bits_spin.setValue(4)
    wait_until(lambda: bool(evaluated) and not ev.is_pending and not window.busy)
    # A is then measured the way B was (live): wait for it, so the panels show both.
    wait_until(lambda: doc.pinned is not None and doc.pinned.live is not None
               and not ev.pinned_live.is_busy)
    settle(app, window)
    save(window, out / "compare.png")
    print(f"compare: {window.compare_label.text()}")
    window.commands.unpin.trigger()
    doc.undo()
    wait_until(lambda: not ev.is_pending and not window.busy)


def settle(app: QApplication, window: MainWindow) -> None:
    """Let layouts, deferred paints and throttled updates finish before grabbing."""
    for _ in range(5):
        app.processEvents()
    window.repaint()


def sensitivity_shots(app: QApplication, window: MainWindow, out: Path, cache: Path) -> None:
    """Run sensitivity and a mixed-precision search on the demo and grab both."""
    from qviz.core.search.sensitivity_cache import SensitivityCache

    ctl = window.sensitivity
    ctl.cache = SensitivityCache(cache)  # measured now, not read from the user's cache
    reports: list[object] = []
    ctl.sensitivityFinished.connect(reports.append)
    window.run_sensitivity()
    wait_until(lambda: bool(reports) and not ctl.busy, 300.0)
    report = window.doc.measures.sensitivity
    assert report is not None
    window.doc.select(window.doc.index.keys_of_layer(report.ranking()[0].name)[0])
    wait_until(lambda: not window.busy)
    settle(app, window)
    save(window, out / "sensitivity.png")

    results: list[object] = []
    ctl.mixedFinished.connect(results.append)
    dialog = window.open_mixed_dialog()
    dialog.set_request("accuracy_drop<=0.5", ("int4", "int8", "float"))
    dialog.run_button.click()
    wait_until(lambda: bool(results) and not ctl.busy, 600.0)
    dialog.apply_button.click()
    wait_until(lambda: not window.busy)
    settle(app, dialog)
    save(dialog, out / "pareto.png")
    print(f"mixed precision: {dialog.verdict_label.text()}")


def large_model_shot(
    app: QApplication, out: Path, tmp: Path, layers: int, size: tuple[int, int]
) -> None:
    """``large_model.png``: a decoder of `layers` blocks, opened, calibrated, every tensor
    measured and the live evaluation shown; the worst tensor selected."""
    sys.path.insert(0, str(REPO))
    from tools import make_decoder

    path = tmp / "large" / f"decoder{layers}.onnx"
    spec = make_decoder.decoder_spec(layers=layers, hidden=128, vocab=2048)
    make_decoder.write_decoder(spec, path, builder="onnx", calib_samples=32, eval_samples=32,
                               data_seq=32)
    calib, evaluation = make_decoder.data_paths(path)
    settings = QSettings(str(tmp / "large.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(*size)
    window.show()
    calibrated: list[bool] = []
    window.files.calibrated.connect(lambda: calibrated.append(True))
    window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
    started = time.perf_counter()
    window.files.open_model(path, data_path=calib, eval_data_path=evaluation)
    wait_until(lambda: bool(calibrated) and not window.busy, 1800.0)
    ev = window.evaluation
    wait_until(lambda: ev.current is not None and not ev.is_pending, 1800.0)
    worst, sqnr = window.doc.summary().worst[0]
    window.doc.select(worst)
    wait_until(lambda: not window.busy, 600.0)
    settle(app, window)
    save(window, out / "large_model.png")
    print(f"large model: {len(window.doc.tensors)} tensors, ready after "
          f"{time.perf_counter() - started:.0f} s; worst {worst.name} {sqnr:.2f} dB")
    window.close()


def save(widget: QWidget, path: Path) -> None:
    if not widget.grab().save(str(path)):
        raise SystemExit(f"could not write {path}")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--large-layers", type=int, default=72,
                        help="blocks of the large decoder (0: no large_model.png)")
    parser.add_argument("--only-large", action="store_true", help="just large_model.png")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    if args.only_large:
        with tempfile.TemporaryDirectory() as tmp:
            large_model_shot(app, args.out, Path(tmp), args.large_layers,
                             (args.width, args.height))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        # A throwaway settings file: screenshots must not change the user's recent files.
        settings = QSettings(str(Path(tmp) / "screenshots.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(args.width, args.height)
        window.show()
        calibrated: list[bool] = []
        window.files.calibrated.connect(lambda: calibrated.append(True))
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        window.files.open_demo()
        wait_until(lambda: bool(calibrated) and not window.busy)
        evaluate_full(window)

        key = interesting_conv(window)
        window.doc.select(key)
        settle(app, window)

        view = window.layer_view
        shots = {
            "main_window.png": window,
            "layer_view.png": view,
            "error_curve.png": view.error_curve,
            "per_channel.png": view.channel_view,
        }
        for name, widget in shots.items():
            path = args.out / name
            if not widget.grab().save(str(path)):
                raise SystemExit(f"could not write {path}")
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        print(f"selected {key.name}; status: {window.status_text()}")
        graph_view_shot(app, window, args.out)
        model_panel_shots(app, window, args.out, Path(tmp))
        compare_shot(app, window, key, args.out)
        sensitivity_shots(app, window, args.out, Path(tmp) / "sensitivity-cache")
        window.close()
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tools.screenshots_transforms import transform_shots

        window = MainWindow(settings)
        window.resize(args.width, args.height)
        window.show()
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        transform_shots(app, window, args.out, Path(tmp))
        window.close()
        if args.large_layers > 0:
            large_model_shot(app, args.out, Path(tmp), args.large_layers,
                             (args.width, args.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
