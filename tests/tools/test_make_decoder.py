"""The synthetic models of tools/make_decoder.py: deterministic, run by plain ONNX Runtime,
opened by qviz, the same function from both builders, outliers where the metadata says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qviz.cli import main as qviz_main
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel, load_model
from tools import make_decoder
from tools.synthetic import block, data, onnx_builder, spec
from tools.synthetic.spec import META_KIND, read_metadata, tiny_spec

TINY = tiny_spec()
# Last-axis absmax of a planted channel over the median channel's, as a multiple of its gain:
# the residual stream it scales varies by channel (0.31-1.2 measured on the tiny decoder).
RATIO_OF_GAIN = (0.2, 2.0)
# No unplanted channel may be this many times the median channel (1.6 measured).
UNPLANTED_MAX = 3.0


def session(
    model: onnx.ModelProto | Path, outputs: list[str] | None = None
) -> ort.InferenceSession:
    """A plain ONNX Runtime session, optionally with extra tensors exposed as outputs."""
    if outputs:
        proto = onnx.load(str(model)) if isinstance(model, Path) else model
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        del proto.graph.output[:]
        proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
        model = proto
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def ids(samples: int, seq: int, seed: int = 5) -> np.ndarray:
    return data.token_ids(TINY.vocab, samples, seq, seed=seed, split=data.Split.EVALUATION)


@pytest.fixture(scope="module")
def torch_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny decoder made through qviz's PyTorch import (about 10 s: the exporter)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("torch") / "tiny.onnx"
    make_decoder.write_decoder(TINY, path, builder="torch", calib_samples=8, eval_samples=4,
                               data_seq=16)
    return path


@pytest.fixture(scope="module")
def onnx_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    make_decoder.write_decoder(TINY, path, builder="onnx", calib_samples=8, eval_samples=4,
                               data_seq=16)
    return path


# ------------------------------------------------------------------------ determinism


def test_generation_is_deterministic_and_seeded() -> None:
    a = onnx_builder.decoder_proto(TINY).SerializeToString()
    assert onnx_builder.decoder_proto(tiny_spec()).SerializeToString() == a
    assert onnx_builder.decoder_proto(tiny_spec(seed=1)).SerializeToString() != a
    assert len(a) < 1_000_000  # "a few hundred kB"


def test_data_is_deterministic_zipf_and_splits_differ() -> None:
    calib = data.token_ids(1000, 64, 32, seed=0, split=data.Split.CALIBRATION)
    assert calib.dtype == np.int64 and calib.shape == (64, 32)
    again = data.token_ids(1000, 64, 32, seed=0, split=data.Split.CALIBRATION)
    np.testing.assert_array_equal(calib, again)
    evaluation = data.token_ids(1000, 64, 32, seed=0, split=data.Split.EVALUATION)
    assert not np.array_equal(calib, evaluation)
    # Zipf: the most frequent token is far above uniform, and most of the vocabulary is rare.
    counts = np.bincount(calib.ravel(), minlength=1000)
    assert counts.max() > 30 * calib.size / 1000
    assert np.count_nonzero(counts) < 1000


def test_written_files_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_decoder.write_decoder(TINY, tmp_path / name / "m.onnx", builder="onnx",
                                   external=True, calib_samples=4, eval_samples=2, data_seq=8)
    for f in ("m.onnx", "m.onnx.data", "m.calib.npz", "m.eval.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


# ------------------------------------------------------------------ ONNX Runtime runs


def test_streamed_external_data_runs_like_the_inline_model(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    written = onnx_builder.write_decoder(TINY, path, external=True)
    assert written == [path, tmp_path / "ext.onnx.data"]
    onnx.checker.check_model(str(path))
    header = onnx.load(str(path), load_external_data=False)
    offsets = [int(e.value) for t in header.graph.initializer for e in t.external_data
               if e.key == "offset"]
    assert offsets and all(o % onnx_builder.ALIGN == 0 for o in offsets)
    x = ids(2, 12)
    inline = session(onnx_builder.decoder_proto(TINY)).run(None, {"input_ids": x})[0]
    streamed = session(path).run(None, {"input_ids": x})[0]
    np.testing.assert_array_equal(streamed, inline)
    assert streamed.shape == (2, 12, TINY.vocab) and np.all(np.isfinite(streamed))


def test_builders_agree_on_the_same_weights(torch_built: Path, onnx_built: Path) -> None:
    a, b = session(torch_built), session(onnx_built)
    for io in (a, b):
        assert [(i.name, i.shape) for i in io.get_inputs()] == [("input_ids", ["batch", "seq"])]
        assert [(o.name, o.shape) for o in io.get_outputs()] == [
            ("logits", ["batch", "seq", TINY.vocab])
        ]
    # Batch and sequence are symbolic: other sizes than the export sample's run too.
    for batch, seq in ((1, 16), (3, 5), (2, TINY.max_seq)):
        x = ids(batch, seq, seed=batch)
        np.testing.assert_allclose(
            a.run(None, {"input_ids": x})[0], b.run(None, {"input_ids": x})[0],
            rtol=1e-4, atol=1e-5,
        )


def test_qviz_opens_both_with_the_same_layers(torch_built: Path, onnx_built: Path) -> None:
    via_torch, direct = load_model(torch_built), load_model(onnx_built)
    assert via_torch.model.producer_name == "pytorch"  # made by qviz's PyTorch import
    for loaded in (via_torch, direct):
        assert [i.name for i in loaded.inputs] == ["input_ids"]
        assert loaded.inputs[0].shape == (None, None)

    def weight_layers(m: LoadedModel) -> list[tuple[str, tuple[int, ...] | None]]:
        return [(layer.name, layer.weight_shape) for layer in m.layers if layer.weight]

    assert weight_layers(via_torch) == weight_layers(direct)
    names = [name for name, _ in weight_layers(direct)]
    assert names[:3] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                         "model.layers.0.self_attn.v_proj"]
    assert names[-1] == "lm_head" and len(names) == 7 * TINY.layers + 1
    # Two activation x activation MatMuls per layer (scores, context) in both.
    for m in (via_torch, direct):
        assert sum(1 for layer in m.layers if layer.weight is None) == 2 * TINY.layers


# ------------------------------------------------------------------ planted outliers


def absmax_ratios(values: np.ndarray) -> np.ndarray:
    """Per last-axis channel: absmax over the median channel's absmax."""
    absmax = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
    return absmax / np.median(absmax)


def check_planted(model_path: Path, feed: dict[str, np.ndarray]) -> None:
    proto = onnx.load(str(model_path))
    plan, tensors = read_metadata(props(proto))
    assert plan and tensors
    outs = session(proto, tensors).run(None, feed)
    planted = sorted(plan)
    for name, values in zip(tensors, outs, strict=True):
        ratios = absmax_ratios(values)
        loudest = sorted(np.argsort(ratios)[-len(planted):].tolist())
        assert loudest == planted, name
        for channel, gain in plan.items():
            assert RATIO_OF_GAIN[0] * gain <= ratios[channel] <= RATIO_OF_GAIN[1] * gain, (
                name, channel, ratios[channel], gain)
        assert np.delete(ratios, planted).max() < UNPLANTED_MAX, name


@pytest.mark.parametrize("which", ["torch_built", "onnx_built"])
def test_planted_channels_are_where_the_metadata_says(
    which: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    proto = onnx.load(str(path))
    meta = props(proto)
    assert meta[META_KIND] == "decoder"
    assert json.loads(meta[spec.META_SPEC])["hidden"] == TINY.hidden
    plan, tensors = read_metadata(meta)
    assert plan == TINY.outlier_plan() and len(plan) == TINY.outliers
    assert len(tensors) == 2 * TINY.layers + 1  # two norms per layer and the final norm
    calib = np.load(make_decoder.data_paths(path)[0])["input_ids"]
    check_planted(path, {"input_ids": calib})


def test_no_outliers_planted_when_asked_for_none() -> None:
    quiet = tiny_spec(outliers=0)
    proto = onnx_builder.decoder_proto(quiet)
    assert read_metadata(props(proto))[0] == {}
    _, tensors = read_metadata(props(proto))
    out = session(proto, tensors[:1]).run(None, {"input_ids": ids(4, 16)})[0]
    assert absmax_ratios(out).max() < UNPLANTED_MAX


def test_outlier_block(tmp_path: Path) -> None:
    path = tmp_path / "block.onnx"
    written = make_decoder.write_block_and_data(block.BlockSpec(), path, calib_samples=16,
                                                eval_samples=8)
    assert [p.name for p in written] == ["block.onnx", "block.calib.npz", "block.eval.npz"]
    proto = onnx.load(str(path))
    plan, tensors = read_metadata(props(proto))
    assert len(plan) == 3 and tensors == [block.NORM_OUTPUT]
    x = np.load(written[1])["hidden_states"]
    assert x.shape == (16, 32, 64) and x.dtype == np.float32
    check_planted(path, {"hidden_states": x})
    out = session(path).run(None, {"hidden_states": x[:2, :5]})[0]
    assert out.shape == (2, 5, 64) and np.all(np.isfinite(out))
    loaded = load_model(path)
    assert [layer.name for layer in loaded.layers] == ["block.mlp.fc1", "block.mlp.fc2"]
    assert loaded.layers[0].activations == (block.NORM_OUTPUT,)
    again = tmp_path / "again.onnx"
    make_decoder.write_block_and_data(block.BlockSpec(), again, calib_samples=16, eval_samples=0)
    assert again.read_bytes() == path.read_bytes()
    assert (tmp_path / "again.calib.npz").read_bytes() == written[1].read_bytes()


# ------------------------------------------------------------------------- sizes, CLI


def test_sizes_from_params() -> None:
    one_b = spec.spec_for_params(1e9)
    assert abs(one_b.params - 1e9) / 1e9 < 0.02
    assert (one_b.hidden, one_b.intermediate, one_b.vocab) == (2048, 5632, 32000)
    small = spec.spec_for_params(22e6)
    assert abs(small.params - 22e6) / 22e6 < 0.1
    assert TINY.params * 4 < 1_000_000


def test_over_2gb_needs_external_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="external data"):
        onnx_builder.write_decoder(spec.spec_for_params(1e9), tmp_path / "x.onnx",
                                   external=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_files(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    made = 0

    def failing(s: spec.DecoderSpec, w: spec.WeightSpec) -> np.ndarray:
        nonlocal made
        made += 1
        if made > 5:
            raise OSError("No space left on device")
        return original(s, w)

    original = spec.make_weight
    monkeypatch.setattr(spec, "make_weight", failing)
    with pytest.raises(QvizError, match="No space left on device; nothing was written"):
        onnx_builder.write_decoder(TINY, tmp_path / "m.onnx", external=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_model_and_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.onnx"
    code = make_decoder.main(["-o", str(out), "--builder", "onnx", "--layers", "1",
                              "--outliers", "2", "--calib-samples", "3", "--eval-samples", "2",
                              "--data-seq", "10", "--seed", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 layers" in printed and "peak RSS" in printed
    meta = props(onnx.load(str(out)))
    assert len(json.loads(meta[spec.META_CHANNELS])) == 2
    assert np.load(tmp_path / "d.calib.npz")["input_ids"].shape == (3, 10)
    assert np.load(tmp_path / "d.eval.npz")["input_ids"].shape == (2, 10)


@pytest.mark.parametrize("argv", [
    ["--data-seq", "1000"],  # longer than --seq
    ["--hidden", "65"],  # not heads x an even head size
    ["--outliers", "-1"],
    ["--calib-samples", "-2"],
])
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    out = tmp_path / "bad.onnx"
    assert make_decoder.main(["-o", str(out), "--builder", "onnx", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("make_decoder.py: error:") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["torch_built", "onnx_built"])
def test_qviz_collect_and_report_run_on_the_tiny_decoder(
    which: str, request: pytest.FixtureRequest, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path: Path = request.getfixturevalue(which)
    stats = tmp_path / "tiny.qvstats"
    calib = make_decoder.data_paths(path)[0]
    assert qviz_main(["collect", str(path), "--data", str(calib), "-o", str(stats),
                      "--quiet"]) == 0
    capsys.readouterr()
    assert qviz_main(["report", str(stats), "--method", "entropy", "--granularity",
                      "per-channel", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    _, planted = read_metadata(props(onnx.load(str(path))))
    activations = {t["name"]: t for t in report["tensors"] if t["kind"] == "activation"}
    assert set(planted) <= set(activations)
    layers = {activations[t]["layer"] for t in planted}
    assert "lm_head" in layers and "model.layers.0.self_attn.q_proj" in layers
    weights = [t for t in report["tensors"] if t["kind"] == "weight"]
    assert len(weights) == 7 * TINY.layers + 1
    assert all(np.isfinite(t["sqnr_db"]) for t in report["tensors"])
