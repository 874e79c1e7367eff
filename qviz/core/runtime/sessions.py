"""Every ONNX Runtime session qviz creates, built and run in one place.

A session is described by a `SessionConfig` — what it is for (`Purpose`), the int8 kernel
precision, threads, and an optional optimization level — and built by `build_session` from a
model file on disk, serialized bytes, or a ``ModelProto``:

* **float** (`Purpose.FLOAT`): the float model as production runs it, every optimization on
  (also what calibration runs, with extra outputs);
* **simulation** (`Purpose.SIMULATION`): every optimization off, so each Q/DQ pair is evaluated
  as the ONNX operator it is — bit for bit what qviz's ``quantize``/``dequantize`` compute;
* **native** (`Purpose.NATIVE`): optimizations on, so ORT fuses the Q/DQ patterns into its
  integer kernels (QLinearConv, QGemm, MatMulInteger...). "Extended" already holds every Q/DQ
  fusion; "all" (the default) adds layout changes on top. `KernelPrecision.PRECISE` switches
  x86 CPUs to ORT's exact U8U8 kernels (``session.x64quantprecision=1``), and the
  ``MatMulNBits`` kernels ORT makes of blockwise int4/int8 weights to float32 arithmetic
  (their default, accuracy level 4, quantizes the activations to int8 inside the kernel).

A path is the natural source: ORT reads the file and its external data itself, nothing is
serialized, and there is no 2 GiB protobuf limit. A ``ModelProto`` is serialized first; a
large model's graph refers to its weights in files instead of holding them (see
``qviz.core.model.external_data``), so only the small graph is serialized and ``data_dir``
tells ORT the folder those files are in: ORT then reads the weights from disk exactly as when
it opens the model file itself. Before a session is built, the weights it will hold are
compared with the memory the system has available (`qviz.core.runtime.memory`), so a model
that cannot fit is one clear error rather than a crash. `SessionConfig` is a frozen,
picklable value, so a compute backend can send "how to build the session" to another
process; ``ort.SessionOptions`` is not.

ORT raises its own exception types; `build_session` and `run_session` turn every one into a
one-line `QvizError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx
import onnxruntime as ort

from qviz.core.errors import QvizError, first_line
from qviz.core.model.external_data import total_tensor_bytes
from qviz.core.runtime.memory import check_fits

__all__ = [
    "DATA_FOLDER_KEY",
    "NBITS_ACCURACY_KEY",
    "PRECISION_KEY",
    "PROVIDERS",
    "KernelPrecision",
    "ModelSource",
    "Optimization",
    "Purpose",
    "SessionConfig",
    "Threads",
    "build_session",
    "run_session",
    "set_process_threads",
    "with_outputs",
]

#: Execution providers, in ORT's order of preference. qviz measures what the CPU runs.
PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
#: ORT's switch to slower but exact U8U8 kernels on x86 CPUs whose U8S8 path can saturate.
PRECISION_KEY = "session.x64quantprecision"
#: The accuracy level of the MatMulNBits kernels ORT fuses DequantizeLinear + MatMul into:
#: 1 computes in float32 (what the simulation computes), 4 (ORT's default) in int8.
NBITS_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
#: Where ORT resolves the external data of a model given as bytes.
DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
#: An optimized model saved by ORT keeps tensors of at least this size in a data file beside
#: it (a large model's optimized graph is as large as the model).
_OPTIMIZED_DATA_KEY = "session.optimized_model_external_initializers_file_name"
_OPTIMIZED_MIN_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"
# ORT's warnings (e.g. about unused initializers) are not the user's business: errors only.
_LOG_ERRORS_ONLY = 3
# How ORT's allocators say they ran out of memory.
_OUT_OF_MEMORY = ("bad_alloc", "bad allocation", "Failed to allocate memory", "std::bad_alloc")

#: What `build_session` builds from: a model file (its external data beside it), the
#: serialized model, or the proto itself.
ModelSource = onnx.ModelProto | bytes | str | os.PathLike[str]


class KernelPrecision(Enum):
    """Which x86 integer kernels ORT uses for int8 weights."""

    DEFAULT = "default"  # ORT's defaults: fast U8S8 kernels (can saturate without VNNI)
    PRECISE = "precise"  # U8U8 kernels (no saturation); float32 MatMulNBits


class Purpose(Enum):
    """What a session is for, which decides how ORT may rewrite the graph."""

    FLOAT = "float"  # the float reference: every optimization on
    SIMULATION = "simulation"  # every optimization off: each Q/DQ is evaluated as an operator
    NATIVE = "native"  # optimizations on: Q/DQ fused into ORT's integer kernels


class Optimization(Enum):
    """ORT's graph optimization levels."""

    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    @property
    def ort_level(self) -> ort.GraphOptimizationLevel:
        return {
            Optimization.NONE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            Optimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            Optimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            Optimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self]


_DEFAULT_OPTIMIZATION = {
    Purpose.FLOAT: Optimization.ALL,
    Purpose.SIMULATION: Optimization.NONE,
    Purpose.NATIVE: Optimization.ALL,
}


@dataclass(frozen=True)
class Threads:
    """ORT's thread pools; 0 lets ORT choose (one intra-op thread per physical core)."""

    intra_op: int = 0
    inter_op: int = 0

    def __post_init__(self) -> None:
        for name in ("intra_op", "inter_op"):
            value = getattr(self, name)
            if value < 0:
                raise QvizError(
                    f"{name.replace('_', '-')} threads must be 0 (ORT's choice) "
                    f"or more, got {value}"
                )


_process_threads: Threads | None = None


def set_process_threads(threads: Threads | None) -> None:
    """The threads every session of this process takes when its config leaves them to ORT.

    A compute backend's worker process calls it once: N workers sharing a machine would
    otherwise each start one ORT thread per core."""
    global _process_threads
    _process_threads = threads


_SPINNING_KEY = "session.intra_op.allow_spinning"


@dataclass(frozen=True)
class SessionConfig:
    """How to build one session. ``optimization`` None means the purpose's own level (float
    and native: all; simulation: none). Only a native session takes a kernel precision or an
    optimization level other than its own: anything else would not be what it says."""

    purpose: Purpose
    precision: KernelPrecision = KernelPrecision.DEFAULT
    threads: Threads = field(default_factory=Threads)
    optimization: Optimization | None = None
    #: Whether ORT's worker threads spin between parallel steps (its default, lowest latency).
    #: Off where Python works between runs (calibration folds each batch's activations): the
    #: idle workers would otherwise spin through that time and burn its CPU.
    spinning: bool = True

    def __post_init__(self) -> None:
        if self.purpose is not Purpose.NATIVE:
            if self.precision is not KernelPrecision.DEFAULT:
                raise ValueError(f"a {self.purpose.value} session has no int8 kernel precision")
            if self.optimization not in (None, _DEFAULT_OPTIMIZATION[self.purpose]):
                raise ValueError(
                    f"a {self.purpose.value} session runs at its own optimization level"
                )
        elif self.optimization is Optimization.NONE:
            raise ValueError("a native session needs optimizations on to fuse Q/DQ patterns")

    @classmethod
    def for_float(cls, threads: Threads | None = None) -> SessionConfig:
        """The float reference, as production runs it."""
        return cls(Purpose.FLOAT, threads=threads or Threads())

    @classmethod
    def for_simulation(cls, threads: Threads | None = None) -> SessionConfig:
        """The Q/DQ graph op by op: qviz's simulation of the quantized model."""
        return cls(Purpose.SIMULATION, threads=threads or Threads())

    @classmethod
    def for_native(
        cls,
        precision: KernelPrecision = KernelPrecision.DEFAULT,
        threads: Threads | None = None,
        optimization: Optimization | None = None,
    ) -> SessionConfig:
        """The Q/DQ graph fused into ORT's integer kernels."""
        return cls(Purpose.NATIVE, precision, threads or Threads(), optimization)

    @property
    def level(self) -> Optimization:
        """The optimization level the session runs at."""
        return self.optimization or _DEFAULT_OPTIMIZATION[self.purpose]

    def options(
        self,
        optimized_model_path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        profile_prefix: str | os.PathLike[str] | None = None,
    ) -> ort.SessionOptions:
        """Fresh ``ort.SessionOptions`` for this configuration; with `optimized_model_path`
        ORT writes the graph it runs there when the session is created (initializers of
        1 KiB and more in a ``.data`` file beside it, so a graph past protobuf's 2 GiB limit
        can be written too); `data_dir` is the folder external data is read from when the
        model is given as bytes; with `profile_prefix` ORT's profiler records every node's
        time in a JSON file starting with that path (`session.end_profiling()` names it)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = self.level.ort_level
        options.log_severity_level = _LOG_ERRORS_ONLY
        threads = self.threads
        if threads == Threads() and _process_threads is not None:
            threads = _process_threads
        if threads.intra_op:
            options.intra_op_num_threads = threads.intra_op
        if threads.inter_op:
            options.inter_op_num_threads = threads.inter_op
        if self.precision is KernelPrecision.PRECISE:
            options.add_session_config_entry(PRECISION_KEY, "1")
            options.add_session_config_entry(NBITS_ACCURACY_KEY, "1")
        if optimized_model_path is not None:
            options.optimized_model_filepath = os.fspath(optimized_model_path)
            options.add_session_config_entry(
                _OPTIMIZED_DATA_KEY, os.path.basename(os.fspath(optimized_model_path)) + ".data"
            )
            options.add_session_config_entry(_OPTIMIZED_MIN_KEY, "1024")
        if data_dir is not None:
            options.add_session_config_entry(DATA_FOLDER_KEY, os.fspath(data_dir))
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = os.fspath(profile_prefix)
        if not self.spinning:
            options.add_session_config_entry(_SPINNING_KEY, "0")
        return options


def build_session(
    source: ModelSource,
    config: SessionConfig,
    *,
    what: str = "the model",
    optimized_model_path: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    profile_prefix: str | os.PathLike[str] | None = None,
) -> ort.InferenceSession:
    """A session on `source` built as `config` says; ORT's errors become one QvizError line
    ("ONNX Runtime cannot run <what>: ...").

    A path is read by ORT itself, external data included (resolved beside the file). A proto
    or bytes whose tensors refer to external data need `data_dir`, the folder that data is
    in. With `optimized_model_path`, ORT also saves the graph after its optimizations there;
    with `profile_prefix`, its profiler is on (see `SessionConfig.options`). A ``ModelProto``
    whose weights would not fit in the memory available is refused first.
    """
    if data_dir is not None and not isinstance(source, onnx.ModelProto | bytes):
        raise ValueError("data_dir applies to a model given as a proto or bytes")
    options = config.options(optimized_model_path, data_dir, profile_prefix)
    if isinstance(source, onnx.ModelProto):
        check_fits(total_tensor_bytes(source), what)
    try:
        if isinstance(source, onnx.ModelProto):
            model: bytes | str = source.SerializeToString()
        elif isinstance(source, bytes):
            model = source
        else:
            model = os.fspath(source)
        return ort.InferenceSession(model, options, providers=list(PROVIDERS))
    except MemoryError:
        raise QvizError(f"not enough memory to run {what}") from None
    except Exception as exc:  # ORT and protobuf raise their own types; all mean "cannot run"
        text = first_line(exc)
        if any(marker in text for marker in _OUT_OF_MEMORY):
            raise QvizError(f"not enough memory to run {what} ({text})") from exc
        raise QvizError(f"ONNX Runtime cannot run {what}: {text}") from exc


def run_session(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """`outputs` (all the graph's outputs when None) for `feeds`; a failure is one QvizError
    line ("the model failed on the data: ...")."""
    try:
        return session.run(None if outputs is None else list(outputs), dict(feeds))
    except Exception as exc:  # ORT raises its own exception types
        raise QvizError(f"the model failed on the data: {first_line(exc)}") from exc


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (graph inputs and outputs are
    already there). An extra output carries its element type from the graph's value info and
    no shape (shapes may vary from sample to sample); without value info it carries no type,
    and ORT infers it (assuming float would break a float16 tensor)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    present = {o.name for o in graph.output} | {i.name for i in graph.input}
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in graph.value_info
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    for name in tensors:
        if name in present:
            continue
        if name in types:
            graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
        else:
            graph.output.append(onnx.ValueInfoProto(name=name))
        present.add(name)
    return out
