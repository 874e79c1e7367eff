"""The error-along-depth plot with hundreds of points: blocks shaded and named, zoom and pan
along depth, ticks that never crowd."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QFontMetrics
from pytestqt.qtbot import QtBot

from qviz.app.views.depth_view import (
    MIN_TICK_GAP_PX,
    DepthView,
    band_titles,
    visible_ticks,
)
from qviz.core.document.grouping import depth_groups
from qviz.core.evaluation.results import DepthPoint

PARTS = ("self_attn.q_proj", "self_attn.scores", "self_attn.context", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.down_proj")


def decoder_points(blocks: int) -> list[DepthPoint]:
    rng = np.random.default_rng(0)
    points: list[DepthPoint] = []
    for i in range(blocks):
        for part in PARTS:
            d = len(points)
            points.append(DepthPoint(f"t{d}", f"model.layers.{i}.{part}", d,
                                     float(30 - 0.1 * i + rng.normal()), 0.1))
    points.append(DepthPoint(f"t{len(points)}", "lm_head", len(points), 12.0, 0.1))
    return points


def text_px(s: str) -> float:
    return 7.0 * len(s)


def test_depth_groups_band_by_block() -> None:
    names = [p.layer for p in decoder_points(3)]
    groups = depth_groups(names)
    assert [b.label for b in groups.bands] == ["model.layers.0", "model.layers.1",
                                               "model.layers.2"]
    assert [(b.start, b.stop) for b in groups.bands] == [(0, 6), (6, 12), (12, 18)]
    assert groups.short_names[:3] == PARTS[:3]
    assert groups.short_names[-1] == "lm_head"  # not in a block: its own name
    # A model without module paths (the demo CNN) has no blocks.
    assert depth_groups(["features.0", "features.3", "classifier.1"]).bands == ()


def test_ticks_name_blocks_when_points_crowd_and_points_when_zoomed() -> None:
    points = decoder_points(40)
    groups = depth_groups([p.layer for p in points])
    names, bands, n = groups.short_names, groups.bands, len(points)
    # 241 points in 800 px: names of blocks, thinned so they never overlap.
    ticks = visible_ticks(names, bands, (-0.5, n - 0.5), 800, text_px)
    labels = [label for _x, label in ticks]
    assert labels and all(label.startswith("model.layers.") for label in labels)
    xs = [x for x, _ in ticks]
    px = 800 / n
    widest = max(text_px(label) for label in labels)
    assert all((b - a) * px >= widest for a, b in itertools.pairwise(xs))
    # Zoomed to 4 points: each point by its name within its block, and blocks titled inside.
    ticks = visible_ticks(names, bands, (57.5, 61.5), 800, text_px)
    assert [label for _x, label in ticks] == list(names[58:62])
    assert [label for _x, label in band_titles(bands, (57.5, 61.5), 800, text_px)] == [
        "model.layers.9", "model.layers.10"]
    # 8 points: every other point named.
    ticks = visible_ticks(names, bands, (59.5, 67.5), 800, text_px)
    assert [label for _x, label in ticks] == list(names[60:68:2])
    # Without blocks, names thinned to every k-th point, none overlapping.
    flat = [f"layer_{i}" for i in range(300)]
    ticks = visible_ticks(flat, (), (-0.5, 299.5), 600, text_px)
    gap = ticks[1][0] - ticks[0][0]
    assert gap * 600 / 300 >= text_px("layer_299") + MIN_TICK_GAP_PX


def test_zoom_and_pan_along_depth_keep_ticks_readable(qtbot: QtBot) -> None:
    view = DepthView()
    qtbot.addWidget(view)
    view.resize(900, 260)
    view.show()
    qtbot.waitExposed(view)
    points = decoder_points(40)
    view.show_depth(points, {p.tensor: p.sqnr_db + 3 for p in points})
    assert len(view.band_labels) == 40
    assert view.bands.opts["x0"] is not None and len(view.bands.opts["x0"]) == 20  # alternate
    metrics = QFontMetrics(view.plot.getAxis("bottom").style.get("tickFont") or view.font())
    labels = view.tick_labels()
    assert labels and all(label.startswith("model.layers.") for label in labels)
    width = view.vb.width()
    assert sum(metrics.horizontalAdvance(s) for s in labels) <= width
    # The wheel zooms along depth only: y stays, x narrows.
    y_before = view.vb.viewRange()[1]
    x_before = view.vb.viewRange()[0]
    center = view.plot_widget.mapFromScene(
        view.vb.mapViewToScene(QPointF(120.0, float(np.mean(y_before))))
    )
    for _ in range(6):
        qtbot.wait(1)
        view.plot_widget.wheelEvent(_wheel(center))
    x_after = view.vb.viewRange()[0]
    assert (x_after[1] - x_after[0]) < (x_before[1] - x_before[0]) / 2
    assert view.vb.viewRange()[1] == pytest.approx(y_before)
    # Zoomed in to a block: its points by name, the blocks titled inside the plot.
    view.zoom_to(60, 67)
    assert view.tick_labels()[:2] == [PARTS[0], PARTS[1]]
    assert "model.layers.10" in view.band_titles
    # A new evaluation of the same points keeps the zoom; other points reset it.
    view.show_depth(points, {})
    assert view.vb.viewRange()[0] == pytest.approx([59.5, 67.5])
    view.show_depth(points[:60], {})
    assert view.vb.viewRange()[0] == pytest.approx([-0.5, 59.5])


def _wheel(pos: QPoint) -> object:
    from PySide6.QtCore import QPointF as P
    from PySide6.QtGui import QWheelEvent

    return QWheelEvent(P(pos), P(pos), QPoint(0, 0), QPoint(0, 120),
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                       Qt.ScrollPhase.NoScrollPhase, False)
