"""ONNX Runtime's profiler on two sessions run side by side: every optimized node's time.

`profile_pair` builds both sessions with ORT's profiler on (``SessionOptions.enable_profiling``
through `build_session`), saves the graph each one runs (ORT's optimized graph: what its
profiler names), and runs them **interleaved** on the same feeds — A B, B A, A B... — for a
time budget, so frequency changes and the neighbours' load hit both alike. Each node's time is
the median over the runs (a node run several times in one run, inside a loop, counts its sum);
a run's time is the median of ORT's own ``model_run`` spans. Medians, not means: on a shared
machine a run now and then takes ten times longer, and one such run must not move the figure.

The profiler adds a little to every node (it reads the clock twice), so the whole-model figure
to quote is `qviz.core.runtime.latency`'s, timed without it; these times say where it goes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qviz.core.errors import QvizError
from qviz.core.runtime.sessions import ModelSource, SessionConfig, build_session, run_session

__all__ = [
    "DEFAULT_BUDGET_S",
    "NodeTime",
    "SessionProfile",
    "TimingBudget",
    "parse_profile",
    "profile_pair",
]

#: Seconds `profile_pair` spends running both sessions by default (after the warm-up).
DEFAULT_BUDGET_S = 2.0
# ORT's profile holds one event per node per run, each ~1 KB of JSON: beyond this many events
# per session the file costs more to write and read than the extra runs are worth.
_MAX_EVENTS = 60_000
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class TimingBudget:
    """How long to time: at least `min_runs` runs of each session (after `warmup` untimed
    ones), then more until `seconds` have passed or `max_runs` were made."""

    seconds: float = DEFAULT_BUDGET_S
    min_runs: int = 5
    max_runs: int = 200
    warmup: int = 2

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise QvizError(
                f"a timing budget needs seconds >= 0 and 1 <= min runs <= max runs, got "
                f"{self.seconds} s, {self.min_runs}..{self.max_runs} runs"
            )
        if self.warmup < 0:
            raise QvizError(f"warm-up runs must not be negative, got {self.warmup}")


@dataclass(frozen=True)
class NodeTime:
    """One node of ORT's optimized graph: its op (as ORT's profiler names it) and the median
    milliseconds it took per run."""

    name: str
    op_type: str
    ms: float


@dataclass(frozen=True, eq=False)
class SessionProfile:
    """What the profiler saw for one session: each optimized node's median time per run, the
    median run, how many runs, and the graph ORT ran (its node names are the profile's)."""

    nodes: Mapping[str, NodeTime]
    run_ms: float
    runs: int
    optimized: onnx.GraphProto = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", MappingProxyType(dict(self.nodes)))

    @property
    def node_total_ms(self) -> float:
        return sum(n.ms for n in self.nodes.values())


def parse_profile(events: list[dict[str, Any]], skip_runs: int = 0) -> tuple[
    dict[str, NodeTime], list[float]
]:
    """Per-node median milliseconds per run and every run's milliseconds, from the events of
    ORT's profile JSON, leaving out the first `skip_runs` runs (warm-up).

    A node event belongs to the ``model_run`` span containing its start; a node that ran
    several times in one run (a loop body) counts the sum of its times in that run; a node
    that did not run in some run counts 0 there.
    """
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    kept = runs[skip_runs:]
    starts = np.array([r["ts"] for r in kept], dtype=np.int64)
    ends = starts + np.array([r["dur"] for r in kept], dtype=np.int64)
    per_run: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX) or not len(starts):
            continue
        ts = int(e["ts"])
        i = int(np.searchsorted(starts, ts, side="right")) - 1
        if i < 0 or ts > ends[i]:
            continue  # a warm-up run's node
        node = name[: -len(_KERNEL_SUFFIX)]
        ops.setdefault(node, str(e.get("args", {}).get("op_name", "")))
        per_run.setdefault(node, [0.0] * len(kept))[i] += float(e["dur"]) / 1e3
    nodes = {
        n: NodeTime(n, ops[n], float(statistics.median(times))) for n, times in per_run.items()
    }
    return nodes, [float(r["dur"]) / 1e3 for r in kept]


def _read_events(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, ValueError) as exc:
        raise QvizError(f"cannot read ONNX Runtime's profile {path}: {exc}") from exc
    if not isinstance(events, list):
        raise QvizError(f"ONNX Runtime's profile {path} is not a list of events")
    return events


def profile_pair(
    a: ModelSource,
    a_config: SessionConfig,
    b: ModelSource,
    b_config: SessionConfig,
    feeds: Mapping[str, np.ndarray],
    budget: TimingBudget | None = None,
    *,
    what: tuple[str, str] = ("the float model", "the quantized model"),
    data_dirs: tuple[str | os.PathLike[str] | None, str | os.PathLike[str] | None] = (None, None),
) -> tuple[SessionProfile, SessionProfile]:
    """Profile sessions `a` and `b` (built as their configs say; a model given as a proto whose
    weights stay on disk reads them from its `data_dirs` entry) on the same `feeds`, runs
    interleaved and alternating in order, within `budget`; QvizError if ORT cannot build or
    run either."""
    budget = budget or TimingBudget()
    with tempfile.TemporaryDirectory(prefix="qviz-profile-") as tmp:
        sessions: list[ort.InferenceSession] = []
        graphs: list[str] = []
        pairs = ((a, a_config, what[0], data_dirs[0]), (b, b_config, what[1], data_dirs[1]))
        for i, (source, config, label, data_dir) in enumerate(pairs):
            graph_path = os.path.join(tmp, f"optimized_{i}.onnx")
            sessions.append(
                build_session(
                    source,
                    config,
                    what=label,
                    optimized_model_path=graph_path,
                    data_dir=data_dir,
                    profile_prefix=os.path.join(tmp, f"profile_{i}"),
                )
            )
            graphs.append(graph_path)
        optimized = [onnx.load(p, load_external_data=False).graph for p in graphs]
        n_nodes = max(len(g.node) for g in optimized)
        max_runs = max(budget.min_runs, min(budget.max_runs, _MAX_EVENTS // max(n_nodes, 1)))
        feeds = dict(feeds)
        for _ in range(budget.warmup):
            for s in sessions:
                run_session(s, feeds)
        runs = 0
        deadline = time.perf_counter() + budget.seconds
        while runs < budget.min_runs or (runs < max_runs and time.perf_counter() < deadline):
            order = sessions if runs % 2 == 0 else sessions[::-1]
            for s in order:
                run_session(s, feeds)
            runs += 1
        profiles = []
        for s, graph in zip(sessions, optimized, strict=True):
            path = s.end_profiling()
            nodes, run_ms = parse_profile(_read_events(path), skip_runs=budget.warmup)
            Path(path).unlink(missing_ok=True)
            median_run = float(statistics.median(run_ms)) if run_ms else float("nan")
            profiles.append(SessionProfile(nodes, median_run, len(run_ms), graph))
    return profiles[0], profiles[1]
