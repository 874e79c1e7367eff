"""`qviz mixed --objective fastest` on the demo: the config it writes meets the criterion,
the table shows predicted times and the answer's timings, JSON carries the per-layer times;
speed options without the speed objective are refused (one line, exit 2, no file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qviz.cli import main
from qviz.core.demo import DEMO_DIR, demo_paths
from qviz.core.files.config_file import load_config

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)



def args(stats: Path, out: Path, *extra: str) -> list[str]:
    demo = demo_paths()
    return ["mixed", str(demo.model), "--data", str(demo.data), "--stats", str(stats),
            "--method", "mse", "--criterion", "accuracy_drop<=1", "--limit", "200",
            "--confirm-limit", "400", "-o", str(out), "--quiet", *extra]  # fmt: skip


def test_fastest_writes_a_config_that_meets_the_criterion(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fast.json"
    assert main(args(demo_stats, out, "--objective", "fastest", "--speed-batch", "1,8",
                     "--threads", "1", "--allow", "int8,float")) == 0
    text = capsys.readouterr().out
    assert "objective: fastest" in text and "predicted ms" in text
    assert load_config(out).tensors
    # Its accuracy runs on worker processes (the timings stay here): the same search.
    assert main(args(demo_stats, tmp_path / "again.json", "--objective", "fastest",
                     "--speed-batch", "1", "--threads", "1", "--allow", "int8,float",
                     "--workers", "2", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["objective"] == "fastest" and doc["passed"]
    assert doc["speed"]["batch_size"] == 1 and doc["speed"]["threads"] == 1
    assert {x["name"] for x in doc["speed"]["layers"]} == {x["name"] for x in doc["layers"]}
    assert all(p["predicted_ms"] is not None for p in doc["points"])
    if doc["changed"] != [x["name"] for x in doc["layers"]]:  # not float itself
        assert [t["batch_size"] for t in doc["timings"]] == [1]


def test_speed_options_need_the_speed_objective(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad.json"
    for extra in (["--speed-batch", "4"], ["--threads", "2"],
                  ["--objective", "fastest", "--speed-batch", "0"],
                  ["--objective", "fastest", "--speed-batch", "a,b"]):
        assert main(args(demo_stats, out, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("qviz: error: ") and not out.exists()
