"""The one runtime module: session options per purpose, the kernel precision switch, threads,
sessions from files (external data) and protos, running, extra outputs, and the CPU
detection with its override (context manager, setter, environment variable)."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qviz.core.errors import QvizError
from qviz.core.runtime import cpu
from qviz.core.runtime.cpu import (
    ENV_VAR,
    assume_u8s8_saturation,
    detect_u8s8_saturation,
    probe_model,
    set_u8s8_saturation,
    u8s8_may_saturate,
)
from qviz.core.runtime.sessions import (
    PRECISION_KEY,
    KernelPrecision,
    Optimization,
    Purpose,
    SessionConfig,
    Threads,
    build_session,
    run_session,
    with_outputs,
)

try:  # works whether or not tests/ is a package
    from tests.core import model_factory as mf
except ImportError:
    import model_factory as mf

LEVEL = ort.GraphOptimizationLevel


def _precision_entry(options: ort.SessionOptions) -> str | None:
    try:
        return options.get_session_config_entry(PRECISION_KEY)
    except RuntimeError:  # ORT raises when the key was never set
        return None


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("config", "level", "precise"),
    [
        (SessionConfig.for_float(), LEVEL.ORT_ENABLE_ALL, None),
        (SessionConfig.for_simulation(), LEVEL.ORT_DISABLE_ALL, None),
        (SessionConfig.for_native(), LEVEL.ORT_ENABLE_ALL, None),
        (SessionConfig.for_native(KernelPrecision.PRECISE), LEVEL.ORT_ENABLE_ALL, "1"),
        (
            SessionConfig.for_native(KernelPrecision.PRECISE, optimization=Optimization.EXTENDED),
            LEVEL.ORT_ENABLE_EXTENDED,
            "1",
        ),
    ],
    ids=["float", "simulation", "native", "native-precise", "native-precise-extended"],
)
def test_options_per_purpose(config: SessionConfig, level: object, precise: str | None) -> None:
    options = config.options()
    assert options.graph_optimization_level == level
    assert _precision_entry(options) == precise
    assert options.log_severity_level == 3  # errors only
    assert options.intra_op_num_threads == 0 and options.inter_op_num_threads == 0


def test_threads_and_the_optimized_graph_path(tmp_path: Path) -> None:
    config = SessionConfig.for_float(Threads(intra_op=2, inter_op=1))
    options = config.options(tmp_path / "opt.onnx")
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.optimized_model_filepath == str(tmp_path / "opt.onnx")
    with pytest.raises(QvizError, match="intra-op threads"):
        Threads(intra_op=-1)


def test_a_config_is_what_it_says() -> None:
    """Only a native session takes a kernel precision or another optimization level: a
    "simulation" with optimizations on would no longer be the simulation."""
    with pytest.raises(ValueError, match="simulation session runs at its own"):
        SessionConfig(Purpose.SIMULATION, optimization=Optimization.ALL)
    with pytest.raises(ValueError, match="no int8 kernel precision"):
        SessionConfig(Purpose.FLOAT, KernelPrecision.PRECISE)
    with pytest.raises(ValueError, match="optimizations on"):
        SessionConfig.for_native(optimization=Optimization.NONE)
    assert SessionConfig.for_simulation().level is Optimization.NONE
    assert SessionConfig(Purpose.SIMULATION, optimization=Optimization.NONE).level is (
        Optimization.NONE
    )
    # Frozen and picklable: "how to build the session" can travel to another process.
    config = SessionConfig.for_native(KernelPrecision.PRECISE, Threads(intra_op=1))
    assert pickle.loads(pickle.dumps(config)) == config
    assert hash(config) == hash(SessionConfig.for_native(KernelPrecision.PRECISE, Threads(1)))


# --------------------------------------------------------------------------- building, running


def test_a_file_with_external_data_is_built_from_disk(tmp_path: Path) -> None:
    """The natural source is a path: ORT reads the weights beside the file itself. The same
    model's bytes cannot find them."""
    proto = mf.make_mlp()
    path = mf.save(mf.make_mlp(), tmp_path / "mlp.onnx", external_data=True)
    assert (tmp_path / "mlp.onnx.data").is_file()
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    (from_file,) = run_session(build_session(path, SessionConfig.for_float()), {"x": x})
    (from_str,) = run_session(build_session(str(path), SessionConfig.for_float()), {"x": x})
    (from_proto,) = run_session(build_session(proto, SessionConfig.for_float()), {"x": x})
    np.testing.assert_array_equal(from_file, from_proto)
    np.testing.assert_array_equal(from_str, from_proto)
    with pytest.raises(QvizError) as err:
        build_session(path.read_bytes(), SessionConfig.for_float(), what="the test model")
    assert str(err.value).startswith("ONNX Runtime cannot run the test model: ")
    assert "\n" not in str(err.value)


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match=r"^ONNX Runtime cannot run the model: ") as err:
        build_session(b"not a model", SessionConfig.for_float())
    assert "\n" not in str(err.value)
    session = build_session(mf.make_mlp(), SessionConfig.for_float())
    with pytest.raises(QvizError, match=r"^the model failed on the data: ") as err:
        run_session(session, {"x": np.zeros((2, 7), np.float32)})
    assert "\n" not in str(err.value)


def _cast_model() -> onnx.ModelProto:
    """x -> Cast(fp16) h -> Relu r -> Cast(fp32) y; only h's type is in the value info."""
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["h"], to=f16),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Cast", ["r"], ["y"], to=f32),
        ],
        "cast",
        [helper.make_tensor_value_info("x", f32, ["N", 3])],
        [helper.make_tensor_value_info("y", f32, ["N", 3])],
        value_info=[helper.make_tensor_value_info("h", f16, ["N", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_with_outputs_adds_each_tensor_once_with_its_type() -> None:
    model = _cast_model()
    extended = with_outputs(model, ["h", "x", "y", "r", "h"])
    assert [o.name for o in extended.graph.output] == ["y", "h", "r"]
    _, h_out, r_out = extended.graph.output
    assert h_out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert not h_out.type.tensor_type.HasField("shape")  # the batch may vary
    assert not r_out.HasField("type")  # unknown here: ORT infers it rather than qviz guess
    assert [o.name for o in model.graph.output] == ["y"]  # the input model is left alone
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    session = build_session(extended, SessionConfig.for_simulation())
    y, h, r = run_session(session, {"x": x}, ["y", "h", "r"])
    assert h.dtype == np.float16 and r.dtype == np.float16
    np.testing.assert_array_equal(y, [[0.0, 0.5, 2.0]])
    np.testing.assert_array_equal(r, y.astype(np.float16))


# --------------------------------------------------------------------------- CPU detection


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV_VAR, raising=False)
    return monkeypatch


def test_detection_asks_the_integer_kernel(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The probe really runs ORT's fused u8s8 MatMul, and the answer is what it returned:
    exact (VNNI, AMX, other architectures) or each 16-bit pair sum clamped (AVX2 without
    VNNI). Holds on both kinds of CPU; without an override, that is what qviz says."""
    model = probe_model()
    feeds = {"x": np.full((1, 64), 255.0, np.float32)}
    optimized = tmp_path / "probe.onnx"
    session = build_session(model, SessionConfig.for_native(), optimized_model_path=optimized)
    (native,) = run_session(session, feeds)
    assert "QLinearMatMul" in {n.op_type for n in onnx.load(optimized).graph.node}
    (exact,) = run_session(build_session(model, SessionConfig.for_simulation()), feeds)
    step = 16384.0
    np.testing.assert_array_equal(exact, np.full((1, 4), 127 * step))  # 255 x 127 x 64
    clamped = np.full((1, 4), 64 * step)  # 32 pairs x 32767 = 1048544
    assert np.array_equal(native, exact) or np.array_equal(native, clamped), native
    assert detect_u8s8_saturation() is (not np.array_equal(native, exact))
    assert u8s8_may_saturate() is detect_u8s8_saturation()


@pytest.mark.parametrize("answer", [False, True])
def test_override_in_both_directions(no_env: pytest.MonkeyPatch, answer: bool) -> None:
    machine = detect_u8s8_saturation()
    with assume_u8s8_saturation(answer):
        assert u8s8_may_saturate() is answer
        with assume_u8s8_saturation(not answer):  # nested: the inner one wins
            assert u8s8_may_saturate() is (not answer)
        assert u8s8_may_saturate() is answer
        seen: list[bool | None] = []
        worker = threading.Thread(target=lambda: seen.append(u8s8_may_saturate()))
        worker.start()
        worker.join()
        assert seen == [answer]  # the app's worker threads see it too
    assert u8s8_may_saturate() is machine


def test_setter_and_clearing(no_env: pytest.MonkeyPatch) -> None:
    machine = detect_u8s8_saturation()
    try:
        set_u8s8_saturation(True)
        assert u8s8_may_saturate() is True
        set_u8s8_saturation(False)
        assert u8s8_may_saturate() is False
    finally:
        set_u8s8_saturation(None)
    assert u8s8_may_saturate() is machine and cpu._override is None


@pytest.mark.parametrize(("value", "answer"), [("1", True), ("0", False), (" 1 ", True)])
def test_environment_variable(monkeypatch: pytest.MonkeyPatch, value: str, answer: bool) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert u8s8_may_saturate() is answer
    with assume_u8s8_saturation(not answer):  # the override (tests) beats the variable
        assert u8s8_may_saturate() is (not answer)


def test_empty_or_bad_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "")
    assert u8s8_may_saturate() is detect_u8s8_saturation()
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(QvizError, match=f"^{ENV_VAR} must be 0 or 1") as err:
        u8s8_may_saturate()
    assert "'yes'" in str(err.value) and "\n" not in str(err.value)


def test_the_fixture_sets_the_answer(u8s8_saturates: bool) -> None:
    assert u8s8_may_saturate() is u8s8_saturates


def test_a_session_without_spinning_says_so_to_ort() -> None:
    """Calibration's session does not spin its idle workers (Python folds statistics between
    runs); every other session keeps ORT's default."""
    from dataclasses import replace

    from qviz.core.runtime.sessions import SessionConfig

    key = "session.intra_op.allow_spinning"
    quiet = replace(SessionConfig.for_float(), spinning=False).options()
    assert quiet.get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        SessionConfig.for_float().options().get_session_config_entry(key)
