"""The session file (versions, migrations, atomic writes) and the Qt-free Document."""

from __future__ import annotations

import errno
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qviz.core.calibration.analysis import analyze_tensor
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import (
    ApplyScope,
    Document,
    analyze_in_batches,
    weighted_sqnr_db,
)
from qviz.core.errors import QvizError
from qviz.core.files.session_file import (
    SCHEMA_VERSION,
    PathKind,
    SessionFile,
    classify_path,
    load_session,
    save_session,
    session_document,
)
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import Granularity, GranularityKind, NumberFormat
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion
from qviz.core.stats.stats_file import save_stats

DATA = Path(__file__).resolve().parents[1] / "data"
W = TensorKind.WEIGHT
A = TensorKind.ACTIVATION


# --- golden files and round trips -------------------------------------------------------------


def test_golden_v1_session_loads_and_migrates() -> None:
    session = load_session(DATA / "session_v1.qviz.json")
    demo = demo_paths()
    assert session.schema_version == 1
    assert session.model_path == demo.model.resolve()
    assert session.data_path == demo.data.resolve()
    assert session.stats_path is None
    assert session.model_sha256 is None  # v1 did not record it
    cfg = session.config
    assert cfg.weights == TensorConfig(
        MethodSpec(Method.MINMAX), Granularity(GranularityKind.PER_CHANNEL), NumberFormat()
    )
    assert cfg.activations.spec == MethodSpec(Method.PERCENTILE, 99.9)
    assert cfg.activations.fmt == NumberFormat.parse("uint8", symmetric=False)
    w3 = cfg.overrides["features.3.weight"]
    assert w3.spec.method is Method.MSE
    assert w3.granularity == Granularity(GranularityKind.PER_GROUP, 8)
    assert w3.fmt == NumberFormat.parse("int4")
    relu1 = cfg.overrides["relu_1"]
    assert relu1.spec == MethodSpec(Method.MANUAL, 99.99, (0.0, 3.5))
    assert session.selection == ("features.3.weight", None)
    assert session.log_counts is False


def test_round_trip_keeps_everything_and_writes_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    model = tmp_path / "m" / "model.onnx"
    data = tmp_path / "m" / "calib.npz"
    config = (
        QuantConfig()
        .with_default(W, TensorConfig(MethodSpec(Method.ENTROPY), Granularity(), NumberFormat()))
        .with_override("x", TensorConfig(MethodSpec(Method.MANUAL, 99.0, (-1.5, 2.25))))
    )
    session = SessionFile(
        model_path=model, data_path=data, stats_path=None, model_sha256="ab" * 32,
        config=config, selection=("x", A), log_counts=True,
    )
    path = tmp_path / "s.qviz.json"
    save_session(path, session)
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["file"] == "qviz-session"
    assert doc["files"]["model"] == "m/model.onnx"
    back = load_session(path)
    assert back == session


def test_current_version_written_then_read_is_identity(tmp_path: Path) -> None:
    session = SessionFile(model_path=tmp_path / "a.onnx")
    doc = session_document(session, tmp_path)
    assert doc["selection"] is None and doc["files"]["data"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema_version": 99, "files": {}}', "reads up to"),
        ('{"files": {}}', "no schema_version"),
        ("not json", "invalid JSON"),
        ('{"schema_version": "1"}', "must be an integer"),
        ('{"schema_version": 1}', "damaged"),
        ('{"schema_version": 2, "file": "qviz-config", "files": {}, "config": {}}', "not a qviz"),
    ],
)
def test_bad_session_files_give_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.qviz.json"
    path.write_text(text)
    with pytest.raises(QvizError, match=message):
        load_session(path)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.qviz.json"
    save_session(path, SessionFile(model_path=tmp_path / "a.onnx"))
    before = path.read_text()

    def broken_dump(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(QvizError, match="no space left on the device; the previous file is"):
        save_session(path, SessionFile(model_path=tmp_path / "b.onnx"))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.qviz.json"]  # no temp file left


def test_classify_path(tmp_path: Path) -> None:
    demo = demo_paths()
    assert classify_path(demo.model) is PathKind.MODEL
    assert classify_path(demo.data) is PathKind.DATA
    assert classify_path(tmp_path) is PathKind.DATA
    assert classify_path(DATA / "session_v1.qviz.json") is PathKind.SESSION
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(QvizError, match="not a file qviz opens"):
        classify_path(odd)


# --- weighted SQNR ------------------------------------------------------------------------------


def test_weighted_sqnr_is_a_power_mean() -> None:
    # Noise-to-signal 0.1 and 0.001, equal weights: mean 0.0505 -> 12.97 dB, far from the
    # 20 dB a dB-average would claim.
    assert weighted_sqnr_db([(10.0, 1.0), (30.0, 1.0)]) == pytest.approx(
        -10 * math.log10(0.0505)
    )
    # Weights matter: a big clean tensor dilutes a small noisy one.
    assert weighted_sqnr_db([(10.0, 1.0), (30.0, 99.0)]) == pytest.approx(
        -10 * math.log10((0.1 + 99 * 0.001) / 100)
    )
    assert weighted_sqnr_db([(math.inf, 5.0)]) == math.inf
    assert weighted_sqnr_db([(math.nan, 5.0), (20.0, 1.0)]) == pytest.approx(20.0)
    assert math.isnan(weighted_sqnr_db([]))


# --- the document -------------------------------------------------------------------------------


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


def test_document_lists_every_tensor_and_selects_the_first(doc: Document) -> None:
    kinds = [k for _, k in (t.key for t in doc.tensors)]
    assert kinds.count(W) == 6 and kinds.count(A) == 6
    assert doc.selection == doc.tensors[0].key
    assert doc.shape(("features.0.weight", W)) == (16, 1, 3, 3)
    assert doc.element_count(("features.0.weight", W)) == 144
    assert doc.element_count(("input", A)) == 28 * 28


def test_analyze_matches_the_core_and_is_cached(
    doc: Document, demo_model_and_stats: tuple[LoadedModel, CalibrationStats]
) -> None:
    model, stats = demo_model_and_stats
    key = ("relu_1", A)
    result = doc.analyze(key)
    assert result is not None and doc.result(key) is result
    expected = analyze_tensor(model, stats, doc.tensor(key), doc.config_for(key))
    assert result.metrics.sqnr_db == expected.metrics.sqnr_db


def test_apply_scopes(doc: Document) -> None:
    int4 = TensorConfig(MethodSpec(Method.MSE), Granularity(), NumberFormat.parse("int4"))
    key = ("features.3.weight", W)
    doc.analyze(key)
    assert doc.apply(key, int4, ApplyScope.TENSOR) == [key]
    assert doc.result(key) is None  # invalidated
    assert doc.config_for(key) == int4

    changed = doc.apply(key, int4, ApplyScope.OP_TYPE)
    conv_weights = {(t.layer.weight, W) for t in doc.tensors if t.layer.op_type == "Conv"}
    assert set(changed) == conv_weights - {key}  # key had it already
    assert doc.config_for(("classifier.0.weight", W)) == doc.config.weights

    changed = doc.apply(key, int4, ApplyScope.ALL)
    assert set(changed) == {("classifier.0.weight", W), ("classifier.2.weight", W)}
    assert doc.config.weights == int4 and not doc.config.overrides  # default, no overrides
    assert doc.config_for(("input", A)) == doc.config.activations  # other kind untouched


def test_store_drops_results_for_superseded_settings(doc: Document) -> None:
    key = ("relu", A)
    [job] = doc.analyze_jobs([key])
    assert doc.model is not None
    outcomes = [o for batch in analyze_in_batches(doc.model, doc.stats, [job]) for o in batch]
    doc.apply(key, TensorConfig(MethodSpec(Method.MINMAX)), ApplyScope.TENSOR)
    assert doc.store(*outcomes[0]) is False  # computed for the old settings
    assert doc.result(key) is None


def test_manual_range_makes_a_weight_per_tensor(doc: Document) -> None:
    key = ("features.6.weight", W)
    assert doc.config_for(key).granularity.kind is GranularityKind.PER_CHANNEL
    doc.set_manual_range(key, -0.25, 0.25)
    cfg = doc.config_for(key)
    assert cfg.spec == MethodSpec(Method.MANUAL, cfg.spec.percentile, (-0.25, 0.25))
    assert cfg.granularity.kind is GranularityKind.PER_TENSOR
    result = doc.analyze(key)
    assert result is not None
    assert float(np.max(result.metrics.hi)) == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(QvizError):
        doc.set_manual_range(key, 1.0, 1.0)


def test_errors_are_kept_per_tensor(doc: Document) -> None:
    key = ("relu_2", A)
    nf4 = TensorConfig(fmt=NumberFormat.parse("nf4"))
    doc.apply(key, nf4, ApplyScope.TENSOR)
    assert doc.analyze(key) is None
    assert "NF4" in (doc.error(key) or "")


def test_summary_and_method_ranges(doc: Document) -> None:
    for t in doc.tensors:
        doc.analyze(t.key)
    summary = doc.summary()
    assert summary.n_tensors == summary.n_analyzed == 12
    assert len(summary.worst) == 3
    assert summary.worst[0][1] <= summary.worst[1][1] <= summary.worst[2][1]
    assert math.isfinite(summary.weighted_sqnr_db)
    ranges = doc.method_ranges(("relu", A))
    assert {m for _, m in ranges} == {
        Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE,
    }
    _lo, hi = ranges[("relu", Method.MINMAX)]
    assert hi == pytest.approx(doc.stats.tensors["relu"].max)  # type: ignore[union-attr]
    assert doc.method_ranges(("features.0.weight", W))  # weights get markers too


def test_stats_from_another_model_are_refused(
    doc: Document, demo_model_and_stats: tuple[LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    _, stats = demo_model_and_stats

    with pytest.raises(QvizError, match="different model"):
        doc.set_stats(replace(stats, model_sha256="0" * 64))
    save_stats(stats, tmp_path / "s.qvstats")
    assert classify_path(tmp_path / "s.qvstats") is PathKind.STATS


def test_session_from_document_and_back(doc: Document, tmp_path: Path) -> None:
    doc.apply(("relu", A), TensorConfig(MethodSpec(Method.MSE)), ApplyScope.TENSOR)
    doc.selection = ("relu", A)
    doc.data_path = demo_paths().data
    path = tmp_path / "s.qviz.json"
    save_session(path, doc.to_session())
    fresh = Document()
    assert doc.model is not None
    fresh.set_model(doc.model)
    session = load_session(path)
    fresh.adopt_session(session)
    assert fresh.config == doc.config
    assert fresh.selection == ("relu", A)
    assert session.model_sha256 == doc.model.sha256
