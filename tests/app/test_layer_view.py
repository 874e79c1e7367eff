"""The layer view against the core: same numbers on screen as in the results, drags that
preview exactly what the core would compute, and a grid that appears only when it can be read.

Everything is built from real core objects (``compute_stats``, ``analyze_weight``,
``histogram_metrics``); nothing is mocked. Offscreen Qt, no sleeps.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.views import plot_style as st
from qviz.app.views.error_curve_view import KL, MSE, SQNR
from qviz.app.views.layer_view import LayerView
from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.calibration.metrics import exact_metrics, histogram_metrics
from qviz.core.calibration.weights import analyze_weight
from qviz.core.document.document import Document
from qviz.core.layerdata import layer as layer_module
from qviz.core.layerdata.columns import metric_texts
from qviz.core.layerdata.layer import LayerPlots
from qviz.core.layerdata.ranges import effective_range
from qviz.core.model.layers import Layer
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import NumberFormat, PerAxis, PerGroup
from qviz.core.quant.qparams import compute_qparams
from qviz.core.stats.tensor_stats import TensorStats, compute_stats

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
WEIGHT_NAME, ACT_NAME = "fc.weight", "fc.input"
LAYER = Layer(
    name="fc", node_name="fc_node", op_type="Gemm", weight=WEIGHT_NAME, weight_shape=(16, 64),
    channel_axis=0, reduction_axis=1, activations=(ACT_NAME,), depth=0, param_count=16 * 64,
)
METHODS = (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE)


# --------------------------------------------------------------------------- core fixtures
def make_weight() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 64)) * 0.05).astype(np.float32)
    w[3] *= 6.0  # one outlier channel, as real layers have
    return w


def make_stats() -> TensorStats:
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal(20_000), 0.0) * rng.gamma(2.0, 1.0, 20_000)
    return compute_stats(x.astype(np.float32), ACT_NAME)


def weight_result(w: np.ndarray, cfg: TensorConfig) -> TensorResult:
    a = analyze_weight(w, 0, 1, cfg.spec, cfg.granularity, cfg.fmt)
    return TensorResult(WEIGHT_NAME, LAYER, W, cfg, a.qparams, a.metrics, a.channel_metrics)


def activation_result(stats: TensorStats, cfg: TensorConfig) -> TensorResult:
    lo, hi = choose_range(stats, cfg.spec, cfg.fmt)
    return TensorResult(
        ACT_NAME, LAYER, A, cfg, compute_qparams(lo, hi, cfg.fmt),
        histogram_metrics(stats, lo, hi, cfg.fmt),
    )


def method_ranges(w: np.ndarray, stats: TensorStats, wfmt: NumberFormat, afmt: NumberFormat
                  ) -> dict:
    wstats = compute_stats(w)
    out = {}
    for m in METHODS:
        out[(WEIGHT_NAME, m)] = choose_range(wstats, MethodSpec(m), wfmt)
        out[(ACT_NAME, m)] = choose_range(stats, MethodSpec(m), afmt)
    return out


WEIGHT_CFG = TensorConfig(MethodSpec(Method.MINMAX), PerAxis())
ACT_CFG = TensorConfig(MethodSpec(Method.ENTROPY))


def show(
    view: LayerView,
    wr: TensorResult | None,
    w: np.ndarray | None,
    ar: TensorResult | None,
    stats: TensorStats | None,
    ranges: dict,
) -> None:
    """Show a layer built from these results, as the document would build it."""
    by_kind: dict[str, dict] = {WEIGHT_NAME: {}, ACT_NAME: {}}
    for (name, method), rng in ranges.items():
        by_kind[name][method] = rng
    data = LayerPlots().layer_data(wr, w, ar, stats, by_kind[WEIGHT_NAME], by_kind[ACT_NAME])
    view.show_layer(data)


@pytest.fixture
def view(qtbot: QtBot) -> LayerView:
    v = LayerView(Document(), ErrorReporter())
    qtbot.addWidget(v)
    v.resize(1400, 900)
    v.show()
    qtbot.waitExposed(v)
    return v


@pytest.fixture
def shown(view: LayerView) -> tuple:
    """The view showing a per-channel weight and an entropy-calibrated activation."""
    w, stats = make_weight(), make_stats()
    wr, ar = weight_result(w, WEIGHT_CFG), activation_result(stats, ACT_CFG)
    ranges = method_ranges(w, stats, WEIGHT_CFG.fmt, ACT_CFG.fmt)
    show(view, wr, w, ar, stats, ranges)
    return view, w, stats, wr, ar, ranges


# --------------------------------------------------------------------------- show_layer
def test_metrics_panel_shows_the_results_numbers(shown) -> None:
    view, _w, _stats, wr, ar, _ = shown
    panel = view.metrics_panel
    for kind, r in ((W, wr), (A, ar)):
        m = r.metrics
        assert panel.text(kind, "tensor") == r.name
        assert panel.text(kind, "config") == r.config.label
        assert panel.text(kind, "sqnr") == st.fmt_db(m.sqnr_db)
        assert panel.text(kind, "mse") == st.fmt_num(m.mse)
        assert panel.text(kind, "clipped") == st.fmt_pct(m.clipped_fraction)
        assert panel.text(kind, "max_abs_error") == st.fmt_num(m.max_abs_error)
        assert panel.text(kind, "cosine") == f"{float(m.cosine):.6f}"
        assert panel.text(kind, "step") == st.summarize(m.step)
        assert "preview" not in panel.header_text(kind)
    # Per-channel scales are summarised min / median / max; the worst channel is named.
    scales = np.asarray(wr.metrics.scale, dtype=np.float64)
    assert panel.text(W, "scale") == (
        f"{st.fmt_num(scales.min())} / {st.fmt_num(float(np.median(scales)))} / "
        f"{st.fmt_num(scales.max())}"
    )
    worst = int(np.argmin(wr.channel_metrics.sqnr_db))
    assert panel.text(W, "worst").startswith(f"#{worst}:")
    assert panel.text(A, "scale") == st.fmt_num(float(ar.metrics.scale))


def test_region_marker_and_panel_agree_on_the_clip_range(shown) -> None:
    view, _w, _stats, wr, ar, _ = shown
    # Activation: the band is the effective range the metrics report...
    lo, hi = view.activation_hist.region_values()
    assert lo == pytest.approx(float(ar.metrics.lo)) and hi == pytest.approx(float(ar.metrics.hi))
    assert view.metrics_panel.text(A, "clip") == st.fmt_range(lo, hi)
    # ...and the error curve's "current" marker sits at the same x.
    view.error_curve.select_tensor(A)
    curve = view.error_curve.curve_data(A)
    assert curve is not None and curve.current is not None
    assert curve.current.x == pytest.approx(hi)
    assert curve.current.sqnr_db == float(ar.metrics.sqnr_db)
    assert view.error_curve.marker_lines["current"].value() == pytest.approx(hi)
    # Per-channel weight: the band is the envelope of the channel ranges, and says so.
    wlo, whi = view.weight_hist.region_values()
    assert wlo == pytest.approx(float(np.min(wr.metrics.lo)))
    assert whi == pytest.approx(float(np.max(wr.metrics.hi)))
    assert "envelope" in view.weight_hist.note.text()
    assert "per-tensor Manual" in view.weight_hist.note.text()


def test_method_markers_show_each_methods_own_numbers(shown) -> None:
    view, w, stats, _wr, _ar, ranges = shown
    act = view.error_curve.curve_data(A)
    wgt = view.error_curve.curve_data(W)
    assert act is not None and wgt is not None
    assert set(act.markers) == set(METHODS) == set(wgt.markers)
    for m in METHODS:
        lo, hi = ranges[(ACT_NAME, m)]
        expected = histogram_metrics(stats, lo, hi, ACT_CFG.fmt)
        assert act.markers[m].x == pytest.approx(float(expected.hi))
        assert act.markers[m].sqnr_db == float(expected.sqnr_db)
        lo, hi = ranges[(WEIGHT_NAME, m)]
        exact = exact_metrics(w, compute_qparams(lo, hi, WEIGHT_CFG.fmt), WEIGHT_CFG.fmt)
        assert wgt.markers[m].sqnr_db == float(exact.sqnr_db)
    # Per-channel weights have no single clip: the current choice is a level instead.
    assert wgt.current is None and wgt.current_level is not None
    view.error_curve.select_tensor(W)
    assert view.error_curve.current_level.isVisible()
    assert any("per-channel" in t for t in view.error_curve.legend_texts)


def test_error_curve_modes(shown) -> None:
    view, *_ = shown
    ec = view.error_curve
    ec.select_tensor(A)
    ec.set_y_mode(MSE)
    assert ec.y_mode == MSE and ec.plot.getAxis("left").logMode
    ec.set_y_mode(KL)
    assert ec.y_mode == KL
    assert any("KL" in t for t in ec.legend_texts)
    # KL describes activation histograms only: switching to the weight falls back to SQNR.
    ec.select_tensor(W)
    assert ec.y_mode == SQNR
    kl_item = ec.y_combo.model().item(ec.y_combo.findData(KL))
    assert not kl_item.isEnabled()


def test_channel_view_flags_the_outlier_channel(shown) -> None:
    view, *_ = shown
    data = view.channel_view.data
    assert data is not None and data.mins.size == 16
    assert np.flatnonzero(data.outliers).tolist() == [3]
    assert "1 outlier channel" in view.channel_view.caption.text()
    assert not view.channel_view.heatmap.isVisible()


def test_per_group_weights_get_a_heatmap(view: LayerView) -> None:
    w, stats = make_weight(), make_stats()
    cfg = TensorConfig(
        MethodSpec(Method.MINMAX), PerGroup(16),
        NumberFormat(bits=4),
    )
    wr = weight_result(w, cfg)
    show(view, wr, w, activation_result(stats, ACT_CFG), stats, {})
    data = view.channel_view.data
    assert data is not None and data.group_sqnr_db is not None
    assert data.group_sqnr_db.shape == (16, 4)
    assert view.channel_view.heatmap.isVisible()
    assert "group" in view.weight_hist.note.text()
    assert view.metrics_panel.text(W, "worst") != "—"


# --------------------------------------------------------------------------- dragging
def test_dragging_the_activation_band_previews_histogram_metrics(qtbot: QtBot, shown) -> None:
    view, _w, stats, _wr, _ar, _ = shown
    fmt = ACT_CFG.fmt
    with qtbot.waitSignal(view.clipRangeEdited, timeout=1000) as blocker:
        view.activation_hist.set_region(-1.5, 1.5)
    name, kind, lo, hi = blocker.args
    assert (name, kind) == (ACT_NAME, A)
    assert (lo, hi) == pytest.approx(effective_range(-1.5, 1.5, fmt))
    expected = histogram_metrics(stats, lo, hi, fmt)
    preview = view.preview_metrics[A]
    for field in ("mse", "sqnr_db", "clipped_fraction", "max_abs_error", "cosine"):
        assert getattr(preview, field) == getattr(expected, field), field
    panel = view.metrics_panel
    assert "preview" in panel.header_text(A)
    assert panel.text(A, "sqnr") == st.fmt_db(expected.sqnr_db)
    assert panel.text(A, "clip") == st.fmt_range(float(expected.lo), float(expected.hi))
    # The error curve follows the drag with the same numbers.
    assert view.error_curve.tensor_kind is A
    cur = view.error_curve.curve_data(A).current
    assert cur.x == pytest.approx(hi) and cur.sqnr_db == float(expected.sqnr_db)
    assert "scale" in view.activation_hist.info and "manual" in view.activation_hist.info


def test_a_mouse_drag_of_a_bound_edits_once_on_release(qtbot: QtBot, shown) -> None:
    """A real drag through the scene: one edit, on release, with the mirrored range."""
    view, *_ = shown
    hist = view.activation_hist
    _, hi = hist.region_values()
    y_mid = 0.5 * hist.vb.viewRange()[1][1]

    def to_widget(x: float) -> QPoint:
        return hist.plot_widget.mapFromScene(hist.vb.mapViewToScene(QPointF(x, y_mid)))

    start, end = to_widget(hi), to_widget(0.5 * hi)
    viewport = hist.plot_widget.viewport()
    edits: list[tuple] = []
    view.clipRangeEdited.connect(lambda *args: edits.append(args))
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, 6):
        QTest.mouseMove(viewport, start + (end - start) * (k / 5))
        assert hist.dragging
    assert edits == []  # live preview only while the button is held
    assert "preview" in view.metrics_panel.header_text(A)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    assert len(edits) == 1
    _, kind, lo, new_hi = edits[0]
    assert kind is A and lo == pytest.approx(-new_hi)
    assert new_hi == pytest.approx(0.5 * hi, rel=0.05)


def test_symmetric_band_moves_both_bounds(qtbot: QtBot, shown) -> None:
    view, *_ = shown
    with qtbot.waitSignal(view.clipRangeEdited, timeout=1000) as blocker:
        view.activation_hist.set_region(-0.5, 2.0)  # a one-sided drag of the upper bound
    _, _, lo, hi = blocker.args
    assert lo == pytest.approx(-hi) and hi == pytest.approx(2.0, rel=1e-6)
    assert view.activation_hist.region_values() == pytest.approx((lo, hi))


def test_asymmetric_band_is_widened_to_include_zero(qtbot: QtBot, view: LayerView) -> None:
    stats = make_stats()
    fmt = NumberFormat(bits=8, signed=False, symmetric=False)
    cfg = TensorConfig(MethodSpec(Method.PERCENTILE), fmt=fmt)
    show(view, None, None, activation_result(stats, cfg), stats, {})
    with qtbot.waitSignal(view.clipRangeEdited, timeout=1000) as blocker:
        view.activation_hist.set_region(0.3, 3.0)
    _, _, lo, hi = blocker.args
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(3.0, rel=1e-2)
    assert "lower bound held at" in view.error_curve.curve_data(A).x_label
    assert view.preview_metrics[A].sqnr_db == histogram_metrics(stats, lo, hi, fmt).sqnr_db


def test_dragging_a_per_channel_weight_previews_one_per_tensor_range(
    qtbot: QtBot, shown
) -> None:
    view, w, *_ = shown
    fmt = WEIGHT_CFG.fmt
    with qtbot.waitSignal(view.clipRangeEdited, timeout=1000) as blocker:
        view.weight_hist.set_region(-0.1, 0.1)
    name, kind, lo, hi = blocker.args
    assert (name, kind) == (WEIGHT_NAME, W)
    expected = exact_metrics(w, compute_qparams(lo, hi, fmt), fmt)
    assert view.preview_metrics[W].sqnr_db == float(expected.sqnr_db)
    assert view.metrics_panel.text(W, "sqnr") == st.fmt_db(expected.sqnr_db)
    assert "per-tensor" in view.metrics_panel.text(W, "config")
    # The weight histogram now shows the one per-tensor quantizer being previewed.
    assert f"scale {st.fmt_num(float(expected.scale))}" in view.weight_hist.info


def test_huge_weights_preview_from_a_histogram_and_finish_exact(
    qtbot: QtBot, shown, monkeypatch: pytest.MonkeyPatch
) -> None:
    view, w, *_ = shown
    fmt = WEIGHT_CFG.fmt
    monkeypatch.setattr(layer_module, "EXACT_PREVIEW_MAX", 100)  # 1024 values: "huge"
    hist = view.weight_hist
    hist.region.lines[1].setValue(0.1)  # mid-drag: one bound moved, button still held
    lo, hi = hist.region_values()
    approx = histogram_metrics(compute_stats(w, WEIGHT_NAME), lo, hi, fmt)
    assert view.preview_metrics[W].sqnr_db == approx.sqnr_db
    assert "≈" in view.metrics_panel.header_text(W)
    with qtbot.waitSignal(view.clipRangeEdited, timeout=1000):
        hist.region.lineMoveFinished()  # release
    exact = exact_metrics(w, compute_qparams(lo, hi, fmt), fmt)
    assert view.preview_metrics[W].sqnr_db == float(exact.sqnr_db)
    assert "≈" not in view.metrics_panel.header_text(W)


def test_show_layer_does_not_emit_edits(qtbot: QtBot, shown) -> None:
    view, w, stats, wr, ar, ranges = shown
    with qtbot.assertNotEmitted(view.clipRangeEdited):
        show(view, wr, w, ar, stats, ranges)


# --------------------------------------------------------------------------- grid, log, clear
def test_grid_appears_only_when_zoomed_in(shown) -> None:
    view, *_ = shown
    hist = view.activation_hist
    assert not hist.grid_visible  # 256 int8 levels over the whole range: unreadable
    scale = float(shown[4].metrics.scale)
    hist.vb.setXRange(-10 * scale, 10 * scale, padding=0)
    assert hist.grid_visible
    assert 15 <= hist.grid_line_count <= 21
    xs = hist.grid_item.xData[::2]
    np.testing.assert_allclose(np.diff(xs), scale, rtol=1e-6)
    hist.vb.setXRange(-200 * scale, 200 * scale, padding=0)
    assert not hist.grid_visible


def test_coarse_formats_show_the_grid_at_once(view: LayerView) -> None:
    w = make_weight()
    cfg = TensorConfig(MethodSpec(Method.MSE), fmt=NumberFormat(bits=4))
    show(view, weight_result(w, cfg), w, None, None, {})
    assert view.weight_hist.grid_visible  # 16 levels: always readable
    assert view.weight_hist.grid_line_count <= 16
    assert "scale" in view.weight_hist.info and "step" in view.weight_hist.info


def test_log_counts_toggle(shown) -> None:
    view, _w, stats, *_ = shown
    hist = view.activation_hist
    counts = stats.histogram.counts
    np.testing.assert_array_equal(hist.curve.yData, counts)
    view.set_log_counts(True)
    assert hist.log_counts and view.weight_hist.log_counts
    np.testing.assert_allclose(hist.curve.yData, np.log10(1.0 + counts))
    assert "log" in hist.plot.getAxis("left").labelText
    # Honest ticks: labelled with counts, placed where log10(1 + count) puts them.
    values = hist.axis.tickValues(0.0, 4.0, 400)[0][1]
    assert hist.axis.tickStrings(values, 1.0, 1.0)[:3] == ["0", "1", "10"]
    view.set_log_counts(False)
    np.testing.assert_array_equal(hist.curve.yData, counts)


def test_clear_and_missing_tensors(shown) -> None:
    view, w, _stats, wr, *_ = shown
    view.clear()
    assert view.metrics_panel.text(W, "sqnr") == "—"
    assert view.metrics_panel.text(A, "sqnr") == "—"
    assert not view.weight_hist.region.isVisible()
    assert not view.activation_hist.curve.isVisible()
    assert view.error_curve.curve_data(W) is None
    assert view.channel_view.data is None
    # A layer with a weight but no activation statistics (not calibrated yet).
    show(view, wr, w, None, None, {})
    assert view.metrics_panel.text(A, "tensor") == "not calibrated"
    assert view.error_curve.tensor_kind is W
    assert not view.activation_hist.region.isVisible()


def test_metric_texts_round_trip_the_result() -> None:
    """The Qt-free formatter behind the panel: per-tensor values verbatim."""
    stats = make_stats()
    ar = activation_result(stats, ACT_CFG)
    from qviz.core.layerdata.columns import ColumnData

    texts = metric_texts(ColumnData(ar.name, ar.config.label, ar.metrics))
    assert texts["scale"] == st.fmt_num(float(ar.metrics.scale))
    assert texts["zero_point"] == "0"
    assert texts["worst"] == "—"
