"""The headless CLI on the demo: collect then report, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qviz.cli import main
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.demo import demo_paths
from qviz.core.model.loading import load_model
from qviz.core.quant.formats import NumberFormat, PerAxis, PerTensor
from qviz.core.stats.stats_file import load_stats


def test_collect_writes_stats_for_every_activation(demo_stats: Path) -> None:
    stats = load_stats(demo_stats)
    model = load_model(demo_paths().model)
    expected = {a for layer in model.layers for a in layer.activations}
    assert set(stats.tensors) == expected
    assert stats.n_samples == 2000
    assert not stats.data_is_random


def test_report_json_matches_core(demo_stats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["report", str(demo_stats), "--method", "percentile", "--percentile", "99.9",
            "--granularity", "per-channel", "--bits", "8", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    keys = {"name", "layer", "kind", "range", "scale", "zero_point", "step", "clipped_fraction",
            "mse", "sqnr_db", "max_abs_error", "cosine"}
    assert doc["tensors"] and all(keys <= set(t) for t in doc["tensors"])
    # The CLI must print exactly what the core computes for the same settings.
    model = load_model(demo_paths().model)
    cfg = QuantConfig(
        weights=TensorConfig(MethodSpec(Method.MINMAX),
                             PerAxis(), NumberFormat()),
        activations=TensorConfig(MethodSpec(Method.PERCENTILE, 99.9), PerTensor(),
                                 NumberFormat(signed=False, symmetric=False)),
    )
    results = analyze(model, load_stats(demo_stats), cfg)
    assert [t["name"] for t in doc["tensors"]] == [r.name for r in results]
    for row, r in zip(doc["tensors"], results, strict=True):
        assert row["sqnr_db"] == pytest.approx(r.metrics.sqnr_db)
        np.testing.assert_allclose(np.ravel(row["scale"]), np.ravel(r.metrics.scale))
        if row["kind"] == "weight":
            assert isinstance(row["scale"], list) and len(row["scale"]) > 1


def test_report_table(demo_stats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(demo_stats), "--method", "mse", "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "SQNR dB" in out and "weight" in out and "activation" in out


@pytest.mark.parametrize(
    "args",
    [
        ["report", "STATS", "--method", "bogus"],
        ["report", "STATS", "--bits", "9"],
        ["report", "STATS", "--percentile", "120", "--method", "percentile"],
        ["report", "STATS", "--number-format", "int", "--bits", "1"],
        ["report", "/nonexistent.qvstats"],
        ["report", "STATS", "--no-such-option"],
    ],
)
def test_bad_report_options_exit_2(
    demo_stats: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(demo_stats) if a == "STATS" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        code = main(args)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qviz: error:") or "error:" in err
    assert "Traceback" not in err


def _bad_model_files(tmp: Path) -> dict[str, Path]:
    good = demo_paths().model.read_bytes()
    files = {
        "missing": tmp / "missing.onnx",
        "truncated": tmp / "truncated.onnx",
        "random": tmp / "random.onnx",
        "unsupported": tmp / "model.tflite",
    }
    files["truncated"].write_bytes(good[: len(good) // 3])
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["unsupported"].write_bytes(b"TFL3")
    return files


@pytest.mark.parametrize("case", ["missing", "truncated", "random", "unsupported"])
def test_bad_model_exit_2_and_no_output(tmp_path: Path, case: str) -> None:
    model = _bad_model_files(tmp_path)[case]
    out = tmp_path / "out.qvstats"
    proc = subprocess.run(
        [sys.executable, "-m", "qviz", "collect", str(model), "--data",
         str(demo_paths().data), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qviz: error:"), proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.qvstats.*"))


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_bad_data_exit_2_and_no_output(tmp_path: Path) -> None:
    x = np.load(demo_paths().data)["input"][:8]
    nan = x.copy()
    nan[3, 0, 5, 5] = np.nan
    cases = {
        "wrong_name": _write_npz(tmp_path / "a.npz", images=x, other=x),
        "wrong_shape": _write_npz(tmp_path / "b.npz", input=x[:, :, :20, :20]),
        "wrong_dtype": _write_npz(tmp_path / "c.npz", input=np.array([["a"] * 4] * 2)),
        "nan": _write_npz(tmp_path / "d.npz", input=nan),
        "empty": _write_npz(tmp_path / "e.npz", input=x[:0]),
    }
    for case, data in cases.items():
        out = tmp_path / f"{case}.qvstats"
        proc = subprocess.run(
            [sys.executable, "-m", "qviz", "collect", str(demo_paths().model), "--data",
             str(data), "-o", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 2, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qviz: error:"), (case, proc.stderr)
        assert not out.exists(), case


def test_random_data_is_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.qvstats"
    assert main(["collect", str(demo_paths().model), "--random", "16", "-o", str(out)]) == 0
    stats = load_stats(out)
    assert stats.data_is_random and "RANDOM" in stats.data_description
    assert main(["report", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data"]["random"] is True and "RANDOM" in doc["data"]["description"]
