"""qviz's config file: bit-exact round trip, a golden v1 file, migrations, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import random_data
from qviz.core.errors import QvizError
from qviz.core.files import config_file as config_file
from qviz.core.files.config_file import (
    SCHEMA_VERSION,
    config_document,
    float32_from_hex,
    float32_hex,
    load_config,
    results_from_saved,
    save_config,
)
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import (
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.stats.collect import collect_stats, run_to_completion

try:  # works whether or not tests/ is a package
    from tests.core import model_factory
except ImportError:
    import model_factory  # type: ignore[no-redef]

GOLDEN_V1 = Path(__file__).resolve().parents[1] / "data" / "config_v1.json"


def mixed_config() -> QuantConfig:
    """Every kind of choice the file must carry: formats, symmetry, granularities, methods."""
    return QuantConfig(
        weights=TensorConfig(
            MethodSpec(Method.MINMAX), PerAxis(), NumberFormat()
        ),
        activations=TensorConfig(
            MethodSpec(Method.PERCENTILE, percentile=99.9),
            PerTensor(),
            NumberFormat.parse("uint8", symmetric=False),
        ),
        overrides={
            "conv2.weight": TensorConfig(
                MethodSpec(Method.MSE),
                PerGroup(4),
                NumberFormat.parse("int4"),
            ),
            "fc.weight": TensorConfig(
                MethodSpec(Method.MINMAX), PerTensor(), NumberFormat.parse("fp8_e4m3fn")
            ),
            "flat": TensorConfig(
                MethodSpec(Method.MANUAL, manual_range=(-0.25, 1.0 / 3.0)),
                PerTensor(),
                NumberFormat.parse("int8", pow2_scale=True),
            ),
            "r1": TensorConfig(MethodSpec(Method.ENTROPY), quantize=False),
        },
    )


def build_conv_net(tmp: Path) -> tuple[LoadedModel, list[TensorResult], QuantConfig]:
    path = model_factory.save(model_factory.make_conv_net(), tmp / "conv_net.onnx")
    model = load_model(path)
    stats = run_to_completion(collect_stats(model, random_data(model.inputs, 24)))
    config = mixed_config()
    return model, analyze(model, stats, config), config


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory: pytest.TempPathFactory):
    return build_conv_net(tmp_path_factory.mktemp("config_file"))


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def assert_same_qparams(a: TensorResult, b: TensorResult) -> None:
    assert (a.name, a.kind) == (b.name, b.kind)
    assert a.qparams.scale.dtype == b.qparams.scale.dtype == np.float32
    assert a.qparams.scale.shape == b.qparams.scale.shape
    assert bits(a.qparams.scale) == bits(b.qparams.scale)
    assert a.qparams.zero_point.dtype == b.qparams.zero_point.dtype
    assert bits(a.qparams.zero_point) == bits(b.qparams.zero_point)
    assert (a.qparams.axis, a.qparams.block_size) == (b.qparams.axis, b.qparams.block_size)


def test_round_trip_is_bit_exact(conv_net, tmp_path: Path) -> None:
    model, results, config = conv_net
    path = tmp_path / "cfg.json"
    save_config(path, model, config, results)
    saved = load_config(path)

    assert saved.schema_version == SCHEMA_VERSION
    assert saved.quant_config == config
    assert (saved.model_sha256, saved.model_source) == (model.sha256, str(model.source))
    restored = results_from_saved(model, saved)
    assert len(restored) == len(results)
    for a, b in zip(results, restored, strict=True):
        assert_same_qparams(a, b)
        assert a.config == b.config
        assert a.layer == b.layer
        assert a.metrics.sqnr_db == b.metrics.sqnr_db
        assert bits(np.asarray(a.metrics.lo)) == bits(np.asarray(b.metrics.lo))
    # The mix really exercised what it was meant to.
    by_name = {r.name: r for r in restored}
    assert "r1" not in by_name  # kept float
    assert by_name["conv2.weight"].qparams.block_size == 4
    assert by_name["fc.weight"].qparams.zero_point.dtype.name == "float8_e4m3fn"
    assert by_name["x"].qparams.zero_point.dtype == np.uint8
    flat_scale = float(by_name["flat"].qparams.scale)
    assert flat_scale == 2.0 ** np.round(np.log2(flat_scale))  # pow2 scale survived


def test_saving_twice_gives_identical_bytes(conv_net, tmp_path: Path) -> None:
    model, results, config = conv_net
    save_config(tmp_path / "a.json", model, config, results)
    saved = load_config(tmp_path / "a.json")
    save_config(tmp_path / "b.json", model, saved.quant_config, results_from_saved(model, saved))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_file_is_readable_json_with_decimals_and_hex(conv_net) -> None:
    model, results, config = conv_net
    doc = config_document(model, config, results)
    assert doc["schema_version"] == 1 and doc["file"] == "qviz-config"
    assert set(doc["defaults"]) == {"weights", "activations"}
    assert doc["overrides"]["r1"]["quantize"] is False
    entry = next(t for t in doc["tensors"] if t["name"] == "conv1.weight")
    assert entry["granularity"] == "per-channel" and entry["axis"] == 0
    for dec, hx in zip(entry["scale"], entry["scale_hex"], strict=True):
        assert float32_from_hex(hx) == np.float32(dec)
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN/Infinity literals


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_float32_hex_round_trips_every_bit_pattern(pattern: int) -> None:
    value = np.array(pattern, dtype=np.uint32).view(np.float32)
    text = float32_hex(value)
    assert len(text) == 8 and int(text, 16) == pattern
    assert bits(np.asarray(float32_from_hex(text))) == bits(value)


def test_golden_v1_file_loads() -> None:
    saved = load_config(GOLDEN_V1)
    assert saved.schema_version == 1
    assert saved.quant_config == mixed_config()
    names = [t.name for t in saved.tensors]
    assert names == ["x", "conv1.weight", "conv2.weight", "flat", "fc.weight"]
    doc = json.loads(GOLDEN_V1.read_text())
    for entry, tensor in zip(doc["tensors"], saved.tensors, strict=True):
        assert tensor.kind is TensorKind(entry["kind"])
        expected = [float32_from_hex(h) for h in entry["scale_hex"]]
        assert bits(tensor.qparams.scale.reshape(-1)) == bits(np.array(expected, np.float32))
        np.testing.assert_array_equal(
            tensor.qparams.zero_point.astype(np.float64).reshape(-1), entry["zero_point"]
        )
    assert saved.tensor("conv2.weight").qparams.block_size == 4


def test_golden_v1_rebuilds_results_for_its_model(tmp_path: Path) -> None:
    """The golden file was written for model_factory.make_conv_net(); while that model
    serializes to the same bytes, the saved scales are applied to it unchanged."""
    model = load_model(model_factory.save(model_factory.make_conv_net(), tmp_path / "m.onnx"))
    saved = load_config(GOLDEN_V1)
    if saved.model_sha256 != model.sha256:
        pytest.skip("make_conv_net() now serializes differently from when the file was made")
    results = results_from_saved(model, saved)
    assert [r.name for r in results] == [t.name for t in saved.tensors]


def test_future_version_is_refused(tmp_path: Path) -> None:
    doc = json.loads(GOLDEN_V1.read_text())
    doc["schema_version"] = 7
    path = tmp_path / "future.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(QvizError, match="config file is schema_version 7; this qviz reads up to 1"):
        load_config(path)


def test_migrations_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A v1 file goes through MIGRATIONS[1] when qviz reads v2 (the hook future versions use)."""
    calls: list[int] = []

    def v1_to_v2(doc: dict) -> dict:
        calls.append(doc["schema_version"])
        return {**doc, "schema_version": 2}

    monkeypatch.setattr(config_file, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(config_file.MIGRATIONS, 1, v1_to_v2)
    saved = load_config(GOLDEN_V1)
    assert calls == [1]
    assert saved.schema_version == 1  # as it was on disk
    assert len(saved.tensors) == 5


def test_hand_edit_of_one_scale_form_is_caught(tmp_path: Path) -> None:
    doc = json.loads(GOLDEN_V1.read_text())
    doc["tensors"][0]["scale"][0] *= 1.5
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(QvizError, match="edit both or neither"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "no schema_version"),
        ('{"schema_version": "one"}', "must be an integer"),
        ('{"schema_version": 0}', "schema_version 0 is not supported"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(QvizError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_string_booleans_are_refused(tmp_path: Path) -> None:
    doc = json.loads(GOLDEN_V1.read_text())
    doc["defaults"]["weights"]["symmetric"] = "false"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(QvizError, match="'symmetric' must be true or false"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match="no such file"):
        load_config(tmp_path / "absent.json")


def test_config_for_another_model_is_refused(conv_net, tmp_path: Path) -> None:
    model, results, config = conv_net
    save_config(tmp_path / "cfg.json", model, config, results)
    other = load_model(model_factory.save(model_factory.make_mlp(), tmp_path / "mlp.onnx"))
    with pytest.raises(QvizError, match="different model file"):
        results_from_saved(other, load_config(tmp_path / "cfg.json"))


def test_failed_save_leaves_the_old_file(conv_net, tmp_path: Path) -> None:
    model, results, config = conv_net
    path = tmp_path / "cfg.json"
    shutil.copy(GOLDEN_V1, path)
    before = path.read_bytes()
    broken = [*results, "not a result"]
    with pytest.raises(AttributeError):
        save_config(path, model, config, broken)  # type: ignore[list-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]


def write_golden(path: Path = GOLDEN_V1) -> None:
    """How tests/data/config_v1.json was made (run once, by hand; never regenerate a golden
    file to make a test pass: an old file that stops loading is the bug)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model, results, config = build_conv_net(Path(tmp))
        save_config(path, model, config, results)
    # The temporary folder means nothing to a reader; say where the model comes from.
    doc = json.loads(path.read_text())
    doc["model"]["source"] = "conv_net.onnx (tests/core/model_factory.make_conv_net())"
    path.write_text(json.dumps(doc, indent=1) + "\n")
