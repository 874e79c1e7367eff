"""Screenshots of the transforms, on the planted-outlier block (``tools/make_decoder.py
--block``), made offscreen; called by ``tools/screenshots.py`` or on its own:

* ``input_channels.png`` — the activation channel view of fc1's input (the LayerNorm
  output): the three planted channels flagged loud, far outside the others;
* ``smoothquant_before.png`` — the layer view of fc1 with MSE activations, no transform;
* ``smoothquant_after.png`` — the same layer after SmoothQuant auto: the rescaled histograms
  with the untransformed ones as faint overlays, the metrics' "before" rows, and the input
  channels, now even, over their faint old ranges.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/screenshots_transforms.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.document.tensors import ApplyScope
from qviz.core.model.loading import TensorKind
from qviz.core.transforms.settings import SmoothQuant, Transforms
from tools.make_decoder import write_block_and_data
from tools.screenshots import REPO, save, settle, wait_until
from tools.synthetic.block import NORM_OUTPUT, BlockSpec


def transform_shots(app: QApplication, window: MainWindow, out: Path, tmp: Path) -> None:
    """Open the planted-outlier block, calibrate, and grab the three screenshots."""
    model, calib, _ = write_block_and_data(BlockSpec(), tmp / "block" / "block.onnx")
    calibrated: list[bool] = []
    window.files.calibrated.connect(lambda: calibrated.append(True))
    window.files.open_model(model, data_path=calib)
    wait_until(lambda: bool(calibrated) and not window.busy)
    doc = window.doc
    key = TensorKey(NORM_OUTPUT, TensorKind.ACTIVATION)
    doc.select(key)
    # MSE for every activation (what the bench measures with), no transform yet.
    doc.apply(key, replace(doc.config_for(key), spec=MethodSpec(Method.MSE)), ApplyScope.ALL)
    wait_until(lambda: not window.busy)
    view = window.layer_view
    view.channel_tabs.setCurrentWidget(view.input_channels)
    settle(app, window)
    save(view.input_channels, out / "input_channels.png")
    print(f"input channels: {view.input_channels.caption.text()}")
    save(view, out / "smoothquant_before.png")
    cfg = replace(doc.config_for(key), transforms=Transforms(smoothquant=SmoothQuant(None)))
    window.controls.apply(cfg)
    wait_until(lambda: not window.busy)
    settle(app, window)
    save(view, out / "smoothquant_after.png")
    panel = view.metrics_panel
    print(f"after SmoothQuant: activation SQNR {panel.text(TensorKind.ACTIVATION, 'sqnr')} "
          f"(before {panel.text(TensorKind.ACTIVATION, 't_sqnr')}); "
          f"{panel.text(TensorKind.ACTIVATION, 't_what')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        settings = QSettings(str(Path(tmp) / "screenshots.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings)
        window.resize(1600, 1000)
        window.show()
        window.reporter.errorShown.connect(lambda m: sys.exit(f"error: {m}"))
        transform_shots(app, window, args.out, Path(tmp))
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
