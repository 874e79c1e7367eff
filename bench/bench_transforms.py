"""Transforms on the proof models: every figure measured in plain ONNX Runtime on the exported
Q/DQ model, against the original float model, beside the figure qviz reports for it.

* the planted-outlier block (``tools/make_decoder.py --block``): output SQNR with and without
  SmoothQuant auto, activations calibrated with each method (entropy, MSE, MinMax);
* the demo CNN at int4 weights per tensor (uint8 activations, MSE), calibrated on the first
  half of its data and evaluated on the other: none, equalization, bias correction, both,
  GPTQ — accuracy and output SQNR;
* a synthetic Llama-style decoder (``tools/make_decoder.py``; ``--decoder`` picks the file,
  default the tiny test model, made here): W8A8 (int8 per-channel weights, uint8 MSE
  activations) with and without SmoothQuant auto; int4 weight-only (per group of 32, float
  activations) with plain rounding and with GPTQ — logits SQNR and top-1 agreement.

"reported" is qviz's own evaluation (simulation); "ORT" is a fresh ONNX Runtime session on the
exported file, all graph optimizations off, its outputs compared with the original float
model's. They agree to the printed digits when the export is what was measured.

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_transforms.py [--decoder D.onnx]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.calibration.analysis import analyze  # noqa: E402
from qviz.core.calibration.config import QuantConfig, TensorConfig  # noqa: E402
from qviz.core.calibration.methods import Method, MethodSpec  # noqa: E402
from qviz.core.data.dataset import Dataset, load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.evaluation.evaluate import evaluate  # noqa: E402
from qviz.core.files.export import export_qdq  # noqa: E402
from qviz.core.model.loading import LoadedModel, load_model  # noqa: E402
from qviz.core.progress import run_to_completion  # noqa: E402
from qviz.core.quant.formats import Granularity, NumberFormat, PerGroup, PerTensor  # noqa: E402
from qviz.core.stats.collect import CalibrationStats, collect_stats  # noqa: E402
from qviz.core.transforms.plan import transform_model  # noqa: E402
from qviz.core.transforms.settings import NO_TRANSFORMS, SmoothQuant, Transforms  # noqa: E402
from tools.make_decoder import (  # noqa: E402
    data_paths,
    decoder_spec,
    write_block_and_data,
    write_decoder,
)
from tools.synthetic.block import BlockSpec  # noqa: E402

BASE = QuantConfig()


INT8 = NumberFormat()


def acts(method: Method, t: Transforms = NO_TRANSFORMS) -> TensorConfig:
    return replace(BASE.activations, spec=MethodSpec(method), transforms=t)


def weights(fmt: NumberFormat = INT8, gran: Granularity | None = None,
            t: Transforms = NO_TRANSFORMS) -> TensorConfig:
    return replace(BASE.weights, fmt=fmt, granularity=gran or BASE.weights.granularity,
                   transforms=t)


def batches(path: Path, names: list[str], size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    arrays = np.load(path)
    n = len(arrays[names[0]])
    for start in range(0, n, size):
        yield {k: arrays[k][start : start + size] for k in names}


def plain_ort(float_path: Path, qdq: Path, data: Path, names: list[str]
              ) -> tuple[float, float, float | None]:
    """(output SQNR dB, top-1 agreement %, accuracy % or None) of the exported model against
    the original float model, each run by its own plain ONNX Runtime session."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    f_sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    q_sess = ort.InferenceSession(str(qdq), so, providers=["CPUExecutionProvider"])
    sig = err = 0.0
    agree = total = correct = 0
    labels = np.load(data).get("labels") if "labels" in np.load(data).files else None
    for i, feeds in enumerate(batches(data, names)):
        f = f_sess.run(None, feeds)[0].astype(np.float64)
        q = q_sess.run(None, feeds)[0].astype(np.float64)
        sig += float((f * f).sum())
        err += float(((f - q) ** 2).sum())
        fa, qa = f.argmax(-1), q.argmax(-1)
        agree += int((fa == qa).sum())
        total += fa.size
        if labels is not None:
            lab = labels[i * 64 : i * 64 + len(qa)]
            correct += int((qa == lab).sum())
    acc = 100.0 * correct / total if labels is not None else None
    return 10 * np.log10(sig / err), 100.0 * agree / total, acc


def measure(model: LoadedModel, stats: CalibrationStats, data: Dataset, data_path: Path,
            config: QuantConfig, out: Path) -> tuple[str, float]:
    t = time.perf_counter()
    plan = transform_model(model, stats, config)
    results = analyze(plan.model, plan.stats, config)
    elapsed = time.perf_counter() - t
    ev = run_to_completion(evaluate(plan.model, results, data, latency=False))
    export_qdq(plan.model, results, out)
    names = [i.name for i in model.inputs]
    sqnr, agree, acc = plain_ort(Path(model.source), out, data_path, names)
    o = ev.outputs[0]
    acc_text = "" if acc is None else (
        f"  accuracy {acc:6.2f} % (reported {o.quantized_accuracy:.2f} %, "
        f"float {o.float_accuracy:.2f} %)")
    text = (f"SQNR ORT {sqnr:6.2f} dB (reported {o.sqnr_db:6.2f})  top-1 agreement "
            f"{agree:6.2f} %{acc_text}  [analysis {elapsed:.1f} s]")
    return text, sqnr


def calibrate(model: LoadedModel, path: Path, gram: bool) -> CalibrationStats:
    data = load_data(path, model.inputs)
    return run_to_completion(collect_stats(model, data, gram=gram))


def block(tmp: Path) -> None:
    print("== planted-outlier block (hidden 64, fc1 256; channels 2, 14, 49 at 10x, 31.6x, "
          "100x), int8 per-channel weights, uint8 activations")
    model_path, calib, evaluation = write_block_and_data(BlockSpec(), tmp / "block.onnx")
    model = load_model(model_path)
    stats = calibrate(model, calib, gram=False)
    data = load_data(evaluation, model.inputs)
    for method in (Method.ENTROPY, Method.MSE, Method.MINMAX):
        row = {}
        for label, t in (("none", Transforms()),
                         ("SmoothQuant auto", Transforms(smoothquant=SmoothQuant(None)))):
            cfg = QuantConfig(weights=weights(), activations=acts(method, t))
            text, sqnr = measure(model, stats, data, evaluation, cfg,
                                 tmp / f"block_{method.value}_{len(row)}.onnx")
            row[label] = sqnr
            print(f"  {method.value:8s} {label:17s} {text}")
        gain = row["SmoothQuant auto"] - row["none"]
        print(f"  {method.value:8s} SmoothQuant auto gains {gain:+.2f} dB in plain ORT")


def demo(tmp: Path) -> None:
    print("== demo CNN, int4 per-tensor weights, uint8 MSE activations; calibrated on images "
          "0-999, evaluated on 1000-1999")
    arrays = np.load(demo_paths().data)
    calib, evaluation = tmp / "demo_calib.npz", tmp / "demo_eval.npz"
    np.savez(calib, **{k: v[:1000] for k, v in arrays.items()})
    np.savez(evaluation, **{k: v[1000:] for k, v in arrays.items()})
    model = load_model(demo_paths().model)
    stats = calibrate(model, calib, gram=True)
    data = load_data(evaluation, model.inputs)
    int4 = NumberFormat(bits=4)
    for label, w, a in (
        ("none", Transforms(), Transforms()),
        ("equalization", Transforms(), Transforms(equalize=True)),
        ("bias correction", Transforms(bias_correction=True), Transforms()),
        ("equalization + bias corr.", Transforms(bias_correction=True), Transforms(equalize=True)),
        ("GPTQ", Transforms(gptq=True), Transforms()),
    ):
        cfg = QuantConfig(weights=weights(int4, PerTensor(), w), activations=acts(Method.MSE, a))
        text, _ = measure(model, stats, data, evaluation, cfg, tmp / f"demo_{len(label)}.onnx")
        print(f"  {label:26s} {text}")


def decoder(tmp: Path, path: Path | None) -> None:
    if path is None:
        path = write_decoder(decoder_spec(), tmp / "tiny.onnx")[0]
    calib, evaluation = data_paths(path)
    model = load_model(path)
    print(f"== synthetic decoder {path.name} ({sum(layer.param_count for layer in model.layers):,}"
          " weights in its layers)")
    stats = calibrate(model, calib, gram=True)
    data = load_data(evaluation, model.inputs)
    w8a8 = [("W8A8 (MSE)", Transforms()),
            ("W8A8 (MSE) + SmoothQuant auto", Transforms(smoothquant=SmoothQuant(None)))]
    for label, t in w8a8:
        cfg = QuantConfig(weights=weights(), activations=acts(Method.MSE, t))
        text, _ = measure(model, stats, data, evaluation, cfg, tmp / f"dec_{len(label)}.onnx")
        print(f"  {label:32s} {text}")
    float_acts = replace(BASE.activations, quantize=False)
    for label, t in (("int4 weight-only, rounding", Transforms()),
                     ("int4 weight-only, GPTQ", Transforms(gptq=True))):
        cfg = QuantConfig(weights=weights(NumberFormat(bits=4), PerGroup(32), t),
                          activations=float_acts)
        text, _ = measure(model, stats, data, evaluation, cfg, tmp / f"dec_w4_{len(label)}.onnx")
        print(f"  {label:32s} {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", type=Path, help="a decoder made by tools/make_decoder.py "
                        "(its .calib.npz and .eval.npz beside it)")
    parser.add_argument("--only", choices=["block", "demo", "decoder"], action="append")
    args = parser.parse_args(argv)
    parts = args.only or ["block", "demo", "decoder"]
    with tempfile.TemporaryDirectory(prefix="qviz-bench-transforms-") as tmp:
        if "block" in parts:
            block(Path(tmp))
        if "demo" in parts:
            demo(Path(tmp))
        if "decoder" in parts:
            decoder(Path(tmp), args.decoder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
