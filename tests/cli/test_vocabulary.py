"""One vocabulary across commands: the same option names for the same things, every default in
`--help`, old spellings that still work with one line saying what to write instead."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qviz.cli import COMMANDS, main
from qviz.cli.parser import build_parser
from qviz.core.demo import DEMO_DIR, demo_paths
from qviz.core.runtime.cpu import ENV_VAR

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]


def test_every_default_is_in_the_help() -> None:
    for name, p in subparsers().items():
        text = " ".join(p.format_help().split("options:", 1)[1].split())
        for action in visible(p):
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            if isinstance(action, argparse._HelpAction | argparse._StoreConstAction):
                continue  # flags: on or off, the pair's help says which is the default
            flag = action.option_strings[-1]
            shown = action.default if not isinstance(action.default, bool) else None
            # The option's help line carries the word "default" (and the value, if it has one).
            block = text.split(f"{flag} ", 1)[1][:400]
            assert "default" in block, f"qviz {name} {flag}: default not shown"
            if shown is not None and not isinstance(action, argparse._StoreConstAction):
                assert str(shown) in block or flag == "--limit", f"qviz {name} {flag}: {shown}"


def test_the_same_things_have_the_same_names() -> None:
    parsers = subparsers()
    assert set(parsers) == set(COMMANDS)
    quant = [n for n, p in parsers.items() if any("--bits" in a.option_strings for a in p._actions)]
    assert set(quant) == {"report", "evaluate", "export", "sensitivity", "mixed"}
    for name in quant:
        flags = {f for a in visible(parsers[name]) for f in a.option_strings}
        assert {"--number-format", "--act-number-format", "--method"} <= flags, name
        assert "--format" not in flags and "--act-format" not in flags, name  # hidden spellings
    for name in ("evaluate", "export", "sensitivity", "mixed"):
        flags = {f for a in visible(parsers[name]) for f in a.option_strings}
        assert {"--native", "--simulation", "--precise-int8", "--limit"} <= flags, name
    assert "--file-format" in {f for a in visible(parsers["export"]) for f in a.option_strings}
    method = next(a for a in parsers["report"]._actions if "--method" in a.option_strings)
    assert method.default == "mse"  # the app's default too



def test_old_spellings_work_once_more_and_say_so(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, "0")
    new = ["report", str(demo_stats), "--number-format", "int", "--bits", "6",
           "--act-number-format", "int8", "--json"]  # fmt: skip
    assert main(new) == 0
    out = capsys.readouterr()
    assert out.err == ""
    old = ["report", str(demo_stats), "--format", "int", "--bits", "6", "--act-format", "int8",
           "--json"]  # fmt: skip
    assert main(old) == 0
    again = capsys.readouterr()
    assert json.loads(again.out) == json.loads(out.out)
    assert "--format is deprecated" in again.err and "write --number-format" in again.err
    assert "write --act-number-format" in again.err and again.err.count("\n") == 2

    # In `qviz export`, --format named the file type: it still does, with the same note.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["export", str(demo_stats), "--file-format", "config", "-o", str(a)]) == 0
    capsys.readouterr()
    assert main(["export", str(demo_stats), "--format", "config", "-o", str(b)]) == 0
    err = capsys.readouterr().err
    assert "write --file-format" in err
    assert json.loads(a.read_text())["tensors"] == json.loads(b.read_text())["tensors"]
    assert main(["export", str(demo_stats), "-o", str(tmp_path / "c.json")]) == 2
    assert "--file-format" in capsys.readouterr().err


def test_report_eval_stats_adds_representativeness(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A brightened evaluation set: the JSON says which activations it clips beyond what
    sampling explains; the demo's own images are within what calibration explains."""
    import numpy as np

    demo = demo_paths()
    with np.load(demo.data) as z:
        arrays = {k: z[k] for k in z.files}
    x_name = next(k for k in arrays if k != "labels")
    bright = {**arrays, x_name: (arrays[x_name] * 1.8 + 0.5).astype(np.float32)}
    np.savez(tmp_path / "bright.npz", **bright)
    eval_stats = tmp_path / "bright.qvstats"
    assert main(["collect", str(demo.model), "--data", str(tmp_path / "bright.npz"),
                 "-o", str(eval_stats), "--quiet"]) == 0  # fmt: skip
    assert main(["report", str(demo_stats), "--eval-stats", str(eval_stats), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    acts = [t for t in doc["tensors"] if t["kind"] == "activation"]
    assert acts and all("eval_clipped_fraction" in t for t in acts)
    flagged = [t["name"] for t in acts if not t["representative"]]
    assert flagged and doc["evaluation_data"]["unrepresentative"] == flagged
    assert all(t["eval_clipped_fraction"] > t["cal_clipped_fraction"] for t in acts
               if t["name"] in flagged)  # fmt: skip

    assert main(["report", str(demo_stats), "--eval-stats", str(demo_stats)]) == 0
    table = capsys.readouterr().out
    assert "eval clip%" in table and "within what calibration explains" in table

    other = tmp_path / "other.qvstats"
    other.write_bytes(eval_stats.read_bytes())
    assert main(["report", str(demo_stats), "--eval-stats", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
