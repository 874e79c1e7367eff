"""`qviz evaluate` on the demo: JSON equal to the core's numbers, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qviz.cli import main
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.demo import DEMO_DIR, demo_paths
from qviz.core.evaluation.evaluate import Metric, evaluate, run_to_completion
from qviz.core.files.config_file import load_config, results_from_saved, save_config
from qviz.core.model.loading import load_model
from qviz.core.quant.formats import NumberFormat, PerAxis, PerTensor
from qviz.core.runtime.cpu import ENV_VAR
from qviz.core.runtime.fusion import SATURATION_NOTE
from qviz.core.stats.stats_file import load_stats

LIMIT = "200"
pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)



def base_args(stats: Path) -> list[str]:
    demo = demo_paths()
    return ["evaluate", str(demo.model), "--stats", str(stats), "--data", str(demo.data),
            "--limit", LIMIT, "--quiet", "--no-latency"]  # fmt: skip


def mse_config() -> QuantConfig:
    return QuantConfig(
        weights=TensorConfig(
            MethodSpec(Method.MINMAX), PerAxis(), NumberFormat()
        ),
        # The CLI's default activations: unsigned asymmetric beside signed weights.
        activations=TensorConfig(
            MethodSpec(Method.MSE), PerTensor(), NumberFormat(signed=False, symmetric=False)
        ),
    )


def test_json_holds_what_the_core_computes(
    demo_stats: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*base_args(demo_stats), "--method", "mse", "--json", "--criterion", "accuracy_drop<=5"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = {"float", "quantized", "delta", "criteria", "native", "size_bytes", "latency_ms",
                "depth", "data"}  # fmt: skip
    assert expected <= set(doc)
    assert doc["samples"] == int(LIMIT) and doc["mode"] == "simulation"
    model = load_model(demo_paths().model)
    data = load_data(demo_paths().data, model.inputs)
    results = analyze(model, load_stats(demo_stats), mse_config())
    ev = run_to_completion(evaluate(model, results, data, limit=int(LIMIT), latency=False))
    assert doc["float"]["accuracy"] == ev.float_metrics[Metric.ACCURACY]
    assert doc["quantized"]["accuracy"] == ev.quantized_metrics[Metric.ACCURACY]
    assert doc["delta"]["accuracy"] == pytest.approx(ev.delta[Metric.ACCURACY])
    assert doc["quantized"]["output_sqnr_db"] == pytest.approx(ev.quantized_metrics[Metric.SQNR])
    (verdict,) = doc["criteria"]
    assert verdict["passed"] and verdict["text"].startswith("PASS: accuracy drop")
    assert doc["depth"][0]["tensor"] == "input"
    assert doc["size_bytes"]["quantized"] < doc["size_bytes"]["float"] / 3.5


def test_config_file_scales_are_used_as_saved(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_paths()
    model = load_model(demo.model)
    results = analyze(model, load_stats(demo_stats), mse_config())
    path = tmp_path / "demo.qviz-config.json"
    save_config(path, model, mse_config(), results)
    args = ["evaluate", str(demo.model), "--config", str(path), "--data", str(demo.data),
            "--limit", LIMIT, "--quiet", "--json", "--native", "--precise-int8"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    data = load_data(demo.data, model.inputs)
    saved = results_from_saved(model, load_config(path))
    ev = run_to_completion(
        evaluate(model, saved, data, limit=int(LIMIT), native=True, latency=False)
    )
    assert doc["mode"] == "native"
    assert len(doc["native"]["fusion"]["fused"]) == 6
    assert doc["native"]["kernel_precision"] == "precise"
    assert doc["latency_ms"]["float"] > 0 and doc["latency_ms"]["native_int8"] > 0
    (mismatch,) = doc["native"]["mismatch"]
    assert mismatch["output"] == "logits" and 0.0 <= mismatch["fraction_differing"] <= 1.0
    # Same saved scales, same float model: the float side agrees exactly.
    assert doc["float"]["accuracy"] == ev.float_metrics[Metric.ACCURACY]


def test_table_and_a_failing_criterion_exit_1(
    demo_stats: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*base_args(demo_stats), "--criterion", "sqnr>=200"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: output SQNR" in out
    assert "accuracy (%)" in out and "error along depth" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--criterion", "speed>=2"], "unknown criterion metric"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    demo_stats: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*base_args(demo_stats), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("saturates", [False, True], ids=["exact", "saturates"])
def test_the_cpu_answer_can_be_set_in_the_environment(
    demo_stats: Path,
    saturates: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """QVIZ_U8S8_SATURATES=0|1 overrides qviz's CPU detection for users: the native report
    marks the fused int8 layers at risk exactly when told (the measured numbers still come
    from this machine's kernels, so only the report is asserted)."""
    monkeypatch.setenv(ENV_VAR, "1" if saturates else "0")
    assert main([*base_args(demo_stats), "--native", "--json", "--limit", "64", "--bits", "8"]) == 0
    fusion = json.loads(capsys.readouterr().out)["native"]["fusion"]
    assert len(fusion["fused"]) == 6
    assert set(fusion["saturating"]) == (set(fusion["fused"]) if saturates else set())
    assert (SATURATION_NOTE in fusion["notes"]) is saturates
    # Without --bits the weights default to what does not saturate there (int7), said once.
    assert main([*base_args(demo_stats), "--native", "--json", "--limit", "64"]) == 0
    out = capsys.readouterr()
    fusion = json.loads(out.out)["native"]["fusion"]
    assert len(fusion["fused"]) == 6 and not fusion["saturating"]
    assert ("default to int7" in out.err) is saturates and out.err.count("\n") == saturates


def test_a_bad_cpu_answer_in_the_environment_is_one_line(
    demo_stats: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_VAR, "sometimes")
    assert main([*base_args(demo_stats), "--native", "--limit", "16"]) == 2
    err = capsys.readouterr().err
    assert ENV_VAR in err and "'sometimes'" in err and err.count("\n") == 1


def test_config_file_with_settings_or_labels_missing_is_refused(
    demo_stats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_paths()
    model = load_model(demo.model)
    path = tmp_path / "c.json"
    save_config(path, model, mse_config(), analyze(model, load_stats(demo_stats), mse_config()))
    args = ["evaluate", str(demo.model), "--config", str(path), "--data", str(demo.data),
            "--bits", "4"]  # fmt: skip
    assert main(args) == 2
    assert "--bits" in capsys.readouterr().err
    args = ["evaluate", str(demo.model), "--config", str(path), "--random", "8",
            "--criterion", "accuracy_drop<=1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs labels" in err and err.count("\n") == 1
