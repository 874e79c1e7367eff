"""Screenshots of the app on the built-in demo, made offscreen.

Opens the demo at 1600x1000, waits for calibration and for every tensor to be measured,
selects a conv layer worth looking at (the conv whose activation has the lowest SQNR, after
the network input) and writes into ``screenshots/``:

* ``main_window.png`` — the whole window;
* ``layer_view.png`` — the layer view (histograms, channel view, error curve, metrics);
* ``error_curve.png`` — the error-versus-clip-threshold plot;
* ``per_channel.png`` — the per-channel ranges of the weight.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/screenshots.py [--out screenshots]
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
from PySide6.QtWidgets import QApplication

from qviz.app.main_window import MainWindow
from qviz.core.model import TensorKind
from qviz.core.session import TensorKey

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
            best = (sqnr, (layer.weight, TensorKind.WEIGHT))
    if best is None:
        raise SystemExit("no conv layer with statistics in the demo")
    return best[1]


def settle(app: QApplication, window: MainWindow) -> None:
    """Let layouts, deferred paints and throttled updates finish before grabbing."""
    for _ in range(5):
        app.processEvents()
    window.repaint()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        # A throwaway settings file: screenshots must not change the user's recent files.
        settings = QSettings(str(Path(tmp) / "screenshots.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(args.width, args.height)
        window.show()
        calibrated: list[bool] = []
        window.calibrationFinished.connect(lambda: calibrated.append(True))
        window.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        window.open_demo()
        wait_until(lambda: bool(calibrated) and not window.busy)

        key = interesting_conv(window)
        window.select_tensor(key)
        settle(app, window)

        view = window.layer_view
        shots = {
            "main_window.png": window,
            "layer_view.png": view,
            "error_curve.png": view.error_curve,  # type: ignore[attr-defined]
            "per_channel.png": view.channel_view,  # type: ignore[attr-defined]
        }
        for name, widget in shots.items():
            path = args.out / name
            if not widget.grab().save(str(path)):
                raise SystemExit(f"could not write {path}")
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        print(f"selected {key[0]}; status: {window.status_text()}")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
