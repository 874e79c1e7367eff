"""`qviz sensitivity` and `qviz mixed` on the demo: JSON, the cache, the written config that
`qviz evaluate` and `qviz export` accept, exit codes, and bad input (one line, exit 2, no file).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from qviz.cli import main
from qviz.core.demo import DEMO_DIR, demo_paths

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)



@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sensitivity-cache")


def model_data() -> list[str]:
    demo = demo_paths()
    return [str(demo.model), "--data", str(demo.data)]


def mixed_args(stats: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["mixed", *model_data(), "--stats", str(stats), "--method", "minmax",
            "--max-accuracy-drop", "0.5", "--allow", "int4,int8,float", "-o", str(out),
            "--quiet", "--cache-dir", str(cache), *extra]  # fmt: skip


# --------------------------------------------------------------------------- sensitivity


def test_sensitivity_json_and_cache(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sensitivity", *model_data(), "--stats", str(demo_stats), "--method", "minmax",
            "--bits", "4", "--limit", "200", "--json", "--quiet",
            "--cache-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "accuracy" and doc["samples"] == 200 and not doc["cached"]
    assert doc["layers"][0]["name"] == "features.0"  # depth order
    assert sorted(doc["ranking"]) == sorted(x["name"] for x in doc["layers"])
    score = {x["name"]: x["drop"] + x["recovery"] for x in doc["layers"]}
    assert score[doc["ranking"][0]] == max(score.values())
    first = doc["layers"][0]
    assert first["node_name"] == "node_Conv_65" and first["module_path"] == "features.0"
    assert {"drop", "recovery", "weight_sqnr_db", "activation_sqnr_db"} <= set(first)
    assert first["quantized_only"]["mode"] == "native"
    assert len(list(tmp_path.glob("*.json"))) == 1

    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] and again["layers"] == doc["layers"]
    assert [x["rank"] for x in doc["layers"]] == [
        doc["ranking"].index(x["name"]) + 1 for x in doc["layers"]
    ]

    # --sort orders the JSON's layers as it orders the table's rows.
    assert main([*args, "--sort", "score"]) == 0
    by_score = json.loads(capsys.readouterr().out)
    assert by_score["sort"] == "score"
    assert [x["name"] for x in by_score["layers"]] == doc["ranking"]
    assert [x["rank"] for x in by_score["layers"]] == list(range(1, len(doc["ranking"]) + 1))


def test_sensitivity_table_from_a_config_file(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "int4.json"
    assert main(["export", str(demo_stats), "--file-format", "config", "--bits", "4",
                 "-o", str(config)]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["sensitivity", *model_data(), "--config", str(config), "--limit", "100",
            "--metric", "sqnr", "--sort", "score", "--no-cache", "--quiet"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "output SQNR (dB)" in out and "features.0" in out and "node_Conv_65" in out
    assert "rank" in out and "recovery" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "CONFIG", "--bits", "4"], "only apply with --stats"),
        (["--stats", "STATS", "--simulation", "--precise-int8"], "--precise-int8"),
        (["--stats", "STATS", "--random", "8", "--metric", "accuracy"], "needs labels"),
        (["--stats", "STATS", "--limit", "0"], "at least 1"),
    ],
)
def test_sensitivity_bad_input(
    demo_stats: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    config = tmp_path / "c.json"
    config.write_text("{}", encoding="utf-8")
    extra = [str(config) if e == "CONFIG" else str(demo_stats) if e == "STATS" else e
             for e in extra]  # fmt: skip
    model = str(demo_paths().model)
    data = [] if "--random" in extra else ["--data", str(demo_paths().data)]
    # An unreadable --limit is argparse's to refuse (SystemExit 2); the rest return 2.
    try:
        code = main(["sensitivity", model, *data, *extra, "--quiet", "--no-cache"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- mixed


@pytest.fixture(scope="module")
def mixed_run(
    demo_stats: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("mixed") / "mixed.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is function-scoped; this runs once
        code = main(mixed_args(demo_stats, out, cache_dir, "--json"))
    return code, json.loads(buf.getvalue()), out


def test_mixed_writes_a_config_that_meets_the_criterion(mixed_run: tuple[int, dict, Path]) -> None:
    code, doc, out = mixed_run
    assert code == 0 and out.is_file() and doc["written"] == str(out)
    assert doc["passed"] and doc["criterion"] == "accuracy_drop<=0.5"
    assert doc["measured"]["mode"] == "native" and doc["measured"]["samples"] == 2000
    assert doc["measured"]["value"] <= 0.5
    assert doc["size_bytes"]["quantized"] < doc["size_bytes"]["float"]
    changed = [x for x in doc["layers"] if x["changed"]]
    assert changed and all(x["node_name"] and x["module_path"] for x in changed)
    assert {x["precision"] for x in doc["layers"]} <= {"int4", "int8", "float"}
    assert doc["points"][0]["label"] == "all int4" and not doc["points"][0]["passed"]
    assert any(p["pareto"] for p in doc["points"])
    assert doc["points"][doc["chosen_point"]]["passed"]


def test_evaluate_and_export_accept_the_config(
    mixed_run: tuple[int, dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, doc, out = mixed_run
    args = ["evaluate", *model_data(), "--config", str(out), "--native", "--no-latency",
            "--json", "--quiet", "--criterion", "accuracy_drop<=0.5"]  # fmt: skip
    assert main(args) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["quantized"]["accuracy"] == doc["measured"]["quantized"]["accuracy"]
    assert ev["size_bytes"]["quantized"] == doc["size_bytes"]["quantized"]
    qdq = tmp_path / "mixed.onnx"
    assert main(["export", str(out), "--file-format", "qdq", "-o", str(qdq)]) == 0
    assert qdq.is_file()


def test_mixed_table_and_cached_sensitivity(
    demo_stats: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again.json"
    # The module's JSON run filled the cache: the sensitivity pass is not re-run.
    assert main(mixed_args(demo_stats, out, cache_dir, "--confirm-limit", "500")) == 0
    text = capsys.readouterr().out
    assert "sensitivity from the cache" in text
    assert "chosen precision per layer" in text and "node_Conv_65" in text
    assert "PASS: accuracy drop" in text and f"wrote {out}" in text


def test_mixed_fail_writes_nothing(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never.json"
    args = ["mixed", *model_data(), "--stats", str(demo_stats), "--min-output-sqnr", "80",
            "--allow", "int4", "--limit", "64", "--confirm-limit", "64", "-o", str(out),
            "--quiet", "--no-cache"]  # fmt: skip
    assert main(args) == 1
    assert not out.exists()
    assert "no config written (FAIL)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", "4"], "--allow sets"),
        (["--allow", "int9"], "unknown format"),
        (["--allow", "float"], "quantized precision"),
        (["--confirm-limit", "0"], "--confirm-limit"),
        (["--criterion", "speed>=3"], "unknown criterion metric"),
    ],
)
def test_mixed_bad_input(
    demo_stats: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "bad.json"
    crit = [] if "--criterion" in extra else ["--max-accuracy-drop", "0.5"]
    args = ["mixed", *model_data(), "--stats", str(demo_stats), *crit, "-o", str(out),
            "--quiet", "--no-cache", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_mixed_refuses_unlabelled_data_and_missing_files(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad.json"
    model = str(demo_paths().model)
    args = ["mixed", model, "--random", "16", "--stats", str(demo_stats),
            "--max-accuracy-drop", "0.5", "-o", str(out), "--quiet", "--no-cache"]  # fmt: skip
    assert main(args) == 2
    assert "needs labels" in capsys.readouterr().err and not out.exists()
    args = ["mixed", *model_data(), "--stats", str(tmp_path / "none.qvstats"),
            "--max-accuracy-drop", "0.5", "-o", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert "no such file" in capsys.readouterr().err and not out.exists()
    args = ["mixed", *model_data(), "--stats", str(demo_stats), "--max-accuracy-drop", "0.5",
            "-o", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert "is a folder" in capsys.readouterr().err
