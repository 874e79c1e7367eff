"""`qviz export`: every format from a stats file and from a config file; bad input gives one
line on stderr, exit code 2 and no output file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

from qviz.cli import main
from qviz.core.files.config_file import load_config
from qviz.core.files.export import load_ort_overrides, read_trt_cache

try:  # works whether or not tests/ is a package
    from tests.core import model_factory
except ImportError:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    import model_factory  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model, its stats (random data, so it is fast), an .npz of data, a config file."""
    tmp = tmp_path_factory.mktemp("cli_export")
    model = model_factory.save(model_factory.make_conv_net(), tmp / "conv_net.onnx")
    stats = tmp / "conv_net.qvstats"
    assert main(["collect", str(model), "--random", "16", "-o", str(stats), "--quiet"]) == 0
    config = tmp / "conv_net.json"
    assert main(["export", str(stats), "--file-format", "config", "-o", str(config),
                 "--method", "percentile", "--asymmetric", "--number-format", "uint"]) == 0
    return {"model": model, "stats": stats, "config": config}


@pytest.mark.parametrize("source", ["stats", "config"])
@pytest.mark.parametrize("fmt", ["qdq", "config", "ort-overrides", "trt-cache"])
def test_every_format_from_stats_and_from_config(
    files: dict[str, Path], tmp_path: Path, source: str, fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / f"out.{fmt}"
    assert main(["export", str(files[source]), "--file-format", fmt, "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    if fmt == "qdq":
        onnx.checker.check_model(onnx.load(out))
    elif fmt == "config":
        assert load_config(out).tensors
    elif fmt == "ort-overrides":
        assert "x" in load_ort_overrides(out)
    else:
        header, scales = read_trt_cache(out)
        assert header.startswith("TRT-8601-") and "x" in scales


def test_config_file_exports_exactly_its_saved_scales(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """The Q/DQ model from the config file is byte-identical to the one from the stats file
    with the settings the config was made with."""
    from_config = tmp_path / "from_config.onnx"
    from_stats = tmp_path / "from_stats.onnx"
    # Every layer quantized: which layers are slower than float here is a measurement.
    assert main(["export", str(files["config"]), "--file-format", "qdq",
                 "-o", str(from_config), "--slow-layers", "quantize"]) == 0
    assert main(["export", str(files["stats"]), "--file-format", "qdq", "-o", str(from_stats),
                 "--method", "percentile", "--asymmetric", "--number-format", "uint",
                 "--slow-layers", "quantize"]) == 0
    assert from_config.read_bytes() == from_stats.read_bytes()
    # Re-saving a config file reproduces it byte for byte.
    again = tmp_path / "again.json"
    assert main(["export", str(files["config"]), "--file-format", "config", "-o", str(again)]) == 0
    assert again.read_bytes() == files["config"].read_bytes()


def test_report_with_measured_effect(files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    args = ["export", str(files["config"]), "--file-format", "report", "-o", str(out),
            "--random", "16", "--criterion", "cosine>=0.5", "--quiet"]
    assert main(args) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "report.depth.svg", "report.html", "report.json", "report.sqnr.svg"]
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["verdict"] == "PASS" and doc["evaluation"]["samples"] == 16


def test_report_without_data_goes_to_a_folder(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["export", str(files["stats"]), "--file-format", "report", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html", "report.json", "report.md", "sqnr.svg"]


BAD = [
    (["{missing}", "--file-format", "qdq"], "no such file"),
    (["{model}", "--file-format", "qdq"], "neither a qviz stats file nor a qviz config file"),
    (["{stats}", "--file-format", "pdf"], "invalid choice"),
    (["{config}", "--file-format", "qdq", "--bits", "4"], "--bits only apply to a stats file"),
    # (A Q/DQ model's speed check takes --data/--random; a config file has no use for them.)
    (["{stats}", "--file-format", "config", "--random", "4"], "only apply to --file-format report"),
    (["{stats}", "--file-format", "report", "--criterion", "sqnr>=3"], "--criterion needs --data"),
    (["{stats}", "--file-format", "ort-overrides", "--bits", "6"], "cannot express"),
    (["{stats}", "--file-format", "trt-cache", "--trt-version", "8.6"], "must be digits"),
    (["{future}", "--file-format", "qdq"], "schema_version 7; this qviz reads up to 2"),
    (["{stats}", "--file-format", "qdq", "--model", "{missing}"], "--model .*: no such file"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m.split()[0] + str(i)
                                                        for i, (_, m) in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_and_no_file(
    files: dict[str, Path], tmp_path: Path, argv: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    future = tmp_path / "future.json"
    doc = json.loads(files["config"].read_text())
    future.write_text(json.dumps({**doc, "schema_version": 7}))
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "absent.bin"),
             "future": str(future)}
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir()
    if "report" in argv:
        out = out.with_suffix(".html")
    args = ["export", *(a.format(**names) for a in argv), "-o", str(out)]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors exit from inside the parser
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("qviz: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert list(out.parent.iterdir()) == []
