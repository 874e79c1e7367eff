"""Models whose weights are in files: opened without loading them, run from disk, exported
as .onnx + .onnx.data that plain ONNX Runtime loads; bad files are one clear error.

The tiny synthetic decoder written with external data stands for the multi-gigabyte ones
(bench/bench_scale.py measures those): every path a large model takes is taken here.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import evaluate
from qviz.core.files.export import export_qdq, qdq_files
from qviz.core.graph import qdq_files as qdq_files_module
from qviz.core.graph.qdq import build_qdq, save_qdq_model
from qviz.core.model import external_data
from qviz.core.model.loading import load_model
from qviz.core.progress import run_to_completion
from qviz.core.quant.formats import NumberFormat, PerTensor
from qviz.core.runtime import memory
from qviz.core.runtime.sessions import SessionConfig, build_session, run_session
from qviz.core.stats.collect import collect_stats
from tools import make_decoder
from tools.synthetic.spec import tiny_spec

W8A8_MSE = QuantConfig(
    activations=TensorConfig(
        spec=MethodSpec(Method.MSE),
        granularity=PerTensor(),
        fmt=NumberFormat(signed=False, symmetric=False),
    )
)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny decoder with every tensor of 1 kB or more in ``tiny.onnx.data``."""
    path = tmp_path_factory.mktemp("ext") / "tiny.onnx"
    make_decoder.write_decoder(tiny_spec(), path, builder="onnx", external=True,
                               calib_samples=8, eval_samples=8, data_seq=16)
    return path


def plain_outputs(path: Path, ids: np.ndarray, *, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


def token_ids(decoder: Path) -> np.ndarray:
    return np.load(decoder.with_name("tiny.eval.npz"))["input_ids"]


def test_weights_stay_in_their_file(decoder: Path) -> None:
    model = load_model(decoder)
    assert model.data_dir == decoder.parent
    external = list(external_data.external_tensors(model.model))
    assert external, "the large weights must stay references to the data file"
    assert model.model.ByteSize() < 64 << 10  # the graph alone
    w = model.weight(external[0].name)
    assert not w.flags.writeable  # memory-mapped from the file, not copied
    reference = onnx.load(str(decoder))  # onnx reads the data itself
    ref = {t.name: onnx.numpy_helper.to_array(t) for t in reference.graph.initializer}
    np.testing.assert_array_equal(w, ref[external[0].name])


def test_float_session_from_the_data_folder(decoder: Path) -> None:
    model = load_model(decoder)
    ids = token_ids(decoder)
    session = build_session(model.model, SessionConfig.for_float(), data_dir=model.data_dir)
    (got,) = run_session(session, {"input_ids": ids})
    np.testing.assert_allclose(got, plain_outputs(decoder, ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(QvizError, match="cannot run"):  # without the folder ORT cannot
        build_session(model.model, SessionConfig.for_float())


def test_missing_and_short_data_files_are_one_line(decoder: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "tiny.onnx"
    model_file.write_bytes(decoder.read_bytes())
    with pytest.raises(QvizError, match=r"'tiny\.onnx\.data'.*missing"):
        load_model(model_file)
    data = decoder.with_name("tiny.onnx.data").read_bytes()
    (tmp_path / "tiny.onnx.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(QvizError, match=r"too short.*cut off") as info:
        load_model(model_file)
    assert "\n" not in str(info.value)


def test_a_data_file_outside_the_model_folder_is_refused(decoder: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(decoder), load_external_data=False)
    tensor = next(external_data.external_tensors(proto))
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.data"
    path = tmp_path / "escape.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(QvizError, match="in the model's folder"):
        load_model(path)


def test_a_model_too_large_for_memory_is_refused(decoder: Path, monkeypatch) -> None:
    model = load_model(decoder)
    monkeypatch.setenv(memory.ENV_LIMIT, "0.1")  # 100 kB available
    with pytest.raises(QvizError, match="does not fit in memory") as info:
        build_session(model.model, SessionConfig.for_float(), data_dir=model.data_dir)
    assert "GiB" in str(info.value)


@pytest.fixture(scope="module")
def calibrated(decoder: Path):
    model = load_model(decoder)
    data = load_data(decoder.with_name("tiny.calib.npz"), model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=4))
    return model, stats, analyze(model, stats, W8A8_MSE)


def test_small_additions_stay_in_the_graph(calibrated) -> None:
    """A graph adding little (a sensitivity run's one layer) reads its float weights from the
    model's own folder: nothing is copied."""
    model, _, results = calibrated
    one_layer = [r for r in results if r.layer.name == results[0].layer.name]
    qdq = build_qdq(model, one_layer)
    assert qdq.data_dir == model.data_dir and qdq.keepalive is None
    session = build_session(qdq.model, SessionConfig.for_simulation(), data_dir=qdq.data_dir)
    assert run_session(session, {"input_ids": token_ids_of(model)})[0].shape[-1] == 256


def token_ids_of(model) -> np.ndarray:
    return np.load(Path(model.source).with_name("tiny.eval.npz"))["input_ids"]


def test_qdq_graph_lives_in_a_temporary_folder(calibrated, monkeypatch) -> None:
    model, _, results = calibrated
    monkeypatch.setattr(qdq_files_module, "INLINE_NEW_BYTES", 0)
    from qviz.core.graph import qdq_builder

    monkeypatch.setattr(qdq_builder, "INLINE_NEW_BYTES", 0)
    qdq = build_qdq(model, results)
    assert qdq.data_dir is not None and qdq.data_dir != model.data_dir
    folder = qdq.data_dir
    locations = {external_data.location_of(t) for t in external_data.external_tensors(qdq.model)}
    assert locations == {qdq_files_module.DATA_FILE}  # float tensors were copied in too
    assert qdq.model.ByteSize() < 128 << 10
    del qdq
    import gc

    gc.collect()
    assert not folder.exists()  # the folder goes with the graph


@pytest.fixture(params=["inline", "folder"])
def qdq_mode(request: pytest.FixtureRequest, monkeypatch) -> str:
    """Both ways a large model's Q/DQ graph holds its new tensors (see qdq_files)."""
    if request.param == "folder":
        from qviz.core.graph import qdq_builder

        monkeypatch.setattr(qdq_builder, "INLINE_NEW_BYTES", 0)
    return str(request.param)


def test_export_is_onnx_plus_data_that_plain_ort_runs(calibrated, decoder: Path,
                                                      tmp_path: Path, qdq_mode: str) -> None:
    model, _, results = calibrated
    out = tmp_path / "q.onnx"
    export_qdq(model, results, out)
    assert qdq_files(out) == (out, tmp_path / "q.onnx.data")
    proto = onnx.load(str(out), load_external_data=False)
    assert {external_data.location_of(t) for t in external_data.external_tensors(proto)} == {
        "q.onnx.data"
    }
    ids = token_ids(decoder)
    f = plain_outputs(decoder, ids).reshape(len(ids), -1).astype(np.float64)
    q = plain_outputs(out, ids, optimize=False).reshape(len(ids), -1).astype(np.float64)
    cos = np.sum(f * q, axis=1) / np.linalg.norm(f, axis=1) / np.linalg.norm(q, axis=1)
    assert cos.mean() >= 0.99
    # qviz's simulation is that file run op by op: its output cosine is the same number.
    data = load_data(decoder.with_name("tiny.eval.npz"), model.inputs)
    ev = run_to_completion(evaluate(model, results, data, latency=False, batch_size=8))
    assert ev.outputs[0].cosine == pytest.approx(float(cos.mean()), abs=1e-6)


def test_a_full_disk_leaves_nothing_behind(calibrated, tmp_path: Path, monkeypatch,
                                           qdq_mode: str) -> None:
    model, _, results = calibrated
    qdq = build_qdq(model, results)

    def full(self, tensor, base_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(external_data.DataFileWriter, "copy_from", full)
    with pytest.raises(QvizError, match="no space left on the device; nothing was written") as info:
        save_qdq_model(qdq, tmp_path / "q.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_small_models_still_export_one_file(tmp_path: Path) -> None:
    path = tmp_path / "inline.onnx"
    make_decoder.write_decoder(tiny_spec(), path, builder="onnx", external=False,
                               calib_samples=4, eval_samples=0, data_seq=8)
    model = load_model(path)
    assert model.data_dir is None
    stats = run_to_completion(collect_stats(
        model, load_data(path.with_name("inline.calib.npz"), model.inputs), batch_size=4))
    out = tmp_path / "q.onnx"
    export_qdq(model, analyze(model, stats, W8A8_MSE), out)
    assert qdq_files(out) == (out,)


def test_large_inline_weights_move_to_a_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    from qviz.core.model import loading

    path = tmp_path / "inline.onnx"
    make_decoder.write_decoder(tiny_spec(), path, builder="onnx", external=False,
                               calib_samples=0, eval_samples=0)
    monkeypatch.setattr(loading, "INLINE_LIMIT_BYTES", 1024)
    model = load_model(path)
    assert model.data_dir is not None and model.data_dir != tmp_path
    assert model.model.ByteSize() < 64 << 10
    ids = np.zeros((1, 4), dtype=np.int64)
    session = build_session(model.model, SessionConfig.for_float(), data_dir=model.data_dir)
    np.testing.assert_allclose(run_session(session, {"input_ids": ids})[0],
                               plain_outputs(path, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["short", "memory"])
def test_cli_says_one_line_and_writes_nothing(decoder: Path, tmp_path: Path, case: str) -> None:
    import os
    import subprocess
    import sys

    model = decoder
    env = dict(os.environ)
    if case == "short":
        model = tmp_path / "tiny.onnx"
        model.write_bytes(decoder.read_bytes())
        data = decoder.with_name("tiny.onnx.data").read_bytes()
        (tmp_path / "tiny.onnx.data").write_bytes(data[:-4096])
    else:
        env[memory.ENV_LIMIT] = "0.2"
    out = tmp_path / "out.qvstats"
    proc = subprocess.run(
        [sys.executable, "-m", "qviz", "collect", str(model), "--data",
         str(decoder.with_name("tiny.calib.npz")), "-o", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qviz: error:"), proc.stderr
    assert ("too short" if case == "short" else "does not fit in memory") in lines[0]
    assert not out.exists()
