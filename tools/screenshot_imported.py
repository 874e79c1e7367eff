"""Screenshots of quantized models opened in the app, made offscreen.

Writes into ``screenshots/``:

* ``imported_block.png`` — a transformer block quantized everywhere by onnxruntime's
  ``quantize_static``, opened with its float original, after Run ▸ Sensitivity: the mask
  addition's output (the Softmax's input) selected, its imported range spanning -3.4e38;
* ``imported_compare.png`` — the demo CNN quantized by ``quantize_static`` after Edit ▸
  Compare Imported with qviz's Choice: the imported settings pinned as A, qviz's as B.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tools.screenshot_imported [--out screenshots]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from qviz.app.controllers.files import FloatChoice
from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey
from qviz.core.demo import demo_paths
from qviz.core.model.loading import TensorKind
from qviz.core.search.sensitivity_cache import SensitivityCache
from tools.quantized_examples import MASKED_SCORES, quantize_block, quantize_demo
from tools.screenshots import REPO, save, settle, wait_until


def _open(window: MainWindow, model: Path, float_model: Path, data: Path) -> None:
    calibrated: list[bool] = []
    window.files.calibrated.connect(lambda: calibrated.append(True))
    window.files.ask_float_original = lambda _path: FloatChoice(float_model)
    window.files.open_model(model, data_path=data)
    wait_until(lambda: bool(calibrated) and not window.busy)
    doc = window.doc
    wait_until(lambda: all(doc.result(t.key) is not None for t in doc.tensors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = QSettings(str(folder / "screenshots.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(1600, 1000)
        window.show()
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))

        float_path, qdq_path, data_path = quantize_block(folder)
        _open(window, qdq_path, float_path, data_path)
        window.sensitivity.cache = SensitivityCache(folder / "cache")
        reports: list[object] = []
        window.sensitivity.sensitivityFinished.connect(reports.append)
        window.run_sensitivity()
        wait_until(lambda: bool(reports) and not window.sensitivity.busy, 300.0)
        window.doc.select(TensorKey(MASKED_SCORES, TensorKind.ACTIVATION))
        wait_until(lambda: not window.busy)
        settle(app, window)
        save(window, args.out / "imported_block.png")
        report = window.doc.measures.sensitivity
        if report is not None:
            print(f"most sensitive: {report.ranking()[0].name} {report.ranking()[0].tensors}")

        demo = demo_paths()
        _open(window, quantize_demo(folder / "demo_qdq.onnx"), demo.model, demo.data)
        window.commands.compare_own.trigger()
        window.model_dock.raise_()
        wait_until(lambda: not window.busy)
        window.doc.select(TensorKey("relu_2", TensorKind.ACTIVATION))
        wait_until(lambda: not window.busy and not window.evaluation.is_pending)
        settle(app, window)
        save(window, args.out / "imported_compare.png")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
