"""Exports checked against the runtimes that consume them: the Q/DQ model in plain
onnxruntime, the overrides through onnxruntime's own quantize_static, the TensorRT cache parsed
back; and the report's files."""

from __future__ import annotations

import json
import math
import xml.dom.minidom
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, quantize_static

from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, load_data, random_data
from qviz.core.demo import demo_paths
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.evaluate import Evaluation, Metric, evaluate
from qviz.core.files import export as export
from qviz.core.files import svg
from qviz.core.files.report import Outcome, build_report, write_report
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import (
    Granularity,
    NumberFormat,
    PerAxis,
    PerGroup,
    PerTensor,
)
from qviz.core.quant.quantize import quantize
from qviz.core.runtime.sessions import SessionConfig
from qviz.core.stats.collect import collect_stats, run_to_completion

try:  # works whether or not tests/ is a package
    from tests.core import model_factory
except ImportError:
    import model_factory  # type: ignore[no-redef]

ASYM_U8 = NumberFormat.parse("uint8", symmetric=False)


def config(weights: Granularity, activations: NumberFormat) -> QuantConfig:
    return QuantConfig(
        weights=TensorConfig(MethodSpec(Method.MINMAX), weights, NumberFormat()),
        activations=TensorConfig(MethodSpec(Method.PERCENTILE, 99.9), PerTensor(), activations),
    )


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("export")
    model = load_model(model_factory.save(model_factory.make_conv_net(), tmp / "conv_net.onnx"))
    data = random_data(model.inputs, 32)
    stats = run_to_completion(collect_stats(model, data))
    return model, data, stats


# --- ONNX Runtime TensorQuantOverrides ---------------------------------------------------------


class _Reader(CalibrationDataReader):
    def __init__(self, data: Dataset) -> None:
        self._batches = iter(list(data.batches(8)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


@pytest.mark.parametrize(
    ("weights", "activations"),
    [
        (PerAxis(), ASYM_U8),
        (PerTensor(), NumberFormat()),
    ],
    ids=["per-channel-w_uint8-asym-a", "per-tensor-w_int8-sym-a"],
)
def test_quantize_static_with_overrides_reproduces_qviz(
    conv_net, tmp_path: Path, weights: Granularity, activations: NumberFormat
) -> None:
    model, data, stats = conv_net
    results = analyze(model, stats, config(weights, activations))
    path = tmp_path / "overrides.json"
    export.export_ort_overrides(results, path, model)

    out = tmp_path / "ort_quantized.onnx"
    quantize_static(str(model.source), str(out), _Reader(data),
                    **export.load_ort_quantize_options(path))

    inits = _initializers(out)
    for r in results:
        scale, zp = inits[f"{r.name}_scale"], inits[f"{r.name}_zero_point"]
        assert scale.dtype == np.float32
        assert scale.tobytes() == r.qparams.scale.tobytes(), r.name
        assert zp.dtype == r.qparams.zero_point.dtype
        np.testing.assert_array_equal(zp, r.qparams.zero_point)
        if r.kind is TensorKind.WEIGHT:
            expected = quantize(model.weight(r.name), r.qparams, r.config.fmt)
            np.testing.assert_array_equal(inits[f"{r.name}_quantized"], expected)

    # ORT's graph quantizes exactly qviz's tensors, so in simulation it computes what qviz's
    # own Q/DQ graph computes, bit for bit.
    export.export_qdq(model, results, tmp_path / "qviz.onnx")
    feeds = next(iter(data.batches(32)))
    opts = SessionConfig.for_simulation().options()
    ours = ort.InferenceSession(str(tmp_path / "qviz.onnx"), opts).run(None, feeds)[0]
    theirs = ort.InferenceSession(str(out), opts).run(None, feeds)[0]
    np.testing.assert_array_equal(ours, theirs)


def test_ort_overrides_json_types(conv_net, tmp_path: Path) -> None:
    model, _, stats = conv_net
    results = analyze(model, stats, config(PerAxis(), ASYM_U8))
    path = tmp_path / "o.json"
    export.export_ort_overrides(results, path, model)
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1
    w = doc["TensorQuantOverrides"]["conv1.weight"]
    assert len(w) == 4 and w[0]["axis"] == 0 and w[0]["quant_type"] == "QInt8"
    assert all("symmetric" not in d for d in w)  # ORT rejects it next to scale/zero_point
    loaded = export.load_ort_overrides(path)
    assert isinstance(loaded["x"][0]["scale"], np.ndarray)
    assert loaded["x"][0]["scale"].dtype == np.float32
    assert loaded["x"][0]["zero_point"].dtype == np.uint8
    assert loaded["conv1.weight"][1]["zero_point"].dtype == np.int8


@pytest.mark.parametrize(
    "override",
    [
        TensorConfig(MethodSpec(), PerTensor(), NumberFormat.parse("int6")),
        TensorConfig(MethodSpec(), PerGroup(2),
                     NumberFormat.parse("int4")),
    ],
    ids=["int6", "per-group"],
)
def test_ort_overrides_refuse_what_ort_cannot_express(
    conv_net, tmp_path: Path, override: TensorConfig
) -> None:
    model, _, stats = conv_net
    cfg = QuantConfig().with_override("conv2.weight", override)
    results = analyze(model, stats, cfg)
    path = tmp_path / "o.json"
    with pytest.raises(QvizError, match=r"conv2\.weight"):
        export.export_ort_overrides(results, path)
    assert not path.exists()


# --- TensorRT calibration cache ------------------------------------------------------------------


def test_trt_cache_parses_back_to_the_float32_scales(conv_net, tmp_path: Path) -> None:
    model, _, stats = conv_net
    cfg = config(PerAxis(), NumberFormat()).with_override(
        "r1", TensorConfig(MethodSpec(Method.MINMAX), PerTensor(), ASYM_U8)
    )
    results = analyze(model, stats, cfg)
    path = tmp_path / "calib.cache"
    export.export_trt_cache(results, path)

    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    header, scales = export.read_trt_cache(path)
    assert header == lines[0]
    acts = {r.name: r for r in results if r.kind is TensorKind.ACTIVATION}
    assert list(scales) == list(acts)  # activations only, in graph order
    for line in lines[1:]:
        name, value = line.split(": ")
        assert len(value) == 8 and int(value, 16) == np.float32(scales[name]).view(np.uint32)
    # Symmetric int8: TensorRT's scale is qviz's, bit for bit.
    for name in ("x", "flat"):
        assert np.float32(scales[name]).tobytes() == acts[name].qparams.scale.tobytes()
    # Asymmetric: the symmetric range covering qviz's, max(|lo|, |hi|) / 127.
    r1 = acts["r1"]
    s, zp = float(r1.qparams.scale), float(r1.qparams.zero_point)
    lo, hi = (0 - zp) * s, (255 - zp) * s
    assert scales["r1"] == np.float32(max(abs(lo), abs(hi)) / 127)
    assert zp == 0 and scales["r1"] == np.float32(255 * s / 127)  # post-ReLU: [0, hi]


def test_trt_cache_header_and_refusals(conv_net, tmp_path: Path) -> None:
    model, _, stats = conv_net
    results = analyze(model, stats, QuantConfig())
    text = export.trt_cache_text(results, trt_version="10030", calibrator="MinMaxCalibration")
    assert text.startswith("TRT-10030-MinMaxCalibration\n")
    only_weights = [r for r in results if r.kind is TensorKind.WEIGHT]
    with pytest.raises(QvizError, match="empty"):
        export.export_trt_cache(only_weights, tmp_path / "c.cache")
    assert not (tmp_path / "c.cache").exists()


# --- Q/DQ model in plain onnxruntime ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, Dataset, list[TensorResult]]:
    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=256))
    results = analyze(model, stats, QuantConfig())
    return model, data, results


N_EVAL = 1000  # of the demo's 2000 labelled images: enough to tell kernels apart, faster


def _plain_accuracy(path: Path, data: Dataset, options: ort.SessionOptions | None) -> float:
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    correct = total = 0
    assert data.labels is not None
    for feeds in data.batches(250):
        if total >= N_EVAL:
            break
        logits = session.run(None, feeds)[0]
        labels = data.labels[total:total + len(logits)]
        correct += int(np.sum(np.argmax(logits, axis=1) == labels))
        total += len(logits)
    return 100.0 * correct / total


@pytest.mark.parametrize("native", [False, True], ids=["simulation", "native"])
def test_exported_qdq_reproduces_the_evaluated_accuracy(demo, tmp_path: Path, native: bool) -> None:
    """The file opened in plain onnxruntime gives exactly the accuracy qviz reported: with
    default session options (ORT's fused INT8 kernels) the native number, with optimizations
    off the simulated one."""
    model, data, results = demo
    path = tmp_path / "demo_qdq.onnx"
    qdq = export.export_qdq(model, results, path)
    assert not qdq.simulated
    assert not list(path.parent.glob("*.data"))  # one self-contained file

    ev = run_to_completion(evaluate(model, results, data, native=native, latency=False,
                                    batch_size=250, limit=N_EVAL))
    assert ev.n_samples == N_EVAL
    options = None if native else SessionConfig.for_simulation().options()  # None: defaults
    assert _plain_accuracy(path, data, options) == ev.quantized_metrics[Metric.ACCURACY]


def test_failed_qdq_export_leaves_no_file(demo, tmp_path: Path) -> None:
    model, _, results = demo
    nf4_act = next(r for r in results if r.kind is TensorKind.ACTIVATION)
    bad = TensorResult(nf4_act.name, nf4_act.layer, nf4_act.kind,
                       TensorConfig(fmt=NumberFormat.parse("nf4")), nf4_act.qparams,
                       nf4_act.metrics)
    with pytest.raises(QvizError):
        export.export_qdq(model, [bad], tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


# --- report -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(demo) -> Evaluation:
    model, data, results = demo
    return run_to_completion(evaluate(model, results, data, native=False, latency=True,
                                      latency_repeats=3, batch_size=256, limit=500))


def _svg_ok(path: Path) -> None:
    root = xml.dom.minidom.parse(str(path)).documentElement
    assert root.tagName == "svg"


def test_report_folder_has_html_markdown_json_and_svgs(demo, evaluated, tmp_path: Path) -> None:
    model, _, results = demo
    criteria = [Criterion.parse("accuracy_drop<=50"), Criterion.parse("sqnr>=1000")]
    report = build_report(model, results, evaluated, config=QuantConfig(), criteria=criteria)
    assert report.outcome is Outcome.FAIL  # the impossible SQNR bar fails
    out = tmp_path / "report"
    written = write_report(report, out)
    names = sorted(p.name for p in written)
    assert names == ["depth.svg", "report.html", "report.json", "report.md", "sqnr.svg"]
    assert sorted(p.name for p in out.iterdir()) == names  # nothing temporary left
    for name in ("depth.svg", "sqnr.svg"):
        _svg_ok(out / name)
    page = (out / "report.html").read_text()
    assert "src='sqnr.svg'" in page and "src='depth.svg'" in page and "FAIL" in page
    md = (out / "report.md").read_text()
    assert "![SQNR per quantized tensor](sqnr.svg)" in md
    doc = json.loads((out / "report.json").read_text())
    assert doc["verdict"] == "FAIL"
    assert [c["passed"] for c in doc["criteria"]] == [True, False]
    assert len(doc["tensors"]) == len(results)
    assert doc["evaluation"]["samples"] == 500
    first = results[0]
    assert doc["tensors"][0]["sqnr_db"] == pytest.approx(first.metrics.sqnr_db)

    # Writing again into the existing folder replaces the files in place.
    write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == names


def test_report_page_with_sibling_images(demo, evaluated, tmp_path: Path) -> None:
    model, _, results = demo
    report = build_report(model, results, evaluated)
    written = write_report(report, tmp_path / "int8.html")
    assert sorted(p.name for p in written) == [
        "int8.depth.svg", "int8.html", "int8.json", "int8.sqnr.svg"]
    page = (tmp_path / "int8.html").read_text()
    for name in ("int8.sqnr.svg", "int8.depth.svg"):
        assert f"src='{name}'" in page
        _svg_ok(tmp_path / name)
    md = write_report(report, tmp_path / "int8.md")
    assert (tmp_path / "int8.md") in md


def test_report_without_evaluation(demo, tmp_path: Path) -> None:
    model, _, results = demo
    report = build_report(model, results)
    assert report.outcome is None and [p.key for p in report.plots] == ["sqnr"]
    write_report(report, tmp_path / "r.md")
    assert "Not measured" in (tmp_path / "r.md").read_text()
    with pytest.raises(QvizError, match="need an evaluation"):
        build_report(model, results, criteria=[Criterion.parse("sqnr>=10")])
    with pytest.raises(QvizError, match=r"not '\.pdf'"):
        write_report(report, tmp_path / "r.pdf")


def test_svg_charts_handle_infinite_and_missing_values() -> None:
    text = svg.bar_chart(["a", "b", "c"], [10.0, math.inf, None], title="t & <u>", y_label="dB")
    assert "∞" in text and "t &amp; &lt;u&gt;" in text
    xml.dom.minidom.parseString(text)
    line = svg.line_chart(["a", "b", "c"], [svg.Series("s", (1.0, None, 3.0))], title="t",
                          y_label="y")
    assert line.count("<polyline") == 0  # the gap splits the curve into single points
    xml.dom.minidom.parseString(line)
    assert svg.nice_ticks(0, 47) == [0, 10, 20, 30, 40, 50]
