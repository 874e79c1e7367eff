"""PyTorch models to ONNX: the only module of qviz that imports torch, and only when called.

Three ways in, one way out:

- a TorchScript file (``torch.jit.load``), converted to a ``torch.export`` program first
  because the dynamo exporter does not take ScriptModules (the legacy TorchScript exporter is
  the fallback, and the notes say so);
- a ``torch.export`` program (``.pt2``, ``torch.export.load``);
- ``package.module:factory``: the factory is called with no arguments; an optional state dict
  is read with ``torch.load(weights_only=True)`` (no pickled code runs).

All are exported with ``torch.onnx.export(..., dynamo=True)`` into a caller-owned folder, using
one sample of the user's data. The batch dimension is made dynamic when possible: the sample is
repeated to a batch of two for tracing, because torch.export specializes dimensions of size 1.
If that fails, the export is redone with a fixed batch of one and the notes say so. The
exporter's optimizer folds BatchNorm into the preceding Conv. Finally the ONNX graph is run on
the sample with ONNX Runtime and compared with PyTorch, so a wrong export is reported instead
of silently measured.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qviz.core.errors import QvizError
from qviz.core.model.hashing import file_sha256, files_sha256
from qviz.core.model.onnx_graph import all_graphs

TORCH_MISSING = "PyTorch models need the torch extra: pip install 'qviz[torch]'"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Relative tolerance for the ONNX-vs-PyTorch check on the sample.
_MATCH_RTOL = 1e-3


@dataclass(frozen=True)
class TorchExport:
    """Where the exported ONNX file is, and what to record about the user's model."""

    onnx_path: Path
    source: Path
    sha256: str
    notes: tuple[str, ...]


def export_to_onnx(
    spec: str | Path,
    out_dir: Path,
    *,
    sample: Mapping[str, np.ndarray] | None,
    state_dict: Path | None = None,
) -> TorchExport:
    """Export the PyTorch model ``spec`` to ``out_dir/model.onnx`` (+ external data).

    ``spec`` is a TorchScript or ``.pt2`` file, or ``package.module:factory``. ``sample`` maps
    input names to one batch (leading axis 1); the exported graph's inputs are renamed to its
    keys, so the same data file then feeds the ONNX model.
    """
    torch = _import_torch()
    notes: list[str] = []
    path = Path(spec)
    is_file = isinstance(spec, Path) or path.exists()
    if is_file and not path.is_file():
        raise QvizError(f"model file not found: {path}")
    if state_dict is not None and (is_file or not str(spec)):
        raise QvizError("a state dict only goes with a package.module:factory model")

    example: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    if is_file and path.suffix.lower() == ".pt2":
        program = _load_program(torch, path)
        example = getattr(program, "example_inputs", None)
        kind, model = "program", program
        source, digest = path, file_sha256(path)
    elif is_file:
        kind, model = "script", _load_script(torch, path)
        source, digest = path, file_sha256(path)
    else:
        module_file, model = _call_factory(torch, str(spec))
        files = [module_file] if module_file else []
        if state_dict is not None:
            notes += _load_state_dict(torch, model, Path(state_dict))
            files.append(Path(state_dict))
        kind = "module"
        source, digest = Path(str(spec)), files_sha256(files, salt=str(spec))
    if kind != "program":
        # Exporters trace whatever mode the module is in; dropout/BN must be in eval mode.
        model.eval()

    if sample is None and example is None:
        raise QvizError(
            "exporting a PyTorch model needs one sample of its input data: give the data too"
        )
    names = list(sample) if sample is not None else []
    out = Path(out_dir) / "model.onnx"
    if kind == "module":
        args, kwargs = _arguments(torch, model, sample or {})
        notes += _export_module(torch, model, args, kwargs, out)
    elif kind == "script":
        args, kwargs = _arguments(torch, None, sample or {})
        notes += _export_script(torch, model, args, names, out)
    else:
        if sample is not None:
            args, kwargs = _arguments(torch, None, sample)
        else:
            assert example is not None
            args, kwargs = tuple(example[0]), dict(example[1] or {})
        _run_exporter(torch, model, (), {}, out, dynamic_shapes=None)
    notes += _tidy_onnx(out, names)
    notes += _compare_outputs(torch, model, kind, args, kwargs, out)
    return TorchExport(onnx_path=out, source=source, sha256=digest, notes=tuple(notes))


# ------------------------------------------------------------------------------ loading


def _import_torch() -> Any:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        import torch
    except ImportError as exc:
        raise QvizError(TORCH_MISSING) from exc
    return torch


def _describe_error(exc: BaseException) -> str:
    """The most telling line of an exception chain: the innermost cause's type and first line.

    Unlike :func:`qviz.core.errors.first_line`, torch's errors need the innermost cause (the
    exporter wraps the real one), colours stripped, and a line ending in ":" joined with the
    next one that it announces; very long lines are cut at their first sentence (torch
    appends paragraphs of advice).
    """
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(inner)).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    if len(line) > 160 and ". " in line:
        line = line[: line.index(". ") + 1]
    name = type(inner).__name__
    return f"{name}: {line}" if line else name


def _load_program(torch: Any, path: Path) -> Any:
    with _quiet() as capture:
        try:
            return torch.export.load(str(path))
        except Exception as exc:  # torch raises many types; all mean "not a usable program"
            reason = _explained(exc, capture)
    raise QvizError(f"'{path.name}' is not a torch.export program: {reason}")


def _load_script(torch: Any, path: Path) -> Any:
    with _quiet() as capture:
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            reason = _explained(exc, capture)
    if _is_state_dict(torch, path):
        raise QvizError(
            f"'{path.name}' is a state dict (weights without model code): give the model "
            "as package.module:factory and this file as its state dict"
        )
    raise QvizError(
        f"'{path.name}' is not a TorchScript file ({reason}); a plain state dict "
        "needs its model code: give package.module:factory and this file as the state dict"
    )


def _is_state_dict(torch: Any, path: Path) -> bool:
    with _quiet():
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            return False
    return isinstance(loaded, dict) and bool(loaded)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Make modules in the current folder importable, as ``python -m`` would."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _call_factory(torch: Any, spec: str) -> tuple[Path | None, Any]:
    module_name, _, func_name = spec.partition(":")
    try:
        with _cwd_importable(), _quiet():
            module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise QvizError(f"cannot import '{module_name}': {_describe_error(exc)}") from exc
    factory = getattr(module, func_name, None)
    if factory is None or not callable(factory):
        raise QvizError(f"'{module_name}' has no callable '{func_name}'")
    try:
        with _quiet():
            model = factory()
    except Exception as exc:
        raise QvizError(f"{spec}() failed: {_describe_error(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise QvizError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    file = getattr(module, "__file__", None)
    return (Path(file) if file else None), model


def _load_state_dict(torch: Any, model: Any, path: Path) -> list[str]:
    if not path.is_file():
        raise QvizError(f"state dict file not found: {path}")
    reason: str | None = None
    with _quiet() as capture:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = _explained(exc, capture)
    if reason is not None:
        raise QvizError(f"cannot read the state dict '{path.name}' (weights only): {reason}")
    notes = []
    # Training checkpoints often wrap the weights: {"state_dict": {...}, "epoch": 3, ...}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            notes.append(f"weights taken from the '{key}' entry of {path.name}")
            break
    if not isinstance(loaded, dict):
        raise QvizError(f"'{path.name}' holds a {type(loaded).__name__}, not a state dict")
    try:
        with _quiet():
            model.load_state_dict(loaded, strict=True)
    except Exception as exc:
        raise QvizError(
            f"the state dict '{path.name}' does not fit the model: {_describe_error(exc)}"
        ) from exc
    return notes


# ---------------------------------------------------------------------------- exporting


def _to_torch(torch: Any, array: np.ndarray) -> Any:
    arr = np.asarray(array)
    # Data files often hold float64; PyTorch models are float32 almost always.
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    # Memory-mapped data is read-only, which torch warns about: give it its own copy.
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _arguments(
    torch: Any, model: Any, sample: Mapping[str, np.ndarray]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Keyword arguments when the sample's names are ``forward``'s parameters, else positional."""
    tensors = {k: _to_torch(torch, v) for k, v in sample.items()}
    if model is not None:
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        if tensors and all(k in params for k in tensors):
            return (), tensors
    return tuple(tensors.values()), {}


def _double_batch(torch: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1:
        return torch.cat([value, value], dim=0)
    return value


class _LogCapture(logging.Handler):
    """Keeps the text of every record torch logs while it is muted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.streams: list[io.StringIO] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.extend(record.getMessage().splitlines())
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                self.records.append(f"{type(error).__name__}: {error}".strip())
        except Exception:  # a record that cannot be formatted is dropped, never raised
            pass

    @property
    def lines(self) -> list[str]:
        """Logged lines, then what was printed (handlers torch set up print to stderr)."""
        return self.records + [ln for s in self.streams for ln in s.getvalue().splitlines()]


@contextlib.contextmanager
def _quiet() -> Iterator[_LogCapture]:
    """Silence torch's prints, warnings and log lines while it reads or exports the user's
    files (only qviz's one line should reach the user); errors still raise.

    torch logs failed attempts (guards, decompositions, deserialization) on its own loggers
    with explicit levels and handlers, so each existing torch/onnxscript logger is muted
    (level and propagation) and its records kept, then restored. The records are yielded:
    an error that says "see the warnings above" is explained from them.
    """
    manager = logging.Logger.manager
    loggers = [logging.getLogger("torch"), logging.getLogger("onnxscript")] + [
        lg
        for name, lg in list(manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and name.startswith(("torch", "onnxscript"))
    ]
    saved = [(lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    capture = _LogCapture()
    for lg in loggers:
        lg.handlers = [capture] if lg.name in ("torch", "onnxscript") else []
        lg.propagate = lg.name not in ("torch", "onnxscript")
        lg.setLevel(logging.DEBUG if lg.name in ("torch", "onnxscript") else logging.NOTSET)
    capture.streams = [io.StringIO(), io.StringIO()]
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(capture.streams[0]),
            contextlib.redirect_stderr(capture.streams[1]),
        ):
            warnings.simplefilter("ignore")
            yield capture
    finally:
        for lg, (level, handlers, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.handlers = handlers
            lg.propagate = propagate


def _explained(exc: BaseException, capture: _LogCapture) -> str:
    """The exception's line, or the logged error it refers to ("check the warnings above")."""
    line = _describe_error(exc)
    if "above" in line:
        errors = [ln.strip() for ln in capture.lines if "Error:" in ln]
        if errors:
            line = errors[-1]
            if len(line) > 160 and ". " in line:
                line = line[: line.index(". ") + 1]
    return line


def _run_exporter(
    torch: Any,
    model: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Path,
    *,
    dynamic_shapes: Any,
) -> None:
    with _quiet():
        torch.onnx.export(
            model,
            args,
            str(out),
            kwargs=kwargs or None,
            dynamo=True,
            external_data=True,
            optimize=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )


def _export_module(
    torch: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Path
) -> list[str]:
    batch = torch.export.Dim("batch")

    def dims(v: Any) -> Any:
        return {0: batch} if isinstance(v, torch.Tensor) and v.ndim >= 1 else None

    args2 = tuple(_double_batch(torch, a) for a in args)
    kwargs2 = {k: _double_batch(torch, v) for k, v in kwargs.items()}
    dynamic: Any = {k: dims(v) for k, v in kwargs2.items()} if kwargs2 else tuple(
        dims(a) for a in args2
    )
    try:
        _run_exporter(torch, model, args2, kwargs2, out, dynamic_shapes=dynamic)
        return []
    except Exception as exc:
        first_try = _describe_error(exc)
    try:
        _run_exporter(torch, model, args, kwargs, out, dynamic_shapes=None)
    except Exception as exc:
        raise QvizError(f"PyTorch export to ONNX failed: {_describe_error(exc)}") from exc
    return [
        "exported with the sample's fixed batch size, so batches of other sizes will not run "
        f"(a dynamic batch did not export: {first_try})"
    ]


def _export_script(
    torch: Any, model: Any, args: tuple[Any, ...], names: list[str], out: Path
) -> list[str]:
    try:
        # Private but the route torch itself recommends for ScriptModules.
        from torch._export.converter import TS2EPConverter

        # A batch of two, so the batch dimension is not specialized to 1.
        doubled = tuple(_double_batch(torch, a) for a in args)
        with _quiet():
            program = TS2EPConverter(model, doubled).convert()
        _run_exporter(torch, program, (), {}, out, dynamic_shapes=None)
        return []
    except Exception as exc:
        first_try = _describe_error(exc)
    # Fallback: the legacy TorchScript exporter, which takes ScriptModules as they are.
    try:
        with _quiet():
            torch.onnx.export(
                model,
                args,
                str(out),
                dynamo=False,
                input_names=names or None,
                dynamic_axes={n: {0: "batch"} for n in names} or None,
            )
    except Exception as exc:
        raise QvizError(f"PyTorch export to ONNX failed: {_describe_error(exc)}") from exc
    return [
        f"TorchScript converted with the legacy exporter (the dynamo route failed: {first_try}); "
        "layer names are ONNX node names"
    ]


# ----------------------------------------------------------------------------- tidying


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere in ``graph`` and the subgraphs that may see it."""
    for g in all_graphs(graph):
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.name == old:
                vi.name = new
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new


def _tidy_onnx(out: Path, names: list[str]) -> list[str]:
    """Name the graph inputs after the sample's keys and fix numeric symbolic dims.

    Only the graph structure is rewritten; the external weight file is left as it is.
    """
    try:
        model = onnx.load(str(out), load_external_data=False)
    except Exception as exc:
        raise QvizError(
            f"the exporter wrote an unreadable ONNX file: {_describe_error(exc)}"
        ) from exc
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in inits]
    notes: list[str] = []
    existing = {vi.name for vi in inputs} | inits | {o for n in graph.node for o in n.output}
    if names and len(names) == len(inputs):
        for vi, name in zip(inputs, names, strict=True):
            if vi.name != name and name not in existing:
                _rename_value(graph, vi.name, name)
    elif names:
        notes.append(
            f"the exported model has {len(inputs)} inputs but the sample has {len(names)}; "
            "inputs keep the exporter's names"
        )
    # The TorchScript converter writes static sizes as symbolic dims named "3".
    for vi in graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.isdigit():
                d.dim_value = int(d.dim_param)
    onnx.save_model(model, str(out))
    return notes


def _flatten(torch: Any, value: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, Mapping):
        return [a for v in value.values() for a in _flatten(torch, v)]
    if isinstance(value, list | tuple):
        return [a for v in value for a in _flatten(torch, v)]
    return []


def _compare_outputs(
    torch: Any,
    model: Any,
    kind: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Path,
) -> list[str]:
    """Run PyTorch and the exported graph on the sample; say how far apart they are."""
    from qviz.core.runtime.sessions import SessionConfig, build_session

    try:
        with torch.no_grad(), _quiet():
            module = model.module() if kind == "program" else model
            expected = _flatten(torch, module(*args, **kwargs))
        session = build_session(out, SessionConfig.for_float())
        feed_values = [v.detach().cpu().numpy() for v in [*args, *kwargs.values()]]
        feeds = {
            i.name: v for i, v in zip(session.get_inputs(), feed_values, strict=False)
        }
        got = session.run(None, feeds)
    except Exception as exc:  # a check that cannot run is reported, not fatal
        return [f"could not compare the ONNX export with PyTorch: {_describe_error(exc)}"]
    if len(got) != len(expected) or any(
        np.shape(g) != np.shape(e) for g, e in zip(got, expected, strict=False)
    ):
        return ["the ONNX export's outputs do not line up with PyTorch's; not compared"]
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        if e.size and np.issubdtype(e.dtype, np.floating):
            scale = max(float(np.max(np.abs(e))), 1e-6)
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e))) / scale)
    if worst > _MATCH_RTOL:
        return [
            f"WARNING: the ONNX export differs from PyTorch on the sample by {worst:.2g} "
            "(relative to the output's magnitude); what qviz measures may not be your model"
        ]
    return []
