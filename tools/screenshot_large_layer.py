"""Screenshots of the layer view on a large model, as it is first drawn and once filled in.

Opens ``--model`` with its statistics (``--stats``, from ``qviz collect``: they hold the
large weights' statistics), waits until every tensor is measured, selects ``--tensor``
(default: the weight of the layer halfway down the model) and writes into ``--out``:

* ``large_layer_first.png`` — the window right after the selection is drawn: histograms,
  bands, metrics and per-channel ranges from the statistics, "computing…" where a part is on
  its way (the error curves, the input channels, the convergence);
* ``large_layer_filled.png`` — the same window once those parts have come.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/screenshot_large_layer.py \\
        --model /tmp/scale/decoder_1e9.onnx --stats /tmp/scale/1e9.qvstats
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QSettings
from PySide6.QtWidgets import QApplication

from qviz.app.main_window import MainWindow
from qviz.core.model.loading import TensorKind

REPO = Path(__file__).resolve().parents[1]


def run_until(app: QApplication, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--tensor", help="weight to select (default: mid-model layer's)")
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        settings = QSettings(str(Path(tmp) / "shots.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(1600, 1000)
        window.show()
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        calibrated: list[bool] = []
        window.files.calibrated.connect(lambda: calibrated.append(True))
        window.files.open_model(args.model, stats_path=args.stats)
        run_until(app, lambda: bool(calibrated) and not window.busy
                  and not window.evaluation.is_pending, args.timeout)
        doc = window.doc
        weights = sorted((t for t in doc.tensors if t.key.kind is TensorKind.WEIGHT),
                         key=lambda t: t.layer.depth)
        name = args.tensor or weights[len(weights) // 2].name
        key = doc.find(name, TensorKind.WEIGHT)
        if key is None:
            raise SystemExit(f"no quantizable weight named {name}")
        t0 = time.perf_counter()
        doc.select(key)
        window.repaint()
        first_ms = (time.perf_counter() - t0) * 1e3
        window.grab().save(str(args.out / "large_layer_first.png"))
        run_until(app, lambda: not window.layer_parts.is_busy, args.timeout)
        app.processEvents()
        window.repaint()
        filled_ms = (time.perf_counter() - t0) * 1e3
        window.grab().save(str(args.out / "large_layer_filled.png"))
        print(f"{key.name}: first view {first_ms:.0f} ms, filled in after {filled_ms:.0f} ms "
              f"(including the first grab); wrote large_layer_first.png, "
              f"large_layer_filled.png in {args.out}")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
