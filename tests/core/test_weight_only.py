"""Quantization as large language models are quantized: weights only, per group, int4/int8
on ONNX Runtime's MatMulNBits; FP4 block formats (MXFP4, NVFP4) simulated exactly."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import (
    QuantConfig,
    TensorConfig,
    format_supported,
    granularity_supported,
)
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.weights import analyze_weight
from qviz.core.data.dataset import load_data
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import evaluate
from qviz.core.graph.qdq import build_qdq
from qviz.core.model.loading import TensorKind, load_model
from qviz.core.progress import run_to_completion
from qviz.core.quant.formats import (
    FormatKind,
    GranularityKind,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import dequantize, fake_quantize, quantization_levels, quantize
from qviz.core.runtime.fusion import fusion_report
from qviz.core.runtime.latency import time_pair
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.sessions import KernelPrecision
from tools import make_decoder
from tools.synthetic.spec import tiny_spec

MXFP4 = NumberFormat.parse("mxfp4")
NVFP4 = NumberFormat.parse("nvfp4")
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def weight_only(fmt: NumberFormat, group: int) -> QuantConfig:
    return QuantConfig(
        weights=TensorConfig(spec=MethodSpec(Method.MINMAX), granularity=PerGroup(group),
                             fmt=fmt),
        activations=TensorConfig(quantize=False),
    )


# --------------------------------------------------------------------------- FP4 formats


def test_fp4_formats_are_weight_only_block_formats() -> None:
    assert MXFP4.block_size == 32 and NVFP4.block_size == 16
    assert MXFP4.simulation_only and MXFP4.weight_only and MXFP4.label.endswith("only)")
    levels = quantization_levels(1.0, np.zeros((), MXFP4.storage_dtype), MXFP4)
    np.testing.assert_array_equal(np.abs(levels[levels >= 0]), E2M1)
    assert FormatKind.MXFP4 not in format_supported(TensorKind.ACTIVATION)
    assert granularity_supported(TensorKind.WEIGHT, NVFP4) == (GranularityKind.PER_GROUP,)
    w = np.ones((64, 4), np.float32)
    with pytest.raises(QvizError, match="per-group \\(32\\)"):
        analyze_weight(w, 1, 0, MethodSpec(Method.MINMAX), PerAxis(), MXFP4)
    with pytest.raises(QvizError, match="minmax or percentile"):
        analyze_weight(w, 1, 0, MethodSpec(Method.MSE), PerGroup(32), MXFP4)


def test_mxfp4_scales_are_powers_of_two_from_the_block_maximum() -> None:
    """OCP MX: X = 2^(floor(log2(amax)) - 2); values past 6 X saturate."""
    block = np.linspace(-7.0, 7.0, 32, dtype=np.float32)  # amax 7: floor(log2 7) = 2 -> X 1
    qp = compute_qparams(-7.0 * np.ones((1, 1)), 7.0 * np.ones((1, 1)), MXFP4, axis=0,
                         block_size=32)
    assert float(qp.scale.ravel()[0]) == 1.0
    got = fake_quantize(block[:, None], qp, MXFP4)[:, 0]
    expected = np.clip(block, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got.max() == 6.0  # 7 saturates


def test_nvfp4_scales_are_e4m3_times_one_tensor_scale() -> None:
    amax = np.array([[6.0], [0.3], [1e-6]])
    qp = compute_qparams(-amax, amax, NVFP4, axis=0, block_size=16)
    g = np.float32(6.0 / (6 * 448))
    block = (amax[:2, 0] / 6 / g).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(qp.scale.ravel()[:2],
                                  (block.astype(np.float32) * g).astype(np.float32))
    # A block scale below E4M3's smallest value is 0; qviz's rule for a zero scale (1.0,
    # as ONNX Runtime's) gives the same values: the block's are far below 0.5 (E2M1's least).
    assert qp.scale.ravel()[2] == 1.0
    assert fake_quantize(np.full((16, 1), 1e-6, np.float32), type(qp)(
        qp.scale[2:], qp.zero_point[2:], axis=0, block_size=16), NVFP4).max() == 0.0
    x = np.full((48, 1), 0.3, np.float32)
    q = quantize(x, qp, NVFP4)
    assert q.dtype == NVFP4.storage_dtype
    np.testing.assert_array_equal(dequantize(q, qp, NVFP4), fake_quantize(x, qp, NVFP4))


def test_blocked_quantize_equals_the_per_element_layout() -> None:
    """Blocks that tile the axis are quantized without a per-element scale array."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 6)).astype(np.float32)
    for fmt in (NumberFormat(bits=4), NumberFormat.parse("uint4", symmetric=False), MXFP4):
        r = analyze_weight(w, 1, 0, MethodSpec(Method.MINMAX), PerGroup(32), fmt)
        qp = r.qparams
        scale = np.repeat(qp.scale, 32, axis=0)
        zp = np.repeat(qp.zero_point, 32, axis=0).astype(np.float32)
        ref = fake_quantize(w / scale, type(qp)(np.float32(1.0), np.zeros((), fmt.storage_dtype)),
                            fmt) if fmt is MXFP4 else None
        got = fake_quantize(w, qp, fmt)
        if ref is not None:
            np.testing.assert_array_equal(got, ref * scale)
        else:
            lo, hi = fmt.saturation_range
            codes = np.clip(np.rint(w / scale) + zp, lo, hi)
            np.testing.assert_array_equal(got, ((codes - zp) * scale).astype(np.float32))


# --------------------------------------------------------------------------- MatMulNBits


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("wo") / "tiny.onnx"
    make_decoder.write_decoder(tiny_spec(), path, builder="onnx", external=True,
                               calib_samples=0, eval_samples=8, data_seq=16)
    model = load_model(path)
    return model, load_data(path.with_name("tiny.eval.npz"), model.inputs)


@pytest.mark.parametrize("fmt", [NumberFormat(bits=4), NumberFormat.parse("uint4", False),
                                 NumberFormat(bits=8)], ids=["int4", "uint4-asym", "int8"])
def test_per_group_weights_run_on_matmulnbits(decoder, fmt: NumberFormat) -> None:
    model, data = decoder
    results = analyze(model, None, weight_only(fmt, 32))
    assert {r.kind for r in results} == {TensorKind.WEIGHT}  # activations stay float
    qdq = build_qdq(model, results)
    report = fusion_report(qdq, KernelPrecision.PRECISE)
    matmuls = [layer.name for layer in model.layers if layer.op_type == "MatMul"
               and layer.weight is not None]
    assert sorted(report.weight_only) == sorted(matmuls)
    assert all(report.kernels[name] == "MatMulNBits" for name in matmuls)
    # With float32 accumulation the kernel computes what the simulation computes.
    sim = run_to_completion(evaluate(model, qdq, data, latency=False, batch_size=8))
    native = run_to_completion(evaluate(model, qdq, data, native=True, latency=False,
                                        precision=KernelPrecision.PRECISE, batch_size=8))
    assert native.mismatch[0].fraction_differing == pytest.approx(0.0, abs=1e-4)
    assert native.outputs[0].cosine == pytest.approx(sim.outputs[0].cosine, abs=1e-6)


def test_fp4_weights_are_simulated_in_the_graph(decoder) -> None:
    model, data = decoder
    results = analyze(model, None, weight_only(MXFP4, 32))
    qdq = build_qdq(model, results)
    assert len(qdq.simulated) == len(results)  # stored dequantized: no ONNX kernel
    ev = run_to_completion(evaluate(model, qdq, data, latency=False, batch_size=8))
    assert 0.5 < ev.outputs[0].cosine < 1.0


def test_latency_is_timed_within_a_budget(decoder) -> None:
    from qviz.core.runtime.sessions import SessionConfig, build_session

    model, data = decoder
    session = build_session(model.model, SessionConfig.for_float(), data_dir=model.data_dir)
    feeds = next(iter(data.batches(2)))
    # Exactly N runs when N is asked for (evaluate's latency_repeats) ...
    assert time_pair(session, session, feeds, TimingBudget(0.0, 5, 5)).runs == 5
    # ... else at least the minimum, as many more as fit in the budget.
    assert time_pair(session, session, feeds, TimingBudget(0.0, 3, 200)).runs == 3
    assert time_pair(session, session, feeds, TimingBudget(0.5, 3, 200)).runs >= 3


def test_cli_weight_only_int4(decoder, tmp_path: Path, capsys) -> None:
    from qviz.cli import main

    model, _ = decoder
    path = str(model.source)
    stats = tmp_path / "s.qvstats"
    calib = str(Path(path).with_name("tiny.eval.npz"))
    assert main(["collect", path, "--data", calib, "-o", str(stats), "--quiet",
                 "--batch-size", "4"]) == 0
    out = tmp_path / "w4.onnx"
    assert main(["export", str(stats), "--file-format", "qdq", "-o", str(out), "--weight-only",
                 "--number-format", "int", "--bits", "4", "--granularity", "per-group",
                 "--group-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "w4.onnx.data" in text
    import onnx

    proto = onnx.load(str(out), load_external_data=False)
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(any(a.name == "block_size" and a.i == 64 for a in n.attribute) for n in dq)
    assert not [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis(), PerGroup(32)],
                         ids=["tensor", "channel", "group"])
def test_quantize_in_chunks_is_bit_identical(granularity, monkeypatch) -> None:
    from qviz.core.quant import quantize as module

    monkeypatch.setattr(module, "_CHUNK_VALUES", 1000)  # many slices
    w = np.random.default_rng(4).standard_normal((128, 96)).astype(np.float32)
    for fmt in (NumberFormat(), NumberFormat(bits=4, symmetric=False), MXFP4):
        if fmt.block_size and not isinstance(granularity, PerGroup):
            continue
        qp = analyze_weight(w, 1, 0, MethodSpec(Method.MINMAX), granularity, fmt).qparams
        np.testing.assert_array_equal(module.quantize_in_chunks(w, qp, fmt),
                                      quantize(w, qp, fmt))
        np.testing.assert_array_equal(module.quantize_in_chunks(w, qp, fmt, fake=True),
                                      fake_quantize(w, qp, fmt))


def test_weight_only_keeps_8_bit_weights_where_u8s8_may_saturate(u8s8_saturates: bool,
                                                                 capsys) -> None:
    """The int7 default guards the u8s8 kernels; a weight-only graph has none."""
    from qviz.cli.options import config_from_args
    from qviz.cli.parser import build_parser

    parser = build_parser()
    plain = config_from_args(parser.parse_args(["report", "s.qvstats"]))
    assert plain.weights.fmt.bits == (7 if u8s8_saturates else 8)
    capsys.readouterr()
    args = parser.parse_args(["report", "s.qvstats", "--weight-only"])
    cfg = config_from_args(args)
    assert cfg.weights.fmt.bits == 8 and not cfg.activations.quantize
    assert "note" not in capsys.readouterr().err
