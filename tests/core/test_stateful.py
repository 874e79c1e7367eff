"""A stateful model: a two-layer GRU cell built and exported here, whose state input has a
fixed leading axis before its batch axis (L, batch, H) and which also takes a scalar.

Calibrated, evaluated and measured with its output fed back as the next sample's input
(``--state h_out=h``), the numbers follow PyTorch's own sequential run; the data as the issue
gave it (every input with a leading sample axis, the scalar too) is refused, not misfed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qviz.cli import main
from qviz.core.data.dataset import FeedLayout, load_data
from qviz.core.data.feeding import StateCarry
from qviz.core.model.loading import load_model
from qviz.core.stats.stats_file import load_stats

torch = pytest.importorskip("torch")

F, H, L, C = 3, 4, 2, 5
N = 16
T = 0.5


class StackedGRU(torch.nn.Module):
    """x (batch, F), h (L, batch, H), t () -> y (batch, C), h_out (L, batch, H)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = torch.nn.ModuleList(
            [torch.nn.GRUCell(F if i == 0 else H, H) for i in range(L)]
        )
        self.head = torch.nn.Linear(H, C)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor) -> tuple:
        inp = x * t
        states = []
        for i, cell in enumerate(self.cells):
            inp = cell(inp, h[i])
            states.append(inp)
        return self.head(inp), torch.stack(states)


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("gru")
    torch.manual_seed(0)
    net = StackedGRU().eval()
    path = d / "cell.onnx"
    example = (torch.randn(2, F), torch.zeros(L, 2, H), torch.tensor(T))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net, example, str(path), dynamo=False, opset_version=17,
            input_names=["x", "h", "t"], output_names=["y", "h_out"],
            dynamic_axes={"x": {0: "batch"}, "h": {1: "batch"}, "y": {0: "batch"},
                          "h_out": {1: "batch"}},
        )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, F)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((L, H))).astype(np.float32)
    # PyTorch's own run, one sample after the other, the state carried along.
    ys, head_inputs, h = [], [], torch.from_numpy(h0)[:, None]
    with torch.no_grad():
        for i in range(N):
            y, h = net(torch.from_numpy(x[i : i + 1]), h, torch.tensor(T))
            ys.append(y.numpy())
            head_inputs.append(h[-1].numpy())
    # The data as the issue gave it: a leading sample axis on every input, the scalar too.
    np.savez(d / "issue.npz", x=x, h=np.repeat(h0[None], N, axis=0), t=np.full(N, T, np.float32))
    # Stated: the state's first value given once, the scalar as --const.
    np.savez(d / "stated.npz", x=x, h=h0)
    return {"dir": d, "model": path, "x": x, "h0": h0, "y": np.concatenate(ys),
            "head_inputs": np.concatenate(head_inputs)}


STATE = ["--const", f"t={T}", "--state", "h_out=h"]


def test_signature_gives_each_inputs_batch_axis(cell: dict) -> None:
    model = load_model(cell["model"])
    shapes = {i.name: i.shape for i in model.inputs}
    assert shapes == {"x": (None, F), "h": (L, None, H), "t": ()}
    data = load_data(cell["dir"] / "stated.npz", model.inputs,
                     layout=FeedLayout.parse(constants=[f"t={T}"], states=["h_out=h"]))
    first = next(data.batches(8))
    assert first["x"].shape == (1, F) and first["h"].shape == (L, 1, H) and first["t"].shape == ()


def test_the_carry_reproduces_pytorchs_sequential_run(cell: dict) -> None:
    """The feeding the run loops use, checked against PyTorch output by output."""
    model = load_model(cell["model"])
    data = load_data(cell["dir"] / "stated.npz", model.inputs,
                     layout=FeedLayout.parse(constants=[f"t={T}"], states=["h_out=h"]))
    import onnxruntime as ort

    session = ort.InferenceSession(str(cell["model"]), providers=["CPUExecutionProvider"])
    carry = StateCarry.of(data)
    ys = [carry.run(session, feeds, ["y"])[0] for feeds in data.batches(4)]
    np.testing.assert_allclose(np.concatenate(ys), cell["y"], rtol=1e-5, atol=1e-6)
    # Without the state fed back every sample starts from h0: a different model run.
    stateless = load_data(cell["dir"] / "stated.npz", model.inputs,
                          layout=FeedLayout.parse(constants=[f"t={T}"]))
    plain = np.concatenate([session.run(["y"], dict(b))[0] for b in stateless.batches(4)])
    assert not np.allclose(plain, cell["y"], atol=1e-3)


def test_collect_evaluate_and_measure_statefully(
    cell: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(cell["dir"] / "stated.npz")
    stats_path = tmp_path / "cell.qvstats"
    assert main(["collect", str(cell["model"]), "--data", data, *STATE, "-o", str(stats_path),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "h: float32 (2, 4) per sample on axis 1, then output 'h_out' of the sample before" \
        in err
    stats = load_stats(stats_path)
    assert stats.n_samples == N
    # The head's input is the last layer's new state: its calibrated range is PyTorch's.
    model = load_model(cell["model"])
    head = next(layer for layer in model.layers if layer.name == "head")
    act = stats.tensors[head.activations[0]]
    assert act.min == pytest.approx(float(cell["head_inputs"].min()), rel=1e-5, abs=1e-6)
    assert act.max == pytest.approx(float(cell["head_inputs"].max()), rel=1e-5, abs=1e-6)

    assert main(["evaluate", str(cell["model"]), "--stats", str(stats_path), "--data", data,
                 *STATE, "--json", "--no-latency", "--quiet", "--method", "minmax"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == N
    assert {o["name"] for o in doc["outputs"]} == {"y", "h_out"}
    assert 10.0 < doc["quantized"]["output_sqnr_db"] < 80.0

    assert main(["sensitivity", str(cell["model"]), "--stats", str(stats_path), "--data", data,
                 *STATE, "--limit", "all", "--no-cache", "--json", "--quiet",
                 "--method", "minmax"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == N and len(report["layers"]) == len(model.layers)

    chosen = tmp_path / "mixed.json"
    assert main(["mixed", str(cell["model"]), "--stats", str(stats_path), "--data", data,
                 *STATE, "--min-output-sqnr", "20", "--limit", "all", "--no-cache", "--json",
                 "--quiet", "--method", "minmax", "-o", str(chosen)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == str(chosen) and chosen.is_file()


def test_the_issues_data_is_refused_not_misfed(
    cell: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.qvstats"
    assert main(["collect", str(cell["model"]), "--data", str(cell["dir"] / "issue.npz"),
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "input 't' is a scalar" in err and "--const t=VALUE" in err
    assert not out.exists()
