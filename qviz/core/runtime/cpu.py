"""What this machine's CPU does to ONNX Runtime's int8 kernels, asked in one place.

On x86-64 CPUs with AVX2 but no VNNI, ORT's default U8S8 kernels add pairs of uint8 x int8
products in 16 bits: 2 x 255 x 127 = 64770 overflows int16 and saturates. CPUs with
AVX512-VNNI, AVX-VNNI or AMX accumulate in 32 bits, and other architectures use other
kernels: neither saturates.

qviz does not guess this from the CPU's name or flags: `detect_u8s8_saturation` asks the
kernel itself, once per process, with one fused Q/DQ MatMul whose pair sums overflow 16 bits
(64 products of 255 x 127), compared with the same graph evaluated op by op. ``/proc/cpuinfo``
can disagree with the instructions ORT really gets (an emulator or a VM that hides some):
under ``qemu-x86_64 -cpu Haswell`` on a host with AMX, the flags said "no saturation" while
the kernel returned 1048576 instead of 2080768.

`u8s8_may_saturate` is the one answer every part of qviz reads (the fusion report, the
benchmarks, the tests). It can be overridden, in this order of precedence:

* `assume_u8s8_saturation` / `set_u8s8_saturation`: for tests, which check each
  kernel-dependent expectation under both answers (process-wide, so that the worker threads
  of the app see it too);
* the environment variable ``QVIZ_U8S8_SATURATES=0|1``: for users who want the report of the
  machine they deploy to rather than the one they run qviz on.

An override changes what qviz *says* about the kernels (the fusion report's ``saturating``
layers and its note), never what ORT's kernels *do*: measured numbers always come from the
real kernels of the machine.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.runtime.sessions import SessionConfig, Threads, build_session, run_session

__all__ = [
    "ENV_VAR",
    "assume_u8s8_saturation",
    "detect_u8s8_saturation",
    "probe_model",
    "set_u8s8_saturation",
    "u8s8_may_saturate",
]

#: The environment variable that overrides the detection: ``1`` saturates, ``0`` does not.
ENV_VAR = "QVIZ_U8S8_SATURATES"
_ENV_VALUES = {"1": True, "0": False}

# The probe: x (all 255 as uint8) times w (all 127 as int8) over K products, requantized
# with a step large enough to hold the exact sum, 255 x 127 x K. 16-bit pair sums lose
# about half of it (each pair is clamped from 64770 to 32767).
_PROBE_K = 64
_PROBE_STEP = 16384.0

_lock = threading.Lock()
_override: bool | None = None


def probe_model() -> onnx.ModelProto:
    """``Q/DQ(x) · DQ(w) → Q/DQ``: the pattern ORT fuses into its U8S8 integer MatMul."""
    inits = [
        numpy_helper.from_array(np.full((_PROBE_K, 4), 127, np.int8), "w_q"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.int8), "zero_s8"),
        numpy_helper.from_array(np.array(0, np.uint8), "zero_u8"),
        numpy_helper.from_array(np.array(_PROBE_STEP, np.float32), "step"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "zero_u8"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "one", "zero_u8"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "one", "zero_s8"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "step", "zero_u8"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "step", "zero_u8"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "u8s8_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _PROBE_K])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@functools.cache
def detect_u8s8_saturation() -> bool | None:
    """What ORT's default int8 kernels do here, overrides ignored: True when the fused probe
    loses what the op-by-op simulation keeps, False when both agree, None when the probe
    cannot run. Measured once per process."""
    model = probe_model()
    feeds = {"x": np.full((1, _PROBE_K), 255.0, np.float32)}
    one_thread = Threads(intra_op=1, inter_op=1)
    try:
        (exact,) = run_session(
            build_session(model, SessionConfig.for_simulation(one_thread)), feeds
        )
        (native,) = run_session(
            build_session(model, SessionConfig.for_native(threads=one_thread)), feeds
        )
    except QvizError:
        return None
    return bool(np.any(native != exact))


def _from_env() -> bool | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None or not raw.strip():
        return None
    value = _ENV_VALUES.get(raw.strip())
    if value is None:
        raise QvizError(f"{ENV_VAR} must be 0 or 1 (or unset to ask the CPU), got {raw!r}")
    return value


def u8s8_may_saturate() -> bool | None:
    """Whether ORT's default U8S8 int8 kernels can saturate here: the override if one is set,
    else ``QVIZ_U8S8_SATURATES``, else what the kernel does (None where it cannot be told).

    QvizError when ``QVIZ_U8S8_SATURATES`` holds anything but 0 or 1.
    """
    override = _override
    if override is not None:
        return override
    from_env = _from_env()
    if from_env is not None:
        return from_env
    return detect_u8s8_saturation()


def set_u8s8_saturation(value: bool | None) -> None:
    """Make `u8s8_may_saturate` answer `value` in every thread; None clears the override."""
    global _override
    with _lock:
        _override = value


@contextmanager
def assume_u8s8_saturation(value: bool) -> Iterator[None]:
    """`u8s8_may_saturate` answers `value` inside the block (in every thread), then whatever
    it answered before."""
    global _override
    with _lock:
        before, _override = _override, value
    try:
        yield
    finally:
        with _lock:
            _override = before
