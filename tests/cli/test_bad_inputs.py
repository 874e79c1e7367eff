"""A corpus of bad inputs for every command, built from the demo: each one is exit code 2,
exactly one line on stderr, no traceback, every input byte-identical afterwards, and no file
left behind. Plus Ctrl+C at any moment (exit 130, one line) and a write that runs out of room.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from qviz.cli import main
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.files.config_file import save_config
from qviz.core.files.export import export_qdq
from qviz.core.model.loading import load_model
from qviz.core.progress import run_to_completion
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.stats_file import save_stats

ROOT = Path(__file__).resolve().parents[2]
N_SAMPLES = 48


def _edit_config(src: Path, dst: Path, edit) -> None:
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))


def _first_weight(doc: dict) -> dict:
    return next(t for t in doc["tensors"] if t["kind"] == "weight")


def _first_act(doc: dict) -> dict:
    return next(t for t in doc["tensors"] if t["kind"] == "activation")


def _set_scale(entry: dict, hex_value: str, decimal: float | str) -> None:
    entry["scale_hex"][0] = hex_value
    entry["scale"][0] = decimal


def _edit_stats(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["meta.json"])
    edit(doc)
    members["meta.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of good and bad inputs made from the demo model and data."""
    d = tmp_path_factory.mktemp("corpus")
    demo = demo_paths()
    shutil.copy(demo.model, d / "model.onnx")
    full = np.load(demo.data)
    x, labels = full["input"][:N_SAMPLES], full["labels"][:N_SAMPLES]
    np.savez(d / "data.npz", input=x, labels=labels)
    np.savez(d / "nolabels.npz", input=x)
    model = load_model(d / "model.onnx")
    stats = run_to_completion(collect_stats(model, load_data(d / "data.npz", model.inputs)))
    save_stats(stats, d / "s.qvstats")
    config = QuantConfig()
    results = analyze(model, stats, config)
    save_config(d / "c.json", model, config, results)
    export_qdq(model, results, d / "quantized.onnx")
    # The model again, its weights as external data beside it.
    proto = onnx.load(str(d / "model.onnx"))
    onnx.save_model(proto, str(d / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    # The same graph under another producer: another file, another sha256.
    proto.producer_name = "someone else"
    onnx.save_model(proto, str(d / "other.onnx"))
    # Places that are not files to write.
    (d / "adir").mkdir()
    (d / "afile").write_text("a file\n")
    os.mkfifo(d / "fifo")
    (d / "readonly.qvstats").write_bytes(b"previous")
    (d / "readonly.qvstats").chmod(0o444)
    (d / "model_link.onnx").symlink_to(d / "model.onnx")
    os.link(d / "data.npz", d / "data_hardlink.npz")
    npzdir = d / "npzdir"
    npzdir.mkdir()
    for i in range(2):
        np.savez(npzdir / f"{i}.npz", input=x[i])
    out = d / "out"
    out.mkdir()
    # Bad configs.
    c = d / "c.json"
    _edit_config(c, d / "c_scale0.json",
                 lambda doc: _set_scale(_first_weight(doc), "00000000", 0.0))
    _edit_config(c, d / "c_scaleneg.json",
                 lambda doc: _set_scale(_first_weight(doc), "bf800000", -1.0))
    _edit_config(c, d / "c_scaleinf.json",
                 lambda doc: _set_scale(_first_weight(doc), "7f800000", "inf"))
    _edit_config(c, d / "c_zp300.json",
                 lambda doc: _first_act(doc)["zero_point"].__setitem__(0, 300))
    _edit_config(c, d / "c_zpfrac.json",
                 lambda doc: _first_act(doc)["zero_point"].__setitem__(0, 3.5))
    _edit_config(c, d / "c_hexedit.json",
                 lambda doc: _first_weight(doc)["scale"].__setitem__(0, 0.125))
    _edit_config(c, d / "c_pct.json",
                 lambda doc: doc["defaults"]["activations"].__setitem__("percentile", 200))
    _edit_config(c, d / "c_manual.json", lambda doc: doc["defaults"]["activations"].update(
        method="manual", manual_range=[5, 1]))
    _edit_config(c, d / "c_group0.json", lambda doc: doc["defaults"]["weights"].update(
        granularity="per-group", group_size=0))
    _edit_config(c, d / "c_future.json", lambda doc: doc.__setitem__("schema_version", 99))
    _edit_config(c, d / "c_axis.json", lambda doc: _first_weight(doc).__setitem__("axis", 7))

    def fewer_scales(doc: dict) -> None:
        w = _first_weight(doc)
        for key in ("scale", "scale_hex", "zero_point"):
            w[key] = w[key][:3]
        w["shape"] = [3]

    _edit_config(c, d / "c_shape.json", fewer_scales)
    (d / "c_deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "c_notjson.json").write_text("{ this is not json")
    # Bad statistics.
    s = d / "s.qvstats"
    _edit_stats(s, d / "s_neg.qvstats", lambda doc: doc.__setitem__("n_samples", -5))
    _edit_stats(s, d / "s_count.qvstats",
                lambda doc: doc["tensors"][0]["meta"].__setitem__("count", -1))
    _edit_stats(s, d / "s_minmax.qvstats",
                lambda doc: doc["tensors"][0]["meta"].update(min=3.0, max=-3.0))
    (d / "s_trunc.qvstats").write_bytes(s.read_bytes()[: s.stat().st_size // 2])
    (d / "s_junk.qvstats").write_bytes(os.urandom(4096))
    # Bad data.
    np.savez(d / "d_nan.npz", input=np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x))
    np.savez(d / "d_shape.npz", input=x[:, :, :20, :])
    np.savez(d / "d_names.npz", image=x, extra=x)
    np.savez(d / "d_empty.npz", input=x[:0])
    np.save(d / "d_pickle.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    (d / "d_trunc.npz").write_bytes((d / "data.npz").read_bytes()[:5000])
    np.savez(d / "d_labels.npz", input=x, labels=labels[:3])
    # Bad models.
    (d / "m_trunc.onnx").write_bytes((d / "model.onnx").read_bytes()[:20000])
    (d / "m_text.onnx").write_text("not a model\n")
    (d / "m_weird.xyz").write_text("?")
    import torch

    # Pickles that carry a module object (code to run), and a plain state dict.
    torch.save(torch.nn.Linear(4, 2), d / "m_pickle.pt")
    torch.save(torch.nn.Linear(4, 2), d / "m_pickle.pt2")
    torch.save(torch.nn.Linear(4, 2).state_dict(), d / "m_statedict.pt")
    return d


# (id, arguments; {w} is the corpus folder). Every case must end in exit code 2.
CASES: list[tuple[str, list[str]]] = [
    # -- where output goes (collect) --
    ("collect-o-folder", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz", "-o", "{w}/adir"]),
    ("collect-o-under-file", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                              "-o", "{w}/afile/s.qvstats"]),
    ("collect-o-missing-parent", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                  "-o", "{w}/nowhere/s.qvstats"]),
    ("collect-o-empty", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz", "-o", ""]),
    ("collect-o-dev-full", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                            "-o", "/dev/full"]),
    ("collect-o-dev-null", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                            "-o", "/dev/null"]),
    ("collect-o-fifo", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz", "-o", "{w}/fifo"]),
    ("collect-o-model", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                         "-o", "{w}/model.onnx"]),
    ("collect-o-data", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                        "-o", "{w}/data.npz"]),
    ("collect-o-link-to-model", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                 "-o", "{w}/model_link.onnx"]),
    ("collect-o-hardlink-to-data", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                    "-o", "{w}/data_hardlink.npz"]),
    ("collect-o-readonly", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                            "-o", "{w}/readonly.qvstats"]),
    ("collect-o-in-data-folder", ["collect", "{w}/model.onnx", "--data", "{w}/npzdir",
                                  "-o", "{w}/npzdir/s.qvstats"]),
    ("collect-o-external-data", ["collect", "{w}/ext.onnx", "--data", "{w}/data.npz",
                                 "-o", "{w}/ext.onnx.data"]),
    # -- where output goes (export, mixed) --
    ("export-o-source-stats", ["export", "{w}/s.qvstats", "--file-format", "config",
                               "-o", "{w}/s.qvstats"]),
    ("export-o-source-config", ["export", "{w}/c.json", "--file-format", "config",
                                "-o", "{w}/c.json"]),
    ("export-o-recorded-model", ["export", "{w}/s.qvstats", "--file-format", "qdq",
                                 "-o", "{w}/model.onnx"]),
    ("export-o-given-model", ["export", "{w}/c.json", "--model", "{w}/model.onnx",
                              "--file-format", "qdq", "-o", "{w}/model.onnx"]),
    ("export-report-json-beside", ["export", "{w}/c.json", "--file-format", "report",
                                   "-o", "{w}/c.html"]),
    ("export-report-bad-suffix", ["export", "{w}/s.qvstats", "--file-format", "report",
                                  "-o", "{w}/out/r.pdf"]),
    ("export-o-folder", ["export", "{w}/c.json", "--file-format", "trt-cache", "-o", "{w}/adir"]),
    ("mixed-o-stats", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                       "{w}/data.npz", "--min-output-sqnr", "10", "--no-cache",
                       "-o", "{w}/s.qvstats"]),
    ("mixed-o-folder", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                        "{w}/data.npz", "--min-output-sqnr", "10", "--no-cache", "-o", "{w}/adir"]),
    # -- config files with values out of their domain --
    *[(f"evaluate-config-{name}", ["evaluate", "{w}/model.onnx", "--config", f"{{w}}/c_{name}.json",
                                   "--data", "{w}/data.npz", "--no-latency"])
      for name in ("scale0", "scaleneg", "scaleinf", "zp300", "zpfrac", "hexedit", "pct",
                   "manual", "group0", "future", "axis", "shape", "deep", "notjson")],
    *[(f"export-config-{name}", ["export", f"{{w}}/c_{name}.json", "--file-format", "qdq",
                                 "-o", "{w}/out/q.onnx"])
      for name in ("scale0", "zp300", "deep", "shape")],
    # -- statistics files --
    *[(f"report-stats-{name}", ["report", f"{{w}}/s_{name}.qvstats"])
      for name in ("neg", "count", "minmax", "trunc", "junk")],
    ("export-stats-neg", ["export", "{w}/s_neg.qvstats", "--file-format", "config",
                          "-o", "{w}/out/c.json"]),
    ("report-stats-other-model", ["report", "{w}/s.qvstats", "--model", "{w}/other.onnx"]),
    ("evaluate-config-other-model", ["evaluate", "{w}/other.onnx", "--config", "{w}/c.json",
                                     "--data", "{w}/data.npz"]),
    # -- option values --
    ("collect-bins-huge", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                           "--bins", "1000000000", "-o", "{w}/out/s.qvstats"]),
    ("collect-bins-tiny", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                           "--bins", "3", "-o", "{w}/out/s.qvstats"]),
    ("collect-batch-0", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                         "--batch-size", "0", "-o", "{w}/out/s.qvstats"]),
    ("collect-random-0", ["collect", "{w}/model.onnx", "--random", "0", "-o", "{w}/out/s.qvstats"]),
    ("report-percentile-0", ["report", "{w}/s.qvstats", "--percentile", "0"]),
    ("report-percentile-101", ["report", "{w}/s.qvstats", "--percentile", "101"]),
    ("report-percentile-nan", ["report", "{w}/s.qvstats", "--percentile", "nan"]),
    ("report-bits-9", ["report", "{w}/s.qvstats", "--bits", "9"]),
    ("report-group-0", ["report", "{w}/s.qvstats", "--granularity", "per-group",
                        "--group-size", "0"]),
    ("evaluate-limit-0", ["evaluate", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                          "--data", "{w}/data.npz", "--limit", "0"]),
    ("evaluate-criterion-junk", ["evaluate", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                                 "--data", "{w}/data.npz", "--criterion", "speed>=2"]),
    ("evaluate-needs-labels", ["evaluate", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                               "--data", "{w}/nolabels.npz", "--criterion", "accuracy_drop<=1"]),
    ("sensitivity-limit-neg", ["sensitivity", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                               "--data", "{w}/data.npz", "--limit", "-3", "--no-cache"]),
    ("sensitivity-cache-is-file", ["sensitivity", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                                   "--data", "{w}/data.npz", "--cache-dir", "{w}/afile"]),
    ("sensitivity-config-scale0", ["sensitivity", "{w}/model.onnx", "--config",
                                   "{w}/c_scale0.json", "--data", "{w}/data.npz", "--no-cache"]),
    ("sensitivity-stats-neg", ["sensitivity", "{w}/model.onnx", "--stats", "{w}/s_neg.qvstats",
                               "--data", "{w}/data.npz", "--no-cache"]),
    ("sensitivity-accuracy-no-labels", ["sensitivity", "{w}/model.onnx", "--stats",
                                        "{w}/s.qvstats", "--data", "{w}/nolabels.npz",
                                        "--metric", "accuracy", "--no-cache"]),
    ("sensitivity-simulation-precise", ["sensitivity", "{w}/model.onnx", "--stats",
                                        "{w}/s.qvstats", "--data", "{w}/data.npz",
                                        "--simulation", "--precise-int8", "--no-cache"]),
    ("sensitivity-cache-contradiction", ["sensitivity", "{w}/model.onnx", "--stats",
                                         "{w}/s.qvstats", "--data", "{w}/data.npz",
                                         "--no-cache", "--cache-dir", "{w}/out"]),
    ("sensitivity-data-nan", ["sensitivity", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                              "--data", "{w}/d_nan.npz", "--no-cache"]),
    ("sensitivity-bits-with-config", ["sensitivity", "{w}/model.onnx", "--config", "{w}/c.json",
                                      "--data", "{w}/data.npz", "--bits", "4", "--no-cache"]),
    ("mixed-allow-junk", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                          "{w}/data.npz", "--min-output-sqnr", "10", "--allow", "int99,float",
                          "--no-cache", "-o", "{w}/out/m.json"]),
    ("mixed-bits-with-allow", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                               "{w}/data.npz", "--min-output-sqnr", "10", "--bits", "4",
                               "--no-cache", "-o", "{w}/out/m.json"]),
    ("mixed-drop-needs-labels", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats",
                                 "--data", "{w}/nolabels.npz", "--max-accuracy-drop", "1",
                                 "--no-cache", "-o", "{w}/out/m.json"]),
    ("mixed-stats-missing", ["mixed", "{w}/model.onnx", "--stats", "{w}/nothere.qvstats",
                             "--data", "{w}/data.npz", "--min-output-sqnr", "10", "--no-cache",
                             "-o", "{w}/out/m.json"]),
    ("mixed-drop-inf", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                        "{w}/data.npz", "--max-accuracy-drop", "inf", "-o", "{w}/out/m.json"]),
    ("mixed-trials-neg", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                          "{w}/data.npz", "--min-output-sqnr", "10", "--max-trials", "-1",
                          "-o", "{w}/out/m.json"]),
    ("mixed-confirm-0", ["mixed", "{w}/model.onnx", "--stats", "{w}/s.qvstats", "--data",
                         "{w}/data.npz", "--min-output-sqnr", "10", "--confirm-limit", "0",
                         "-o", "{w}/out/m.json"]),
    ("export-trt-version", ["export", "{w}/c.json", "--file-format", "trt-cache",
                            "--trt-version", "8.6", "-o", "{w}/out/t.cache"]),
    # -- data layout --
    ("collect-batch-axis-range", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                  "--batch-axis", "input=9", "-o", "{w}/out/s.qvstats"]),
    ("collect-batch-axis-name", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                 "--batch-axis", "nosuch=0", "-o", "{w}/out/s.qvstats"]),
    ("collect-const-text", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                            "--const", "input=abc", "-o", "{w}/out/s.qvstats"]),
    ("collect-state-output", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                              "--state", "nosuch=input", "-o", "{w}/out/s.qvstats"]),
    ("collect-preprocess-size", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                 "--preprocess", "size=0x0", "-o", "{w}/out/s.qvstats"]),
    # -- data files --
    *[(f"collect-data-{name}", ["collect", "{w}/model.onnx", "--data", f"{{w}}/d_{name}",
                                "-o", "{w}/out/s.qvstats"])
      for name in ("nan.npz", "shape.npz", "names.npz", "empty.npz", "pickle.npy", "trunc.npz",
                   "labels.npz", "missing.npz")],
    ("evaluate-data-nan", ["evaluate", "{w}/model.onnx", "--config", "{w}/c.json",
                           "--data", "{w}/d_nan.npz"]),
    # -- model files --
    *[(f"collect-model-{name}", ["collect", f"{{w}}/{name}", "--data", "{w}/data.npz",
                                 "-o", "{w}/out/s.qvstats"])
      for name in ("m_trunc.onnx", "m_text.onnx", "m_weird.xyz", "m_pickle.pt", "m_pickle.pt2",
                   "m_statedict.pt", "quantized.onnx", "m_missing.onnx", "adir")],
    ("collect-statedict-with-onnx", ["collect", "{w}/model.onnx", "--data", "{w}/data.npz",
                                     "--state-dict", "{w}/m_statedict.pt",
                                     "-o", "{w}/out/s.qvstats"]),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``folder``: its type and, for regular files, a hash of its bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        digest = ""
        if stat.S_ISREG(mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(folder))] = (stat.S_IFMT(mode), digest)
    return out


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 60
    assert {argv[0] for _, argv in CASES} == {
        "collect", "report", "evaluate", "export", "sensitivity", "mixed"}
    assert len({case for case, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "argv"), CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_2_inputs_intact(
    work: Path, case: str, argv: list[str], capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(work / "out")
    monkeypatch.setenv("HOME", str(work / "out"))  # a sensitivity cache would land here
    before = _snapshot(work)
    code = main([a.format(w=work) for a in argv])
    captured = capfd.readouterr()
    err_lines = captured.err.splitlines()
    assert code == 2, (case, captured.err)
    assert len(err_lines) == 1 and err_lines[0].startswith("qviz: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(work) == before, f"{case} changed or left files"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from qviz.cli import main; sys.exit(main())",
            *args]


@pytest.mark.parametrize("delay", [0.2, 0.3, 0.45, 0.6, 0.9, 1.5])
def test_ctrl_c_at_any_moment_is_one_line_and_130(work: Path, tmp_path: Path,
                                                  delay: float) -> None:
    """Start-up imports (numpy, ONNX, ONNX Runtime take about a second), loading and running
    alike: exit 130, one line, no partial file. Among them, an interrupt while ONNX Runtime's
    extension initialises, which it re-raises as ImportError. (The first ~0.1 s are Python's
    own start-up, its site packages included, before any line of qviz runs; no program can
    answer a Ctrl+C there.)"""
    out = tmp_path / "s.qvstats"
    demo = demo_paths()  # 2000 samples one at a time: a run of a few seconds to interrupt
    child = subprocess.Popen(
        _cli("collect", str(demo.model), "--data", str(demo.data), "-o", str(out), "--quiet",
             "--batch-size", "1"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    if child.returncode == 0:  # finished before the signal came: nothing to check
        pytest.skip("the command finished before Ctrl+C")
    assert child.returncode == 130, stderr
    assert stderr == "qviz: interrupted\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_running_out_of_room_keeps_the_previous_file(work: Path, tmp_path: Path) -> None:
    """A real write failure (a 4 KiB file-size limit in the child): one line, exit 2, the
    previous statistics file intact and no temporary left."""
    out = tmp_path / "s.qvstats"
    out.write_bytes(b"previous statistics")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
            "from qviz.cli import main; sys.exit(main())")
    result = subprocess.run(
        [sys.executable, "-c", code, "collect", str(work / "model.onnx"), "--data",
         str(work / "data.npz"), "-o", str(out), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot write" in result.stderr
    assert "the previous file is unchanged" in result.stderr
    assert out.read_bytes() == b"previous statistics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.qvstats"]
