"""`qviz export --slow-layers {float,quantize}`: by default a layer whose integer kernel is
measured slower than float here is exported float, with one line on stderr; `quantize` keeps
every layer integer; a layer set per layer in a config file stays as set."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from qviz.cli import main
from qviz.core.demo import DEMO_DIR, demo_paths

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)
LAYERS = ("features.0", "features.3", "features.6", "features.9", "classifier.0",
          "classifier.2")



def float_weights(path: Path) -> set[str]:
    """Layers whose weight the written model keeps as the float initializer."""
    names = {i.name for i in onnx.load(path).graph.initializer}
    return {layer for layer in LAYERS if f"{layer}.weight" in names}


def export(source: Path, out: Path, *extra: str) -> None:
    assert main(["export", str(source), "--file-format", "qdq", "-o", str(out), "--threads",
                 "1", "--data", str(demo_paths().data), *extra]) == 0


def left_float(err: str) -> set[str]:
    return {line.split()[1] for line in err.splitlines() if " left float: " in line}


def test_slow_layers_float_by_default_and_quantize_keeps_them(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export(demo_stats, tmp_path / "default.onnx")
    err = capsys.readouterr().err
    floated = left_float(err)
    # What the measurement found slow is what the file keeps float, and said once each.
    assert float_weights(tmp_path / "default.onnx") == floated
    for line in err.splitlines():
        if " left float: " in line:
            assert " ms vs " in line and "more to store" in line
            assert "--slow-layers quantize" in line
    export(demo_stats, tmp_path / "all.onnx", "--slow-layers", "quantize")
    assert not left_float(capsys.readouterr().err)
    assert float_weights(tmp_path / "all.onnx") == set()


def test_a_layer_set_explicitly_stays_quantized(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    assert main(["export", str(demo_stats), "--file-format", "config", "-o", str(config)]) == 0
    doc = json.loads(config.read_text())
    # Every tensor given its own entry: each layer's precision is then set explicitly.
    for t in doc["tensors"]:
        doc["overrides"][t["name"]] = doc["defaults"]["weights" if t["kind"] == "weight"
                                                      else "activations"]
    config.write_text(json.dumps(doc))
    capsys.readouterr()
    export(config, tmp_path / "explicit.onnx")
    assert not left_float(capsys.readouterr().err)
    assert float_weights(tmp_path / "explicit.onnx") == set()


def test_the_choice_is_checked(demo_stats: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(demo_stats), "--file-format", "qdq", "-o",
                 str(tmp_path / "x.onnx"), "--slow-layers", "sometimes"]) == 2
    assert not (tmp_path / "x.onnx").exists()
