"""What the calibration-method tests share: sample data, formats, and onnxruntime's own
calibrators run on the same values (the reference qviz's methods are checked against)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.quantization.calibrate import CalibrationDataReader, HistogramCollector

from qviz.core.quant.formats import NumberFormat

INT8 = NumberFormat.parse("int8")
INT8_ASYM = NumberFormat.parse("int8", symmetric=False)
UINT8_ASYM = NumberFormat.parse("uint8", symmetric=False)
INT4 = NumberFormat.parse("int4")
E4M3 = NumberFormat.parse("fp8_e4m3fn")
FORMATS = (INT8, INT8_ASYM, UINT8_ASYM, INT4, E4M3)

# Sizes with no tie in the tails: (100 - p) / 200 * N is never an integer, so ORT's float
# CDF and ours cannot fall on opposite sides of an exact boundary.
N = 200_003


def sample_data(kind: str, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "shifted":
        return (rng.standard_normal(n) * 2.0 + 1.0).astype(np.float32)
    return rng.laplace(size=n).astype(np.float32)


def ort_collector(method: str, symmetric: bool, percentile: float, batches) -> tuple:
    collector = HistogramCollector(
        method=method,
        symmetric=symmetric,
        num_bins=2048,
        num_quantized_bins=128,
        percentile=percentile,
        scenario="same",
    )
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress
        for b in batches:
            collector.collect({"x": [b]})
        result = collector.compute_collection_result()["x"]
    hist_edges = collector.histogram_dict["x"][1]
    return (float(result[0]), float(result[1])), float(hist_edges[1] - hist_edges[0])


class OrtReader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def relu_model(path: Path, width: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
