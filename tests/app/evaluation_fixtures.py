"""Fixtures shared by the model-panel and export-dialog tests (imported, not collected)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.controllers.evaluation_controller import LIVE_LIMIT
from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.evaluation.evaluate import Evaluation, evaluate, run_to_completion
from qviz.core.model.loading import load_model
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.collect import run_to_completion as collect_to_completion
from qviz.core.stats.stats_file import save_stats

RUN_MS = 120_000
MakeWindow = Callable[..., MainWindow]


@pytest.fixture
def make_window(qtbot: QtBot, tmp_path: Path) -> Iterator[MakeWindow]:
    windows: list[MainWindow] = []

    def make() -> MainWindow:
        settings = QSettings(str(tmp_path / f"qviz{len(windows)}.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings, batch_size=256)
        qtbot.addWidget(window)
        window.resize(1600, 1000)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert window.jobs.live_threads() == 0
        assert window.analysis.live_threads() == 0
        assert window.evaluation.live.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


@pytest.fixture(scope="module")
def demo_stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's statistics, collected once per module with the core (no Qt)."""
    demo = demo_paths()
    model = load_model(demo.model)
    stats = collect_to_completion(collect_stats(model, load_data(demo.data, model.inputs)))
    path = tmp_path_factory.mktemp("stats") / "demo.qvstats"
    save_stats(stats, path)
    return path


@pytest.fixture
def evaluated_window(qtbot: QtBot, make_window: MakeWindow, demo_stats_file: Path) -> MainWindow:
    """The demo with its statistics and its data (for evaluation), the first live evaluation
    shown."""
    window = make_window()
    demo = demo_paths()
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS):
        window.files.open_model(demo.model, data_path=demo.data, stats_path=demo_stats_file)
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    return window


def core_evaluation(window: MainWindow, config: QuantConfig | None = None, *,
                    limit: int | None = LIVE_LIMIT) -> Evaluation:
    """What the core's evaluate() measures for the window's settings, without the window."""
    doc = window.doc
    inputs = doc.measure_inputs("Evaluation", config)  # the window's evaluation data
    results = analyze(inputs.model, inputs.stats, inputs.config)
    data = inputs.load()
    return run_to_completion(evaluate(inputs.model, results, data, limit=limit, latency=False))
