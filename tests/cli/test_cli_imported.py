"""The CLI on a model quantized by onnxruntime's quantize_static: collect with its float
original, report the imported scales, evaluate it natively as plain ONNX Runtime runs it,
export it unchanged or repaired; bad input is one line and exit status 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qviz.cli import main
from qviz.core.demo import demo_paths
from qviz.core.stats.stats_file import load_stats
from tools.quantized_examples import quantize_demo


@pytest.fixture(scope="module")
def qdq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_demo(tmp_path_factory.mktemp("cli") / "demo_qdq.onnx")


@pytest.fixture(scope="module")
def stats(qdq: Path) -> Path:
    out = qdq.parent / "demo_qdq.qvstats"
    demo = demo_paths()
    code = main(["collect", str(qdq), "--float", str(demo.model), "--data", str(demo.data),
                 "-o", str(out), "--quiet"])
    assert code == 0
    return out


def test_collect_records_the_float_original(stats: Path) -> None:
    loaded = load_stats(stats)
    assert loaded.float_source == str(demo_paths().model)
    # Every tensor ORT quantized that a layer reads, plus the model output it quantized.
    assert {"input", "relu", "relu_3", "view", "logits"} <= set(loaded.tensors)


def test_report_shows_ort_scales_as_imported(
    qdq: Path, stats: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(stats), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in doc["tensors"]}
    model = onnx.load(str(qdq))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        name = n.input[0].removesuffix("_QuantizeLinear_Input")
        row = rows[name]
        assert row["method"] == "imported"
        assert row["scale"] == float(inits[n.input[1]])
        assert row["zero_point"] == int(inits[n.input[2]])
    weight = rows["features.3.weight"]
    assert weight["method"] == "imported"
    np.testing.assert_array_equal(weight["scale"], inits["features.3.weight_scale"])
    assert {r["method"] for r in rows.values()} == {"imported"}
    # Settings given on the command line apply qviz's methods to the same tensors.
    assert main(["report", str(stats), "--method", "mse", "--json"]) == 0
    mine = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert set(mine) == set(rows) and mine["relu"]["method"] == "mse"


def _plain_ort_accuracy(path: Path, batch: int) -> float:
    demo = np.load(demo_paths().data)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = sum(
        int((session.run(None, {"input": demo["input"][i : i + batch]})[0].argmax(1)
             == demo["labels"][i : i + batch]).sum())
        for i in range(0, len(demo["input"]), batch)
    )
    return 100.0 * hits / len(demo["input"])


def test_evaluate_reproduces_plain_onnxruntime(
    qdq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_paths()
    code = main(["evaluate", str(qdq), "--float", str(demo.model), "--data", str(demo.data),
                 "--batch-size", "64", "--no-latency", "--quiet", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "native"
    assert doc["quantized"]["accuracy"] == _plain_ort_accuracy(qdq, 64)
    assert doc["float"]["accuracy"] == _plain_ort_accuracy(demo.model, 64)
    assert doc["float_model"] == str(demo.model)


def test_export_unchanged_is_the_imported_model(qdq: Path, stats: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.onnx"
    assert main(["export", str(stats), "--file-format", "qdq", "-o", str(out)]) == 0
    want = {t.name: t.SerializeToString() for t in onnx.load(str(qdq)).graph.initializer}
    got = {t.name: t.SerializeToString() for t in onnx.load(str(out)).graph.initializer}
    assert got == want


def test_sensitivity_ranks_the_pairs(
    qdq: Path, stats: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_paths()
    code = main(["sensitivity", str(qdq), "--float", str(demo.model),
                 "--stats", str(stats), "--data", str(demo.data), "--limit", "200",
                 "--no-cache", "--quiet", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["ranking"]) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--float", "missing.onnx"], "float original"),
        (["--float", "{model}"], "is not quantized"),
    ],
)
def test_bad_float_original_is_one_line(
    qdq: Path, args: list[str], message: str, tmp_path: Path
) -> None:
    demo = demo_paths()
    target = str(demo.model) if "{model}" in args else str(qdq)
    args = [a.replace("{model}", str(demo.model)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "qviz", "collect", target, *args, "--data", str(demo.data),
         "-o", str(tmp_path / "s.qvstats"), "--quiet"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "s.qvstats").exists()


def test_a_setting_equal_to_its_default_is_still_given() -> None:
    from qviz.cli.options import add_quant_options, settings_given

    parser = argparse.ArgumentParser()
    add_quant_options(parser)
    parser.add_argument("--json", action="store_true")
    assert not settings_given(parser.parse_args([]))
    assert not settings_given(parser.parse_args(["--json"]))
    default = parser.parse_args([]).method
    assert settings_given(parser.parse_args(["--method", default]))
    assert settings_given(parser.parse_args(["--symmetric"]))


def test_export_never_replaces_the_float_original(
    stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    float_copy = tmp_path / "float.onnx"
    float_copy.write_bytes(demo_paths().model.read_bytes())
    before = float_copy.read_bytes()
    code = main(["export", str(stats), "--float", str(float_copy), "--file-format", "qdq",
                 "-o", str(float_copy)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert float_copy.read_bytes() == before
