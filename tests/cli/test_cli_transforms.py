"""The transform options on the CLI, on the planted-outlier block: `report --json` names the
planted channels, `--smoothquant auto` gains at least 6 dB of output SQNR in plain ONNX
Runtime, the config file records the transforms and rebuilds them, the ORT overrides come
with the transformed float model, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader, quantize_static

from qviz.cli import main
from qviz.core.files import export
from qviz.core.files.config_file import load_config
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.sessions import SessionConfig
from tools.make_decoder import write_block_and_data
from tools.synthetic.block import BlockSpec

PLANTED = {2, 14, 49}  # BlockSpec()'s outlier plan (tools/synthetic/spec.py)


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli_transforms")
    spec = BlockSpec()
    assert set(spec.outlier_plan()) == PLANTED
    # The proof model and its data, exactly as `tools/make_decoder.py --block` writes them.
    model, calib, evaluation = write_block_and_data(spec, tmp / "block.onnx")
    stats = tmp / "block.qvstats"
    assert main(["collect", str(model), "--data", str(calib), "-o", str(stats),
                 "--gram", "--quiet"]) == 0
    return {"model": model, "stats": stats, "calib": calib, "eval": evaluation, "dir": tmp}


def _plain_ort_sqnr(float_model: Path, qdq: Path, x: np.ndarray) -> float:
    opts = SessionConfig.for_simulation().options()
    f = ort.InferenceSession(str(float_model)).run(None, {"hidden_states": x})[0]
    q = ort.InferenceSession(str(qdq), opts).run(None, {"hidden_states": x})[0]
    f64, q64 = f.astype(np.float64), q.astype(np.float64)
    return float(10 * np.log10((f64**2).sum() / ((f64 - q64) ** 2).sum()))


def test_report_json_names_the_planted_channels(block, capsys) -> None:
    assert main(["report", str(block["stats"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    norm = next(t for t in doc["tensors"] if t["name"] == "block.norm.output")
    assert set(norm["outlier_channels"]) == PLANTED
    assert len(norm["channel_absmax"]) == 64
    weight = next(t for t in doc["tensors"] if t["kind"] == "weight")
    assert "outlier_channels" not in weight


def test_report_after_smoothquant_has_no_loud_channel_left(block, capsys) -> None:
    assert main(["report", str(block["stats"]), "--json", "--smoothquant", "auto"]) == 0
    doc = json.loads(capsys.readouterr().out)
    norm = next(t for t in doc["tensors"] if t["name"] == "block.norm.output")
    assert norm["outlier_channels"] == []
    assert set(norm["transform"]["before"]["outlier_channels"]) == PLANTED
    assert "LayerNormalization" in norm["transform"]["expressed_as"]
    assert 0.0 <= norm["transform"]["alpha"] <= 1.0 and norm["transform"]["auto"]


def test_report_points_at_smoothquant_until_it_is_on(block, capsys) -> None:
    assert main(["report", str(block["stats"])]) == 0
    advice = [line for line in capsys.readouterr().out.splitlines() if "--smoothquant" in line]
    assert len(advice) == 1 and "block.norm.output" in advice[0], advice
    assert main(["report", str(block["stats"]), "--smoothquant", "auto"]) == 0
    assert "--smoothquant auto" not in capsys.readouterr().out


def test_the_demo_gets_no_smoothquant_advice(demo_stats: Path, capsys) -> None:
    # Its convolutions' activations have channels a few times the median (the channel view
    # marks them), not the order-of-magnitude outliers SmoothQuant is for.
    assert main(["report", str(demo_stats)]) == 0
    assert "--smoothquant" not in capsys.readouterr().out


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_smoothquant_auto_export_gains_6_db_in_plain_ort(block, tmp_path: Path, capsys,
                                                         method: str) -> None:
    x = np.load(block["eval"])["hidden_states"]
    plain, smooth = tmp_path / "plain.onnx", tmp_path / "smooth.onnx"
    common = ["export", str(block["stats"]), "--file-format", "qdq", "--method", method,
              "--slow-layers", "quantize"]  # every layer quantized in both: no timing in it
    assert main([*common, "-o", str(plain)]) == 0
    assert "note: 1 activation read by weighted layers has outlier channels" in \
        capsys.readouterr().out
    assert main([*common, "--smoothquant", "auto", "-o", str(smooth)]) == 0
    assert "--smoothquant auto" not in capsys.readouterr().out
    before = _plain_ort_sqnr(block["model"], plain, x)
    after = _plain_ort_sqnr(block["model"], smooth, x)
    assert after >= before + 6.0, (method, before, after)


def test_evaluate_reports_what_plain_ort_measures(block, tmp_path: Path, capsys) -> None:
    flags = ["--method", "mse", "--smoothquant", "0.6", "--gptq", "--bias-correction"]
    assert main(["evaluate", str(block["model"]), "--stats", str(block["stats"]),
                 "--data", str(block["eval"]), "--json", "--quiet", "--no-latency",
                 *flags]) == 0
    reported = json.loads(capsys.readouterr().out)["outputs"][0]["output_sqnr_db"]
    out = tmp_path / "all.onnx"
    # Every layer quantized, as evaluated (not the measured slow-layer choice).
    assert main(["export", str(block["stats"]), "--file-format", "qdq", "-o", str(out),
                 "--slow-layers", "quantize", *flags]) == 0
    x = np.load(block["eval"])["hidden_states"]
    assert _plain_ort_sqnr(block["model"], out, x) == pytest.approx(reported, abs=0.01)


def test_config_file_records_and_rebuilds_the_transforms(block, tmp_path: Path) -> None:
    flags = ["--method", "mse", "--smoothquant", "auto", "--bias-correction"]
    cfg, direct, rebuilt = tmp_path / "t.json", tmp_path / "d.onnx", tmp_path / "r.onnx"
    assert main(["export", str(block["stats"]), "--file-format", "config", "-o", str(cfg),
                 *flags]) == 0
    saved = load_config(cfg)
    assert saved.schema_version == 2 and len(saved.rescalings) == 2
    assert saved.quant_config.activations.transforms.smoothquant is not None
    assert any(t.corrected_bias is not None for t in saved.tensors)
    assert main(["export", str(block["stats"]), "--file-format", "qdq", "-o", str(direct),
                 "--slow-layers", "quantize", *flags]) == 0
    assert main(["export", str(cfg), "--file-format", "qdq", "-o", str(rebuilt),
                 "--slow-layers", "quantize"]) == 0
    a, b = onnx.load(direct), onnx.load(rebuilt)
    assert {i.name: i.raw_data for i in a.graph.initializer} == \
        {i.name: i.raw_data for i in b.graph.initializer}


def test_config_with_gptq_refuses_to_rebuild(block, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "g.json"
    assert main(["export", str(block["stats"]), "--file-format", "config", "-o", str(cfg),
                 "--gptq"]) == 0
    capsys.readouterr()
    assert main(["export", str(cfg), "--file-format", "qdq", "-o", str(tmp_path / "g.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "GPTQ" in err and "--stats" in err
    assert not (tmp_path / "g.onnx").exists()


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{"hidden_states": x}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def test_ort_overrides_come_with_the_transformed_float_model(block, tmp_path: Path) -> None:
    flags = ["--method", "mse", "--smoothquant", "auto", "--gptq", "--bias-correction"]
    overrides, ours = tmp_path / "ov.json", tmp_path / "ours.onnx"
    assert main(["export", str(block["stats"]), "--file-format", "ort-overrides",
                 "-o", str(overrides), *flags]) == 0
    assert main(["export", str(block["stats"]), "--file-format", "qdq", "-o", str(ours),
                 *flags, "--slow-layers", "quantize"]) == 0
    beside = tmp_path / "ov.transformed.onnx"
    assert json.loads(overrides.read_text())["float_model"]["file"] == beside.name
    theirs = tmp_path / "theirs.onnx"
    x = np.load(block["eval"])["hidden_states"]
    quantize_static(str(beside), str(theirs), _Reader(x[:8]),
                    **export.load_ort_quantize_options(overrides))
    opts = SessionConfig.for_simulation().options()
    a = ort.InferenceSession(str(ours), opts).run(None, {"hidden_states": x})[0]
    b = ort.InferenceSession(str(theirs), opts).run(None, {"hidden_states": x})[0]
    np.testing.assert_array_equal(a, b)


def test_trt_cache_refuses_gptq_in_one_line(block, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.cache"
    assert main(["export", str(block["stats"]), "--file-format", "trt-cache", "-o", str(out),
                 "--gptq"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--file-format qdq" in err
    assert not out.exists() and not (tmp_path / "c.transformed.onnx").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--smoothquant", "1.5"], "[0, 1]"),
    (["--smoothquant", "strong"], "[0, 1]"),
])
def test_bad_alpha_is_one_line(block, capsys, argv: list[str], needle: str) -> None:
    assert main(["report", str(block["stats"]), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err


def test_stats_without_gram_say_recollect(block, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare.qvstats"
    assert main(["collect", str(block["model"]), "--data", str(block["calib"]), "-o", str(bare),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(bare), "--gptq"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "recollect" in err


def test_collect_refuses_grams_over_budget(block, tmp_path: Path, capsys) -> None:
    out = tmp_path / "big.qvstats"
    assert main(["collect", str(block["model"]), "--data", str(block["calib"]), "-o", str(out),
                 "--gram", "--gram-budget", "0.00001", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "budget" in err and not out.exists()


def test_sensitivity_measures_the_transformed_model(block, capsys) -> None:
    common = ["sensitivity", str(block["model"]), "--stats", str(block["stats"]), "--data",
              str(block["eval"]), "--method", "mse", "--quiet", "--json", "--limit", "32"]
    assert main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*common, "--smoothquant", "auto"]) == 0
    smooth = json.loads(capsys.readouterr().out)
    assert plain["results_digest"] != smooth["results_digest"]
    # The transformed model quantizes better: SQNR with every layer quantized goes up.
    assert smooth["quantized_value"] > plain["quantized_value"] + 3.0


def test_mixed_precision_chooses_a16w8_for_the_loud_layer(block, tmp_path: Path,
                                                          capsys) -> None:
    out = tmp_path / "mixed.json"
    assert main(["mixed", str(block["model"]), "--stats", str(block["stats"]), "--data",
                 str(block["eval"]), "--method", "mse", "--criterion", "sqnr>=40",
                 "--allow", "int8,a16w8,float", "--quiet", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "block.mlp.fc1" in text and "a16w8" in text
    saved = load_config(out)
    fc1 = saved.quant_config.for_tensor("block.norm.output", TensorKind.ACTIVATION)
    assert fc1.fmt.bits == 16
