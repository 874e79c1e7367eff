"""A quantized model and its float original with their weights in external data files: the
float original's weights stay on disk (matched memory-mapped), the quantized file's are read
(its float original may be derived from them), and a missing data file is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.data.dataset import load_data
from qviz.core.errors import QvizError
from qviz.core.graph.qdq import build_qdq, save_qdq_model
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.quant.formats import NumberFormat, PerAxis
from qviz.core.stats.collect import collect_stats, run_to_completion
from tests.core import model_factory as mf


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=0)
    return path


def _quantized(folder: Path, model: LoadedModel) -> Path:
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    np.savez(folder / "x.npz", x=x)
    stats = run_to_completion(collect_stats(model, load_data(folder / "x.npz", model.inputs)))
    config = QuantConfig(
        weights=TensorConfig(fmt=NumberFormat.parse("int8"), granularity=PerAxis()),
        activations=TensorConfig(fmt=NumberFormat.parse("uint8")),
    )
    out = folder / "q.onnx"
    save_qdq_model(build_qdq(model, analyze(model, stats, config)), out)
    return out


def test_a_float_original_with_external_data_is_matched_from_disk(tmp_path: Path) -> None:
    float_path = _save_external(mf.make_mlp(), tmp_path / "mlp.onnx")
    float_model = load_model(float_path)
    assert float_model.data_dir == tmp_path  # the weights stay in mlp.onnx.data
    qdq_path = _quantized(tmp_path, float_model)

    imported = load_model(qdq_path, float_model=float_path)
    assert imported.imported is not None and not imported.imported.derived
    assert imported.data_dir == tmp_path
    np.testing.assert_array_equal(imported.weight("fc1.weight"), float_model.weight("fc1.weight"))

    # Matching compares the float original's weights read from its data file.
    other = tmp_path / "other"
    other.mkdir()
    retrained = _save_external(mf.make_mlp(seed=9), other / "mlp.onnx")
    with pytest.raises(QvizError, match=r"weight 'fc1\.weight' differs") as info:
        load_model(qdq_path, float_model=retrained)
    assert "\n" not in str(info.value)


def test_a_quantized_model_with_external_data_opens_derived(tmp_path: Path) -> None:
    float_model = load_model(mf.save(mf.make_mlp(), tmp_path / "mlp.onnx"))
    qdq = onnx.load(str(_quantized(tmp_path, float_model)))
    folder = tmp_path / "ext"
    folder.mkdir()
    path = _save_external(qdq, folder / "q.onnx")

    derived = load_model(path)
    assert derived.imported is not None and derived.imported.derived
    w = derived.weight("fc1.weight")
    assert np.abs(w - float_model.weight("fc1.weight")).max() < 0.05  # dequantized int8

    (folder / "q.onnx.data").unlink()
    with pytest.raises(QvizError, match=r"external data file 'q\.onnx\.data'") as info:
        load_model(path)
    assert "\n" not in str(info.value)
