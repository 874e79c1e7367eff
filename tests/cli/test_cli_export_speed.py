"""`qviz export --file-format qdq` times the exported model against float and says, in one line,
when it is slower: on the demo with int4 weights (no integer kernel on CPU: every weight is
dequantized on every run), the warning names a layer and why; the file is written anyway."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from qviz.cli import main
from qviz.core.demo import DEMO_DIR, demo_paths

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)



def test_a_slower_export_is_announced_and_still_written(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int4.onnx"
    code = main(["export", str(demo_stats), "--file-format", "qdq", "-o", str(out), "--bits", "4",
                 "--method", "minmax", "--speed-batch", "4", "--threads", "1",
                 "--data", str(demo_paths().data)])
    assert code == 0
    onnx.checker.check_model(onnx.load(out))
    lines = capsys.readouterr().out.splitlines()
    speed = [x for x in lines if x.startswith("speed: ")]
    warning = [x for x in lines if x.startswith("warning: ")]
    assert len(speed) == 1 and "at batch 4 (1 thread)" in speed[0]
    assert "on random input" not in speed[0]
    assert len(warning) == 1
    assert warning[0].startswith("warning: SLOWER than float: the exported model runs 0.")
    assert "loses the most: ORT left it in float (weights in int4" in warning[0]
    assert lines[-1].startswith(f"wrote {out}")


def test_the_check_can_be_skipped_and_is_refused_elsewhere(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8.onnx"
    assert main(["export", str(demo_stats), "--file-format", "qdq", "-o", str(out),
                 "--no-speed-check"]) == 0
    assert "speed:" not in capsys.readouterr().out and out.is_file()
    for extra in (["--speed-batch", "0"], ["--threads", "-1"]):
        bad = tmp_path / "bad.onnx"
        args = ["export", str(demo_stats), "--file-format", "qdq", "-o", str(bad), *extra]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and not bad.exists()
    cfg = tmp_path / "c.json"
    assert main(["export", str(demo_stats), "--file-format", "config", "-o", str(cfg),
                 "--threads", "2"]) == 2
    assert "only apply to --file-format qdq" in capsys.readouterr().err and not cfg.exists()


def test_report_and_evaluate_json_carry_the_speed_per_layer(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    demo = demo_paths()
    page = tmp_path / "report.md"
    assert main(["export", str(demo_stats), "--file-format", "report", "-o", str(page), "--data",
                 str(demo.data), "--limit", "64", "--batch-size", "2", "--native", "--threads",
                 "1", "--quiet"]) == 0
    capsys.readouterr()
    doc = json.loads(page.with_suffix(".json").read_text())
    speed = doc["evaluation"]["speed"]
    names = [row["layer"] for row in speed["layers"]]
    assert speed["batch_size"] == 2 and speed["threads"] == 1 and names
    text = page.read_text()
    section = text[text.index("## Speed per layer"):]
    assert all(f"| {name} |" in section for name in names)
    assert "Batch 2, 1 thread" in section
    for slow in doc["evaluation"]["slow_layers"]:
        assert f"**{slow['layer']}**" in section and slow["fix"] in section

    assert main(["evaluate", str(demo.model), "--stats", str(demo_stats), "--data",
                 str(demo.data), "--limit", "64", "--batch-size", "1", "--native", "--json",
                 "--quiet"]) == 0
    ev = json.loads(capsys.readouterr().out)
    layers = ev["speed"]["layers"]
    assert [x["layer"] for x in layers] == names
    for x in layers:
        assert x["quantized_ms"] == pytest.approx(x["kernel_ms"] + x["qdq_ms"] + x["layout_ms"])
        assert x["kernel"] and x["float_kernel"]
    assert ev["speed"]["whole_model_ms"]["speedup"] == ev["latency_ms"]["speedup"]
    assert isinstance(ev["slow_layers"], list)
