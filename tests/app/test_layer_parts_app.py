"""The window on a large layer: drawn at once from what is at hand, "computing…" where a part
is on its way, the same numbers throughout, and each panel drawn again only when its own data
changed. The demo stands in for a large model (the threshold is lowered); offscreen Qt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views.metrics_panel import ROWS
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document import layer_parts
from qviz.core.document.document import Document
from qviz.core.layerdata import layer as layer_module
from qviz.core.layerdata.deferred import COMPUTING
from qviz.core.model.loading import TensorKind
from tests.app.evaluation_fixtures import MakeWindow, demo_stats_file, make_window

__all__ = ["demo_stats_file", "make_window"]  # fixtures used here
W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
CONV = TensorKey("features.9.weight", W)
FC = TensorKey("classifier.0.weight", W)
TIMEOUT_MS = 60_000


@pytest.fixture
def window(qtbot: QtBot, make_window: MakeWindow, demo_stats_file: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[MainWindow]:
    monkeypatch.setattr(layer_parts, "DEFER_MIN_VALUES", 1000)  # every layer is large
    w = make_window()
    with qtbot.waitSignal(w.files.calibrated, timeout=TIMEOUT_MS):
        w.files.open_stats(demo_stats_file)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    yield w
    w.close()
    assert w.layer_parts.live_threads() == 0


def metric_texts(window: MainWindow) -> dict[tuple[TensorKind, str], str]:
    """Every cell of the metrics panel."""
    panel = window.layer_view.metrics_panel
    return {(kind, key): panel.text(kind, key) for kind in (W, A) for key, _ in ROWS}


def reference(window: MainWindow, key: TensorKey) -> Document:
    """The same session measured synchronously, as without a worker."""
    doc = Document()
    assert window.doc.model is not None and window.doc.stats is not None
    doc.set_model(window.doc.model)
    doc.set_stats(window.doc.stats)
    doc.select(key)
    return doc


def test_a_large_layer_is_drawn_at_once_then_filled_in_with_the_same_numbers(
    qtbot: QtBot, window: MainWindow
) -> None:
    view = window.layer_view
    window.doc.select(CONV)
    # Drawn at once: the metrics, the activation's histogram; the rest says it is coming.
    first = metric_texts(window)
    assert first[(W, "sqnr")] not in ("", "—") and first[(A, "sqnr")] not in ("", "—")
    assert view.error_curve.curve_data(W) is None and view.error_curve.curve_data(A) is None
    assert view.error_curve.placeholder.text() == COMPUTING
    assert view.error_curve.tensor_kind is W  # waiting on the weight's, as chosen
    assert COMPUTING in view.weight_hist.info_text.toPlainText()
    assert view.input_channels.placeholder.text() == COMPUTING
    assert window.layer_parts.is_busy
    qtbot.waitUntil(lambda: not window.layer_parts.is_busy, timeout=TIMEOUT_MS)
    # Filled in: what the synchronous path computes, and not one number changed on the way.
    assert metric_texts(window) == first
    want = reference(window, CONV).layer_data()
    assert want is not None and want.weight is not None and want.activation is not None
    assert want.weight.curve is not None and want.activation.curve is not None
    got_w, got_a = view.error_curve.curve_data(W), view.error_curve.curve_data(A)
    assert got_w is not None and got_a is not None
    np.testing.assert_array_equal(got_w.sqnr_db, want.weight.curve.sqnr_db)
    assert got_w.markers == want.weight.curve.markers and got_w.markers
    assert got_a.markers == want.activation.curve.markers and got_a.markers
    assert view.data is not None and view.data.pending == ()
    # The weight's curve is shown again once it is there (it only lent its place).
    assert view.error_curve.tensor_kind is W


def test_filling_in_redraws_only_the_panels_whose_data_changed(
    qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = window.layer_view
    calls: dict[str, int] = {"weight channels": 0, "input channels": 0, "curves": 0}

    def counting(name: str, method):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(view.channel_view, "show_channels",
                        counting("weight channels", view.channel_view.show_channels))
    monkeypatch.setattr(view.input_channels, "show_channels",
                        counting("input channels", view.input_channels.show_channels))
    monkeypatch.setattr(view.error_curve, "set_curves",
                        counting("curves", view.error_curve.set_curves))
    window.doc.select(CONV)
    qtbot.waitUntil(lambda: not window.layer_parts.is_busy, timeout=TIMEOUT_MS)
    # Channels from the analysis at once; input channels once they came; the curves at
    # first ("computing…"), with the curves, with their markers.
    assert calls == {"weight channels": 1, "input channels": 1, "curves": 3}
    view.redraw()  # nothing changed: nothing is drawn again
    assert calls == {"weight channels": 1, "input channels": 1, "curves": 3}


def test_selecting_away_and_back_shows_the_layer_whole_at_once(
    qtbot: QtBot, window: MainWindow
) -> None:
    window.doc.select(CONV)
    qtbot.waitUntil(lambda: not window.layer_parts.is_busy, timeout=TIMEOUT_MS)
    window.doc.select(FC)  # another large layer: its own parts
    window.doc.select(CONV)
    data = window.layer_view.data
    assert data is not None and data.pending == ()
    assert window.layer_view.error_curve.curve_data(W) is not None
    qtbot.waitUntil(lambda: not window.layer_parts.is_busy, timeout=TIMEOUT_MS)



def test_a_part_that_fails_is_reported_once_and_its_panel_says_why(
    qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(*_: object, **__: object) -> None:
        raise OSError("the data file is gone")

    for curve in ("weight_curve", "activation_curve"):  # as if the data vanished
        monkeypatch.setattr(layer_module, curve, gone)
    shown: list[str] = []
    window.reporter.errorShown.connect(shown.append)
    view = window.layer_view

    def settled() -> bool:
        return (not window.layer_parts.is_busy and view.data is not None
                and view.data.pending == ())

    window.doc.select(CONV)
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    # One dialog for the run's failures, each named.
    assert len(shown) == 1 and shown[0].count("the data file is gone") == 2
    assert "2 parts of the layer view could not be computed" in shown[0]
    # The panel says why there is no curve, not "computing…" forever; the rest is drawn.
    text = view.error_curve.placeholder.text()
    assert "could not be computed (the data file is gone)" in text and COMPUTING not in text
    assert view.error_curve.curve_data(W) is None and view.error_curve.curve_data(A) is None
    assert view.data is not None and view.data.activation is not None
    assert view.data.activation.channels is not None
    # Selecting away and back draws it without asking again (no more dialogs for it).
    window.doc.select(TensorKey("features.6.weight", W))
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=TIMEOUT_MS)  # its curves failed too
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    window.doc.select(CONV)
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    assert len(shown) == 2
    assert "could not be computed" in view.error_curve.placeholder.text()
