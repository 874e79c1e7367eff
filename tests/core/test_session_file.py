"""The session file (versions, migrations, atomic writes) and the Qt-free Document."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.demo import demo_paths
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
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import (
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)

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
        MethodSpec(Method.MINMAX), PerAxis(), NumberFormat()
    )
    assert cfg.activations.spec == MethodSpec(Method.PERCENTILE, 99.9)
    assert cfg.activations.fmt == NumberFormat.parse("uint8", symmetric=False)
    w3 = cfg.overrides["features.3.weight"]
    assert w3.spec.method is Method.MSE
    assert w3.granularity == PerGroup(8)
    assert w3.fmt == NumberFormat.parse("int4")
    relu1 = cfg.overrides["relu_1"]
    assert relu1.spec == MethodSpec(Method.MANUAL, manual_range=(0.0, 3.5))
    assert session.selection == ("features.3.weight", None)
    assert session.log_counts is False


def test_golden_v2_session_loads_and_migrates() -> None:
    session = load_session(DATA / "session_v2.qviz.json")
    demo = demo_paths()
    assert session.schema_version == 2
    assert session.model_path == demo.model.resolve()
    assert session.data_path == demo.data.resolve()
    assert session.eval_data_path is None and session.criteria is None  # v2 had neither
    assert session.config.overrides["features.3.weight"].granularity == PerGroup(8)
    assert session.selection == ("features.3.weight", W)
    assert session.log_counts is True


def test_round_trip_keeps_everything_and_writes_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    model = tmp_path / "m" / "model.onnx"
    data = tmp_path / "m" / "calib.npz"
    config = (
        QuantConfig()
        .with_default(W, TensorConfig(MethodSpec(Method.ENTROPY), PerTensor(), NumberFormat()))
        .with_override("x", TensorConfig(MethodSpec(Method.MANUAL, manual_range=(-1.5, 2.25))))
    )
    session = SessionFile(
        model_path=model, data_path=data, stats_path=None, model_sha256="ab" * 32,
        config=config, selection=("x", A), log_counts=True,
        eval_data_path=tmp_path / "m" / "eval.npz", criteria="accuracy_drop<=0.5; cosine>=0.99",
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
