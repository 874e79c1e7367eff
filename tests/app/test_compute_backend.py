"""Run ▸ Compute Backend… from the window: the choice is kept in the settings, and a cluster
that cannot be reached leaves the app measuring locally, with a message."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.core.compute.choice import BackendChoice, BackendKind
from qviz.core.search.sensitivity_cache import SensitivityCache

CALIBRATION_MS = 60_000
RUN_MS = 120_000


def test_unreachable_cluster_falls_back_to_local_with_a_message(
    qtbot: QtBot, tmp_path: Path
) -> None:
    settings = QSettings(str(tmp_path / "qviz.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings, batch_size=256)
    qtbot.addWidget(window)
    window.show()
    window.commands.live_evaluation.trigger()  # no live runs competing for the CPUs
    window.sensitivity.cache = SensitivityCache(tmp_path / "cache")
    window.sensitivity_panel.limit_spin.setValue(128)
    try:
        with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
            window.files.open_demo()
        qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)

        # Choose a Ray cluster nobody runs (a closed loopback port) in the dialog.
        dialog = window.open_compute_dialog()
        dialog.buttons[BackendKind.RAY].setChecked(True)
        dialog.address.setText("127.0.0.1:1")
        dialog.accept()
        expected = BackendChoice(BackendKind.RAY, None, "127.0.0.1:1")
        assert window.compute.choice == expected
        assert settings.value("compute_backend") == "ray:127.0.0.1:1"

        with qtbot.waitSignal(window.sensitivity.sensitivityFinished, timeout=RUN_MS) as done:
            window.commands.sensitivity.trigger()
        assert done.args[0].layers  # measured, locally
        assert "running locally" in window.reporter.last_message
        assert "cannot reach a Ray cluster at 127.0.0.1:1" in window.reporter.last_message

        # The choice is remembered by the next window.
        again = MainWindow(settings)
        qtbot.addWidget(again)
        assert again.compute.choice == expected
        again.close()
    finally:
        window.close()
        assert window.sensitivity.live_threads() == 0
        assert QThreadPool.globalInstance().waitForDone(10_000)
