"""A large layer's view, part by part: what is drawn at once, what is left pending, and that
the parts built later are exactly what the synchronous path computes.

The demo model stands in for a large one: the thresholds (`DEFER_MIN_VALUES`, and
`STATS_MIN_VALUES` for a weight analysed from its statistics) are lowered, the code paths are
the real ones. No Qt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qviz.core.calibration import weight_cache
from qviz.core.calibration.analysis import TensorKey
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document import layer_parts
from qviz.core.document.document import Document
from qviz.core.layerdata import layer as layer_module
from qviz.core.layerdata.curves import weight_curve
from qviz.core.layerdata.deferred import COMPUTING, ComputedPart, Pending, compute_parts
from qviz.core.layerdata.layer import LayerData
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.stats import stats_file, weight_collect
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion
from qviz.core.stats.stats_file import load_stats, save_stats

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
CONV = TensorKey("features.9.weight", W)      # 18,432 values: analysed exactly
FC = TensorKey("classifier.0.weight", W)      # 401,408 values: from statistics when lowered


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, CalibrationStats]:
    paths = demo_paths()
    model = load_model(paths.model)
    stats = run_to_completion(collect_stats(model, load_data(paths.data, model.inputs)))
    return model, stats


def make_doc(demo: tuple[LoadedModel, CalibrationStats]) -> Document:
    doc = Document()
    doc.set_model(demo[0])
    doc.set_stats(demo[1])
    return doc


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every demo layer counts as large."""
    monkeypatch.setattr(layer_parts, "DEFER_MIN_VALUES", 1000)


def fill(doc: Document, data: LayerData | None) -> tuple[LayerData, int]:
    """Build every pending part as a worker would, hand them back, draw again; until none is
    left. Returns the final data and how many rounds it took."""
    rounds = 0
    while data is not None and data.pending:
        rounds += 1
        assert rounds < 5, [p.what for p in data.pending]
        done = list(compute_parts(data.pending, lambda: False))
        assert all(part.error is None for part in done)
        assert doc.accept_parts(done) == len(done)
        doc.parts_ready()
        data = doc.layer_data(defer=True)
    assert data is not None
    return data, rounds


def assert_same_view(got: LayerData, want: LayerData) -> None:
    """Every number the layer view draws is the same."""
    for a, b in ((got.weight, want.weight), (got.activation, want.activation)):
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        assert a.column.metrics.sqnr_db == b.column.metrics.sqnr_db
        assert a.curve is not None and b.curve is not None
        np.testing.assert_array_equal(a.curve.clips, b.curve.clips)
        np.testing.assert_array_equal(a.curve.sqnr_db, b.curve.sqnr_db)
        assert a.curve.markers == b.curve.markers
        assert a.curve.current == b.curve.current
    w, v = got.weight, want.weight
    if w is not None and v is not None:
        np.testing.assert_array_equal(w.counts, v.counts)
        assert w.channels is not None and v.channels is not None
        np.testing.assert_array_equal(w.channels.sqnr_db, v.channels.sqnr_db)
    a, b = got.activation, want.activation
    if a is not None and b is not None:
        assert a.channels is not None and b.channels is not None
        np.testing.assert_array_equal(a.channels.sqnr_db, b.channels.sqnr_db)


def test_the_layers_of_a_small_model_are_drawn_whole_even_when_deferring(demo) -> None:
    doc = make_doc(demo)
    doc.select(CONV)
    data = doc.layer_data(defer=True)
    assert data is not None and data.pending == ()
    assert data.weight is not None and data.weight.curve is not None


def test_a_large_layer_leaves_its_slow_parts_pending_and_they_arrive_as_computed_now(
    demo, large
) -> None:
    doc, ref = make_doc(demo), make_doc(demo)
    for d in (doc, ref):
        d.select(CONV)
    first = doc.layer_data(defer=True)
    assert first is not None and first.pending
    assert len({p.key for p in first.pending}) == len(first.pending)  # each asked for once
    w, a = first.weight, first.activation
    assert w is not None and a is not None
    # What is drawn at once is the analysis's own numbers; the rest is missing, not guessed.
    result = doc.result(CONV)
    assert result is not None and w.column.metrics.sqnr_db == result.metrics.sqnr_db
    assert w.curve is None and a.curve is None
    assert w.counts is None  # an exact weight's histogram is a pass over its values
    assert a.channels is None and a.channels_missing == COMPUTING
    whole = ref.layer_data()
    assert whole is not None and whole.pending == ()
    got, rounds = fill(doc, first)
    assert rounds == 2  # the method markers wait for the method ranges
    assert_same_view(got, whole)
    # Cached now: the next view of the layer is whole at once.
    again = doc.layer_data(defer=True)
    assert again is not None and again.pending == ()


def test_a_weight_analysed_from_statistics_is_drawn_from_them_without_reading_it(
    demo, large, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 100_000)
    doc = make_doc(demo)
    doc.select(FC)
    assert doc.analyze(FC) is not None  # the analysis keeps the weight's statistics
    layer = doc.tensor(FC).layer
    found, ws = weight_cache.kept_weight_stats(doc.model, layer)  # type: ignore[arg-type]
    assert found and ws is not None
    monkeypatch.setattr(layer_module, "compute_stats",
                        lambda *a, **k: pytest.fail("the weight was read"))
    first = doc.layer_data(defer=True)
    assert first is not None and first.weight is not None
    assert first.weight.stats is ws.tensor
    assert first.weight.counts is not None  # the histogram is drawn at once
    np.testing.assert_array_equal(first.weight.counts.sum(), ws.tensor.histogram.counts.sum())
    got, _ = fill(doc, first)
    assert got.weight is not None and got.weight.curve is not None
    fmt = doc.config_for(FC).fmt
    want = weight_curve(doc.weight_values(FC.name), fmt, 0.0, ws.tensor)
    np.testing.assert_array_equal(got.weight.curve.sqnr_db, want.sqnr_db)


def test_statistics_no_longer_kept_are_read_by_a_worker_and_kept(
    demo, large, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From a statistics file: a weight's statistics are read once and kept (the same
    object each time: the view's caches are keyed by it); once the memory budget pushed
    them out, the first view waits for a worker to read them again instead of reading
    them itself."""
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 10_000)  # features.9 too
    monkeypatch.setattr(weight_cache, "CACHE_BYTES", 0)  # keeps one weight's only
    model = load_model(demo_paths().model)  # a model of its own: nothing kept for it yet
    weights = run_to_completion(weight_collect.collect_weight_stats(model))
    path = tmp_path / "demo.qvstats"
    save_stats(dataclasses.replace(demo[1], weights=weights), path)
    reads: list[str] = []
    real = stats_file.StoredWeightStats.__getitem__
    monkeypatch.setattr(stats_file.StoredWeightStats, "__getitem__",
                        lambda self, name: reads.append(name) or real(self, name))
    doc = Document()
    doc.set_model(model)
    doc.set_stats(load_stats(path))
    layer = doc.tensor(FC).layer
    assert doc.analyze(FC) is not None and doc.analyze(FC) is not None
    kept = weight_cache.weight_stats(model, layer, doc.stats)
    assert weight_cache.weight_stats(model, layer, doc.stats) is kept
    assert reads == [FC.name]
    assert doc.analyze(CONV) is not None  # its statistics push FC's out
    assert weight_cache.kept_weight_stats(model, layer) == (False, None)
    doc.select(FC)
    first = doc.layer_data(defer=True)
    assert first is not None and first.weight is not None
    assert first.weight.counts is None and first.weight.curve is None
    assert reads == [FC.name, CONV.name]  # not read on this thread
    assert any(p.key[0] == "weight statistics" for p in first.pending)
    got, _ = fill(doc, first)
    ws = weight_cache.weight_stats(model, layer, doc.stats)
    assert ws is not None and got.weight is not None and got.weight.stats is ws.tensor
    assert got.weight.counts is not None and got.weight.curve is not None
    assert reads == [FC.name, CONV.name, FC.name]


def test_the_evaluation_data_and_convergence_come_as_parts_too(demo, large) -> None:
    """The activation's searches against the evaluation data and along calibration's
    snapshots: pending at first (nothing shown in their place), then what the synchronous
    path computes."""
    model = demo[0]
    data = load_data(demo_paths().data, model.inputs)
    cal = run_to_completion(collect_stats(model, data, snapshots=True))
    docs = []
    for _ in range(2):
        d = Document()
        d.set_model(model)
        d.set_stats(cal)
        d.set_eval_stats(demo[1])
        d.select(CONV)
        docs.append(d)
    doc, ref = docs
    first = doc.layer_data(defer=True)
    assert first is not None and first.activation is not None
    kinds = {p.key[0] for p in first.pending}
    assert {"representativeness", "convergence"} <= kinds
    assert first.activation.convergence == () and first.activation.convergence_waiting
    assert first.activation.eval_band is None
    got, _ = fill(doc, first)
    want = ref.layer_data()
    assert want is not None and want.activation is not None and got.activation is not None
    assert len(want.activation.convergence) >= 2 and want.activation.eval_band is not None
    assert got.activation.convergence == want.activation.convergence
    assert got.activation.eval_band == want.activation.eval_band
    assert not got.activation.convergence_waiting


def test_ranges_searched_on_replaced_statistics_are_not_kept(demo, large) -> None:
    doc = make_doc(demo)
    doc.select(CONV)
    first = doc.layer_data(defer=True)
    assert first is not None
    ranges = [p for p in first.pending if p.key[0] == "method ranges"]
    assert len(ranges) == 2  # the weight's and the activation's
    built = [ComputedPart(p, p.build()) for p in ranges]
    doc.set_stats(demo[1])  # replaced (by the same numbers, but the document cannot know)
    assert doc.accept_parts(built) == 0
    assert doc.method_ranges(CONV, []) == {}  # still to search


def test_a_part_that_fails_comes_back_with_its_error_and_the_others_still_come() -> None:
    stored: list[object] = []

    def boom() -> object:
        raise ValueError("no such thing")

    parts = [
        Pending(("a",), "part a", boom, lambda v: stored.append(v) or True),
        Pending(("b",), "part b", lambda: 2, lambda v: stored.append(v) or True),
    ]
    done = list(compute_parts(parts, lambda: False))
    assert isinstance(done[0].error, ValueError) and done[1].value == 2
    doc = Document()
    assert doc.accept_parts(done) == 1 and stored == [2]
    # Asked to stop: nothing more is built.
    assert list(compute_parts(parts, lambda: True)) == []


def test_parts_that_fail_are_not_asked_for_again_and_their_panels_say_why(demo, large) -> None:
    doc = make_doc(demo)
    doc.select(CONV)
    data = doc.layer_data(defer=True)
    rounds = 0
    while data is not None and data.pending:  # every build fails, as on a vanished data file
        rounds += 1
        assert rounds < 5, [p.what for p in data.pending]
        failed = [ComputedPart(p, error=OSError("the data file is gone")) for p in data.pending]
        assert all(p.on_error is not None for p in data.pending)  # each stands in for itself
        assert doc.accept_parts(failed) == len(failed)
        doc.parts_ready()
        data = doc.layer_data(defer=True)
    assert data is not None and data.pending == ()  # nothing is asked for forever
    w, a = data.weight, data.activation
    assert w is not None and a is not None
    why = "could not be computed (the data file is gone)"
    assert w.curve is None and why in w.curve_missing
    assert w.counts is None and why in w.histogram_missing
    assert a.curve is None and why in a.curve_missing and "error curve" in a.curve_missing
    assert a.channels is None and why in a.channels_missing
    texts = (w.curve_missing, w.histogram_missing, a.curve_missing, a.channels_missing)
    assert COMPUTING not in " ".join(texts)
    # The analysis's own numbers are still there.
    result = doc.result(CONV)
    assert result is not None and w.column.metrics.sqnr_db == result.metrics.sqnr_db
    # A new model (or statistics) asks again.
    doc.set_model(demo[0])
    doc.set_stats(demo[1])
    doc.select(CONV)
    again = doc.layer_data(defer=True)
    assert again is not None and again.pending


def test_a_weight_whose_statistics_fail_to_come_is_drawn_from_a_pass_of_its_own(
    demo, large, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 10_000)
    monkeypatch.setattr(weight_cache, "CACHE_BYTES", 0)  # keeps one weight's only
    model = load_model(demo_paths().model)
    weights = run_to_completion(weight_collect.collect_weight_stats(model))
    path = tmp_path / "demo.qvstats"
    save_stats(dataclasses.replace(demo[1], weights=weights), path)
    doc = Document()
    doc.set_model(model)
    doc.set_stats(load_stats(path))
    assert doc.analyze(FC) is not None and doc.analyze(CONV) is not None  # FC's pushed out
    doc.select(FC)
    first = doc.layer_data(defer=True)
    assert first is not None
    (part,) = [p for p in first.pending if p.key[0] == "weight statistics"]
    assert doc.accept_parts([ComputedPart(part, error=OSError("the file is gone"))]) == 1
    again = doc.layer_data(defer=True)
    assert again is not None and again.weight is not None
    assert not any(p.key[0] == "weight statistics" for p in again.pending)  # not again
    assert any(p.what == f"the histogram of {FC.name}" for p in again.pending)
    got, _ = fill(doc, again)
    assert got.weight is not None and got.weight.counts is not None
    assert got.weight.curve is not None and got.weight.histogram_missing == ""
