"""PyTorch import: TorchScript, torch.export programs and factories become ONNX graphs whose
outputs match PyTorch's and whose layers carry module-path names."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.runtime.sessions import DATA_FOLDER_KEY

torch = pytest.importorskip("torch")
# Users still hand us TorchScript; the tests make some with the (deprecated) tracer.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
pytest.importorskip("onnxscript")

try:  # works whether or not tests/ is a package
    from tests.core import torch_models
except ImportError:
    import torch_models

REPO = Path(__file__).resolve().parents[2]
FACTORY = "tests.core.torch_models:make_net"
NET_LAYERS = ["features.0", "features.3", "classifier.1", "classifier.3"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # "tests.core.torch_models" is importable from the checkout's root, as with `python -m`.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return torch_models.make_net().eval()


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def run_onnx(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    if model.data_dir is not None:  # weights in the export's data file
        options.add_session_config_entry(DATA_FOLDER_KEY, str(model.data_dir))
    session = ort.InferenceSession(
        model.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {model.inputs[0].name: x})[0]


def run_torch(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_factory_with_state_dict(tmp_path: Path, sample: dict[str, np.ndarray]) -> None:
    reference = torch_models.make_net(seed=1).eval()
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    model = load_model(FACTORY, sample=sample, state_dict=weights)
    assert [layer.name for layer in model.layers] == NET_LAYERS
    assert [layer.op_type for layer in model.layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    assert str(model.source) == FACTORY
    assert len(model.sha256) == 64
    assert model.notes == ()
    # The input keeps the data's name and a dynamic batch; BatchNorm was folded away.
    assert model.inputs[0].name == "x" and model.inputs[0].shape == (None, 3, 8, 8)
    assert "BatchNormalization" not in {n.op_type for n in model.model.graph.node}
    for n in (1, 3):
        x = batch(n)
        np.testing.assert_allclose(run_onnx(model, x), run_torch(reference, x), atol=1e-4)
    # Different weights, different fingerprint.
    assert model.sha256 != load_model(FACTORY, sample=sample).sha256


def test_torchscript_file(tmp_path: Path, net: torch.nn.Module, sample) -> None:
    path = tmp_path / "net.pt"
    torch.jit.trace(net, torch.from_numpy(sample["x"])).save(str(path))
    model = load_model(path, sample=sample)
    assert model.source == path
    assert [layer.name for layer in model.layers] == NET_LAYERS
    assert model.inputs[0].name == "x" and model.inputs[0].shape[0] is None
    x = batch(2)
    np.testing.assert_allclose(run_onnx(model, x), run_torch(net, x), atol=1e-4)


def test_export_program_file(tmp_path: Path, net: torch.nn.Module, sample) -> None:
    path = tmp_path / "net.pt2"
    example = torch.from_numpy(batch(2, seed=5))
    program = torch.export.export(
        net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    # No sample: the program's own example inputs are used, its names kept.
    model = load_model(path)
    assert [layer.name for layer in model.layers] == NET_LAYERS
    assert model.inputs[0].shape == (None, 3, 8, 8)
    x = batch(4)
    np.testing.assert_allclose(run_onnx(model, x), run_torch(net, x), atol=1e-4)
    # With a sample, the input is renamed after it.
    renamed = load_model(path, sample={"image": sample["x"]})
    assert renamed.inputs[0].name == "image"


def test_attention_factory_names_and_activation_matmuls() -> None:
    x = np.random.default_rng(2).standard_normal((1, 5, 8))  # float64 in the data file
    model = load_model("tests.core.torch_models:make_attention", sample={"x": x})
    by_op = [(layer.name, layer.weight is None) for layer in model.layers]
    assert by_op[0] == ("qkv", False) and by_op[-1] == ("out", False)
    assert [w for _, w in by_op].count(True) == 2  # q k^T and probs v
    reference = torch_models.make_attention().eval()
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(run_onnx(model, x32), run_torch(reference, x32), atol=1e-4)


def test_fixed_batch_fallback_is_noted() -> None:
    x = np.ones((1, 12), np.float32)
    model = load_model("tests.core.torch_models:make_fixed_batch_net", sample={"x": x})
    assert model.inputs[0].shape == (1, 12)
    assert any("fixed batch size" in note for note in model.notes)


def test_factory_needs_a_sample() -> None:
    with pytest.raises(QvizError, match="needs one sample"):
        load_model(FACTORY)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.core.no_such_module:make", "cannot import 'tests.core.no_such_module'"),
        ("tests.core.torch_models:no_such_factory", "has no callable 'no_such_factory'"),
        ("tests.core.torch_models:make_not_a_module", "not a torch.nn.Module"),
    ],
)
def test_bad_factories(spec: str, message: str, sample) -> None:
    with pytest.raises(QvizError, match=message):
        load_model(spec, sample=sample)


def test_state_dict_that_does_not_fit(tmp_path: Path, sample) -> None:
    weights = tmp_path / "other.pt"
    torch.save(torch_models.make_attention().state_dict(), weights)
    with pytest.raises(QvizError, match="does not fit the model"):
        load_model(FACTORY, sample=sample, state_dict=weights)


def test_state_dict_with_pickled_code_is_refused(tmp_path: Path, sample) -> None:
    weights = tmp_path / "pickled.pt"
    torch.save({"net": torch_models.make_net()}, weights)  # a module object: needs unpickling
    with pytest.raises(QvizError, match="weights only"):
        load_model(FACTORY, sample=sample, state_dict=weights)


def test_state_dict_only_goes_with_factories(tmp_path: Path, net, sample) -> None:
    path = tmp_path / "net.pt"
    torch.jit.trace(net, torch.from_numpy(sample["x"])).save(str(path))
    with pytest.raises(QvizError, match="state dict only goes with"):
        load_model(path, sample=sample, state_dict=path)


@pytest.mark.parametrize("name", ["junk.pt", "junk.pt2"])
def test_garbage_torch_files(tmp_path: Path, name: str, sample) -> None:
    path = tmp_path / name
    path.write_bytes(b"definitely not torch" * 20)
    with pytest.raises(QvizError, match="is not a"):
        load_model(path, sample=sample)


def test_plain_state_dict_given_as_model_explains(tmp_path: Path, sample) -> None:
    path = tmp_path / "weights.pth"
    torch.save(torch_models.make_net().state_dict(), path)
    with pytest.raises(QvizError, match=r"package\.module:factory"):
        load_model(path, sample=sample)


def test_missing_torch_gives_install_hint(monkeypatch: pytest.MonkeyPatch, sample) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(QvizError, match=r"pip install 'qviz\[torch\]'"):
        load_model(FACTORY, sample=sample)


def test_exported_weights_stay_in_the_exports_folder() -> None:
    """A PyTorch model is exported with its weights in a data file (a model past 2 GB can
    only be exported that way): the folder lives as long as the model, then goes."""
    import gc

    sample = {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    model = load_model("tests.core.torch_models:make_wide_mlp", sample=sample)
    folder = model.data_dir
    assert folder is not None and folder.is_dir()
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    expected = run_torch(torch_models.make_wide_mlp(), x)
    np.testing.assert_allclose(run_onnx(model, x), expected, rtol=1e-4, atol=1e-5)
    del model
    gc.collect()
    assert not folder.exists()
