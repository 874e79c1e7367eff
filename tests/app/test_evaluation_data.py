"""Calibration data and evaluation data are two things: by default one sample in five of the
calibration data is held out for every end-to-end measurement; the user may give evaluation
data of its own, or choose to evaluate on the calibration data — and every result says which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.core.demo import demo_paths
from tests.app.evaluation_fixtures import RUN_MS, MakeWindow, make_window

__all__ = ["make_window"]


def test_the_app_never_evaluates_on_its_calibration_data_unless_asked(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    window: MainWindow = make_window()
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS) as live:
        window.files.open_demo()
    doc = window.doc
    assert doc.stats is not None and doc.stats.n_samples == 1600
    outcome = live.args[0]
    assert "held-out 1 in 5 of data.npz" in outcome.data_name
    assert "held-out" in window.model_panel.source_label.text()
    assert window.commands.held_out.isChecked() and not window.commands.on_calibration.isChecked()
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)

    # Chosen explicitly: evaluate on the calibration data (recalibrated on all of it).
    with qtbot.waitSignal(window.files.calibrated, timeout=RUN_MS):
        window.commands.on_calibration.trigger()
    assert doc.stats is not None and doc.stats.n_samples == 2000
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS) as live:
        pass
    assert "(the calibration data)" in live.args[0].data_name
    assert "calibration data" in window.model_panel.source_label.text()
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)

    # Evaluation data of its own: a brightened copy of the last 300 test images.
    with np.load(demo_paths().data) as z:
        images, labels = z["input"][-300:], z["labels"][-300:]
    eval_path = tmp_path / "eval.npz"
    np.savez(eval_path, input=np.clip(images * 1.5, 0, None).astype(np.float32), labels=labels)
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS) as live:
        window.files.open_eval_data(eval_path)
    assert live.args[0].data_name == "eval.npz" and live.args[0].evaluation.n_samples == 256
    assert not window.commands.held_out.isChecked()
    assert not window.commands.on_calibration.isChecked()
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)

    # Back to the held-out part: calibration on the other four in five again.
    with qtbot.waitSignal(window.files.calibrated, timeout=RUN_MS):
        window.commands.held_out.trigger()
    assert doc.eval_data_path is None and doc.stats.n_samples == 1600
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
