"""The document, headless: tensors, settings with undo and redo, events, results and the
measurements it keeps. Every number is compared with the core computing it on its own."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qviz.core.calibration.analysis import TensorKey, analyze_tensor
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import Document
from qviz.core.document.history import History
from qviz.core.document.jobs import analyze_in_batches
from qviz.core.document.session import adopt_session, to_session
from qviz.core.document.summary import weighted_sqnr_db
from qviz.core.document.tensors import ApplyScope
from qviz.core.errors import QvizError
from qviz.core.files.session_file import load_session, save_session
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat, PerAxis, PerTensor
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion

W = TensorKind.WEIGHT
A = TensorKind.ACTIVATION
CONV_W = TensorKey("features.3.weight", W)
RELU = TensorKey("relu", A)
INT4 = TensorConfig(MethodSpec(Method.MSE), PerTensor(), NumberFormat.parse("int4"))


@pytest.fixture(scope="module")
def demo_model_and_stats() -> tuple[LoadedModel, CalibrationStats]:
    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=256))
    return model, stats


@pytest.fixture
def doc(demo_model_and_stats: tuple[LoadedModel, CalibrationStats]) -> Document:
    model, stats = demo_model_and_stats
    d = Document()
    d.set_model(model)
    d.set_stats(stats)
    return d


class Recorder:
    """Every event the document emits, in order, with its arguments."""

    def __init__(self, doc: Document) -> None:
        self.seen: list[tuple[str, tuple]] = []
        for name in ("model", "stats", "data", "config", "results", "selection", "view",
                     "criteria", "evaluation", "sensitivity", "mixed", "history", "modified"):
            signal = getattr(doc.events, name)
            signal.connect(lambda *args, n=name: self.seen.append((n, args)))

    def names(self) -> list[str]:
        return [n for n, _ in self.seen]


# --- the tensors ----------------------------------------------------------------------------------


def test_document_lists_every_tensor_and_selects_the_first(doc: Document) -> None:
    kinds = [t.key.kind for t in doc.tensors]
    assert kinds.count(W) == 6 and kinds.count(A) == 6
    assert doc.selection == doc.tensors[0].key
    assert doc.shape(TensorKey("features.0.weight", W)) == (16, 1, 3, 3)
    assert doc.element_count(TensorKey("features.0.weight", W)) == 144
    assert doc.element_count(TensorKey("input", A)) == 28 * 28
    assert doc.visible_keys() == doc.index.layer_keys(doc.tensors[0].key)


def test_analyze_matches_the_core_and_is_cached(
    doc: Document, demo_model_and_stats: tuple[LoadedModel, CalibrationStats]
) -> None:
    model, stats = demo_model_and_stats
    key = TensorKey("relu_1", A)
    result = doc.analyze(key)
    assert result is not None and doc.result(key) is result
    expected = analyze_tensor(model, stats, doc.tensor(key), doc.config_for(key))
    assert result.metrics.sqnr_db == expected.metrics.sqnr_db


# --- settings, events, undo -----------------------------------------------------------------------


def test_apply_scopes(doc: Document) -> None:
    doc.analyze(CONV_W)
    assert doc.apply(CONV_W, INT4, ApplyScope.TENSOR) == [CONV_W]
    assert doc.result(CONV_W) is None  # invalidated
    assert doc.config_for(CONV_W) == INT4

    changed = doc.apply(CONV_W, INT4, ApplyScope.OP_TYPE)
    conv_weights = {TensorKey(t.layer.weight, W) for t in doc.tensors
                    if t.layer.op_type == "Conv" and t.layer.weight is not None}
    assert set(changed) == conv_weights - {CONV_W}  # CONV_W had it already
    assert doc.config_for(TensorKey("classifier.0.weight", W)) == doc.config.weights

    changed = doc.apply(CONV_W, INT4, ApplyScope.ALL)
    assert set(changed) == {TensorKey("classifier.0.weight", W),
                            TensorKey("classifier.2.weight", W)}
    assert doc.config.weights == INT4 and not doc.config.overrides  # default, no overrides
    assert doc.config_for(TensorKey("input", A)) == doc.config.activations


def test_each_action_is_one_undo_step_and_events_say_what_changed(doc: Document) -> None:
    rec = Recorder(doc)
    start = doc.config
    doc.apply(CONV_W, INT4, ApplyScope.OP_TYPE)  # "apply to all Conv weights": one step
    doc.set_manual_range(RELU, 0.0, 2.0)         # a finished drag: one step
    assert len(doc.history.entries) == 3
    assert doc.history.undo_label is not None and "relu" in doc.history.undo_label
    config_events = [args[0] for n, args in rec.seen if n == "config"]
    assert len(config_events) == 2 and config_events[1] == (RELU,)
    assert len(config_events[0]) == 4  # the four Conv weights

    after = doc.config
    doc.select(TensorKey("input", A))
    undone = doc.undo()
    assert undone is not None and doc.config_for(RELU).spec.method is not Method.MANUAL
    assert doc.selection == RELU  # undoing shows what the step was about
    doc.undo()
    assert doc.config == start and not doc.history.can_undo
    assert doc.undo() is None
    doc.redo()
    doc.redo()
    assert doc.config == after and not doc.history.can_redo
    # A new action after an undo drops the undone steps, as editors do.
    doc.undo()
    doc.apply(RELU, TensorConfig(MethodSpec(Method.MSE)), ApplyScope.TENSOR)
    assert len(doc.history.entries) == 3 and not doc.history.can_redo
    doc.goto_history(0)
    assert doc.config == start
    assert "history" in rec.names() and "selection" in rec.names()


def test_undo_restores_earlier_results_without_measuring_again(doc: Document) -> None:
    first = doc.analyze(CONV_W)
    assert first is not None
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)
    assert doc.result(CONV_W) is None
    second = doc.analyze(CONV_W)
    doc.undo()
    assert doc.result(CONV_W) is first  # the very object measured for those settings
    doc.redo()
    assert doc.result(CONV_W) is second


def test_a_change_that_changes_nothing_is_no_step(doc: Document) -> None:
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)
    steps = len(doc.history.entries)
    assert doc.apply(CONV_W, INT4, ApplyScope.TENSOR) == []
    assert doc.set_config(doc.config, "same") == []
    assert len(doc.history.entries) == steps


def test_results_for_superseded_settings_are_dropped(doc: Document) -> None:
    [job] = [j for j in doc.analyze_jobs() if j.key == RELU]
    assert doc.model is not None
    outcomes = [
        o for batch in analyze_in_batches(doc.model, doc.stats, [job]) for o in batch.outcomes
    ]
    doc.apply(RELU, TensorConfig(MethodSpec(Method.MINMAX)), ApplyScope.TENSOR)
    assert doc.accept_results(outcomes) == ()  # computed for the old settings
    assert doc.result(RELU) is None


def test_manual_range_makes_a_weight_per_tensor(doc: Document) -> None:
    key = TensorKey("features.6.weight", W)
    assert isinstance(doc.config_for(key).granularity, PerAxis)
    doc.set_manual_range(key, -0.25, 0.25)
    cfg = doc.config_for(key)
    assert cfg.spec == MethodSpec(Method.MANUAL, manual_range=(-0.25, 0.25))
    assert isinstance(cfg.granularity, PerTensor)
    result = doc.analyze(key)
    assert result is not None
    assert float(np.max(result.metrics.hi)) == pytest.approx(0.25, rel=1e-6)
    for lo, hi in ((1.0, 1.0), (math.nan, 1.0), (0.0, math.inf)):
        with pytest.raises(QvizError):
            doc.set_manual_range(key, lo, hi)


def test_errors_are_kept_per_tensor(doc: Document) -> None:
    key = TensorKey("relu_2", A)
    doc.apply(key, TensorConfig(fmt=NumberFormat.parse("nf4")), ApplyScope.TENSOR)
    assert doc.analyze(key) is None
    assert "NF4" in (doc.error(key) or "")


def test_selecting_an_unknown_tensor_is_refused(doc: Document) -> None:
    with pytest.raises(QvizError, match="no tensor"):
        doc.select(TensorKey("nope", W))
    doc.select(("relu", A))  # a plain pair is accepted
    assert doc.selection == RELU and isinstance(doc.selection, TensorKey)


# --- what the views draw --------------------------------------------------------------------------


def test_summary_and_method_ranges(doc: Document) -> None:
    for t in doc.tensors:
        doc.analyze(t.key)
    summary = doc.summary()
    assert summary.n_tensors == summary.n_analyzed == 12
    assert len(summary.worst) == 3
    assert summary.worst[0][1] <= summary.worst[1][1] <= summary.worst[2][1]
    assert math.isfinite(summary.weighted_sqnr_db)
    ranges = doc.method_ranges(RELU)
    assert set(ranges) == {Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE}
    assert ranges[Method.MINMAX][1] == pytest.approx(doc.stats.tensors["relu"].max)  # type: ignore[union-attr]
    assert doc.method_ranges(TensorKey("features.0.weight", W))  # weights get markers too


def test_a_weight_marker_is_the_range_that_method_gives(doc: Document) -> None:
    """Each method's marker on a weight's error curve sits where choosing that method puts
    the per-tensor range (the markers take every method from one pass over the values)."""
    from qviz.core.calibration.methods import MethodSpec
    from qviz.core.calibration.weights import analyze_weight
    from qviz.core.quant.formats import PerTensor

    key = TensorKey("features.3.weight", W)
    layer = next(t.layer for t in doc.tensors if t.key == key)
    fmt = doc.config_for(key).fmt
    w = doc.model.weight(key.name)  # type: ignore[union-attr]
    ranges = doc.method_ranges(key)
    assert set(ranges) == {Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE}
    for method, (lo, hi) in ranges.items():
        spec = MethodSpec.of(method, doc.config_for(key).spec.percentile)
        analysis = analyze_weight(w, layer.channel_axis, layer.reduction_axis, spec,
                                  PerTensor(), fmt)
        assert (lo, hi) == analysis.metrics.envelope, method


def test_layer_data_is_the_selected_layer_measured_now(doc: Document) -> None:
    doc.select(CONV_W)
    data = doc.layer_data()
    assert data is not None and data.weight is not None and data.activation is not None
    assert data.weight.result is doc.result(CONV_W)
    assert data.weight.column.metrics is data.weight.result.metrics
    assert data.weight.band == data.weight.result.metrics.envelope
    assert set(data.weight.curve.markers) == set(doc.method_ranges(CONV_W))
    assert data.weight.channels is not None
    assert len(data.weight.channels.mins) == doc.tensor(CONV_W).layer.weight_shape[0]  # type: ignore[index]
    act = data.activation
    assert act.stats is doc.stats.tensors[act.result.name]  # type: ignore[union-attr]
    # The same layer again reuses every costly piece.
    again = doc.layer_data()
    assert again is not None and again.weight is not None
    assert again.weight.curve.clips is data.weight.curve.clips
    assert again.weight.channels is data.weight.channels


def test_weighted_sqnr_is_a_power_mean() -> None:
    # Noise-to-signal 0.1 and 0.001, equal weights: mean 0.0505 -> 12.97 dB, far from the
    # 20 dB a dB-average would claim.
    assert weighted_sqnr_db([(10.0, 1.0), (30.0, 1.0)]) == pytest.approx(
        -10 * math.log10(0.0505)
    )
    assert weighted_sqnr_db([(10.0, 1.0), (30.0, 99.0)]) == pytest.approx(
        -10 * math.log10((0.1 + 99 * 0.001) / 100)
    )
    assert weighted_sqnr_db([(math.inf, 5.0)]) == math.inf
    assert weighted_sqnr_db([(math.nan, 5.0), (20.0, 1.0)]) == pytest.approx(20.0)
    assert math.isnan(weighted_sqnr_db([]))


# --- statistics, data, measurements ---------------------------------------------------------------


def test_stats_from_another_model_are_refused(
    doc: Document, demo_model_and_stats: tuple[LoadedModel, CalibrationStats]
) -> None:
    _, stats = demo_model_and_stats
    with pytest.raises(QvizError, match="different model"):
        doc.set_stats(replace(stats, model_sha256="0" * 64))


def test_every_change_that_alters_measurements_bumps_the_revision(doc: Document) -> None:
    revisions = [doc.revision]
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)
    revisions.append(doc.revision)
    doc.set_eval_data_path(demo_paths().data)
    revisions.append(doc.revision)
    assert doc.stats is not None
    doc.set_stats(doc.stats)
    revisions.append(doc.revision)
    doc.undo()
    revisions.append(doc.revision)
    doc.select(RELU)  # a selection changes nothing measured
    doc.set_log_counts(True)
    revisions.append(doc.revision)
    changes, last = revisions[:-1], revisions[-1]
    assert all(b > a for a, b in itertools.pairwise(changes))
    assert last == changes[-1]


def test_measure_inputs_say_what_is_missing(
    demo_model_and_stats: tuple[LoadedModel, CalibrationStats],
) -> None:
    model, stats = demo_model_and_stats
    d = Document()
    with pytest.raises(QvizError, match="needs a model"):
        d.measure_inputs("Evaluation")
    d.set_model(model)
    with pytest.raises(QvizError, match="calibration statistics"):
        d.measure_inputs("Evaluation")
    d.set_stats(stats)
    with pytest.raises(QvizError, match="none is open"):
        d.measure_inputs("Evaluation")
    d.set_data_path(demo_paths().data)
    inputs = d.measure_inputs("Evaluation")
    assert inputs.data_path == demo_paths().data and inputs.revision == d.revision
    d.set_eval_data_path(Path("/elsewhere/eval.npz"))
    assert d.measure_inputs("Evaluation").data_path == Path("/elsewhere/eval.npz")


def test_criteria_default_to_the_labels_and_keep_what_was_typed(doc: Document) -> None:
    m = doc.measures
    assert m.criteria_text is None and m.effective_criteria_text == "accuracy_drop<=1"
    doc.set_criteria_text("cosine>=0.99; sqnr>=30")
    assert [c.spec for c in m.criteria] == ["cosine>=0.99", "sqnr>=30"]
    with pytest.raises(QvizError):
        doc.set_criteria_text("cosine >= lots")
    assert [c.spec for c in m.criteria] == ["cosine>=0.99", "sqnr>=30"]  # unchanged


# --- the session file -----------------------------------------------------------------------------


def test_session_from_document_and_back(doc: Document, tmp_path: Path) -> None:
    doc.apply(RELU, TensorConfig(MethodSpec(Method.MSE)), ApplyScope.TENSOR)
    doc.select(RELU)
    doc.set_data_path(demo_paths().data)
    doc.set_eval_data_path(demo_paths().data)
    doc.set_criteria_text("cosine>=0.995")
    path = tmp_path / "s.qviz.json"
    save_session(path, to_session(doc))
    fresh = Document()
    assert doc.model is not None
    fresh.set_model(doc.model)
    session = load_session(path)
    adopt_session(fresh, session)
    assert fresh.config == doc.config
    assert fresh.selection == RELU
    assert fresh.measures.criteria_text == "cosine>=0.995"
    assert session.eval_data_path == demo_paths().data.resolve()
    assert session.model_sha256 == doc.model.sha256
    assert not fresh.modified and len(fresh.history.entries) == 1  # the history starts here


# --- the history on its own -----------------------------------------------------------------------


def test_history_is_bounded_and_linear() -> None:
    h: History[int, str] = History(0, limit=3)
    for i in range(1, 6):
        h.record(f"step {i}", i, focus=f"t{i}")
    assert [e.state for e in h.entries] == [3, 4, 5]
    step = h.undo()
    assert step is not None and step[0].label == "step 5" and h.current.state == 4
    assert h.redo_label == "step 5" and h.undo_label == "step 4"
    h.record("branch", 40)
    assert [e.state for e in h.entries] == [3, 4, 40] and not h.can_redo
    assert h.goto(0).state == 3
    with pytest.raises(IndexError):
        h.goto(9)
    h.reset(QuantConfig())  # type: ignore[arg-type]
    assert len(h.entries) == 1 and not h.can_undo


# --- A/B comparison -------------------------------------------------------------------------------


def test_pinned_configuration_is_compared_tensor_by_tensor(
    doc: Document, demo_model_and_stats: tuple[LoadedModel, CalibrationStats]
) -> None:
    model, stats = demo_model_and_stats
    assert doc.pinned_result(CONV_W) is None  # nothing pinned
    doc.pin()
    a_config = doc.config
    assert doc.pinned is not None and doc.pinned.label == "settings as opened"
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)
    pinned = doc.pinned_result(CONV_W)
    expected = analyze_tensor(model, stats, doc.tensor(CONV_W), a_config.for_tensor(*CONV_W))
    assert pinned is not None and pinned.config == a_config.for_tensor(*CONV_W)
    assert pinned.metrics.sqnr_db == expected.metrics.sqnr_db
    assert doc.pinned_result(RELU) is doc.analyze(RELU)  # unchanged: the same result
    doc.select(CONV_W)
    data = doc.layer_data()
    assert data is not None and data.weight is not None
    assert data.weight.pinned_band == pinned.metrics.envelope
    assert data.weight.column.pinned is not None
    assert data.weight.column.pinned.metrics is pinned.metrics
    # The analysis jobs of A cover exactly the tensors whose settings differ from B's.
    assert [j.key for j in doc.pinned_jobs()] == []  # CONV_W's was just measured
    doc.apply(RELU, TensorConfig(MethodSpec(Method.MSE)), ApplyScope.TENSOR)
    doc.unpin()
    assert doc.pinned is None and doc.pinned_result(CONV_W) is None


def test_swapping_a_and_b_is_one_undo_step(doc: Document) -> None:
    with pytest.raises(QvizError, match="nothing is pinned"):
        doc.swap_pinned()
    doc.pin()
    a = doc.config
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)
    b = doc.config
    doc.swap_pinned()
    assert doc.config == a and doc.pinned is not None and doc.pinned.config == b
    assert "swap" in (doc.history.undo_label or "")
    doc.undo()
    assert doc.config == b


def test_the_pinned_evaluation_lasts_while_model_statistics_and_data_do(doc: Document) -> None:
    from qviz.core.document.jobs import EvaluationOutcome

    doc.set_data_path(demo_paths().data)
    doc.pin()
    assert doc.pinned is not None and doc.pinned.evaluation is None
    evaluation = object()  # only its identity matters here
    outcome = EvaluationOutcome(
        evaluation, (), doc.pinned.config, False, doc.revision, 0.1, "data.npz"  # type: ignore[arg-type]
    )
    old_data = doc.data_revision
    doc.apply(CONV_W, INT4, ApplyScope.TENSOR)  # B changes: A's numbers still hold
    assert doc.accept_pinned_evaluation(outcome, old_data)
    assert doc.pinned.evaluation is outcome
    doc.set_eval_data_path(demo_paths().data)  # other data: A's numbers must be measured again
    assert doc.pinned.evaluation is None
    assert not doc.accept_pinned_evaluation(outcome, old_data)
    other = EvaluationOutcome(evaluation, (), doc.config, False, doc.revision, 0.1, "x")  # type: ignore[arg-type]
    assert not doc.accept_pinned_evaluation(other, doc.data_revision)  # B's, not A's
