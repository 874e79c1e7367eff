"""Compute backends on the demo: a process pool and a 2-CPU Ray started here give the local
reports to the bit, survive a killed worker, keep finished runs of a stopped sweep, and
refuse what they cannot use in one line.

Ray start-up costs seconds, so one Ray serves the module and the runs are small.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import qviz
import qviz.core.compute.jobs as jobs_mod
from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.compute.choice import BackendChoice, BackendKind
from qviz.core.compute.identity import code_fingerprint, identity
from qviz.core.compute.process_pool import ProcessBackend
from qviz.core.compute.ray_backend import (
    RayBackend,
    _actor_error,
    check_reachable,
    check_worker_version,
    import_ray,
)
from qviz.core.compute.remote import evaluate_with
from qviz.core.data.dataset import Dataset, load_data
from qviz.core.demo import demo_paths
from qviz.core.errors import QvizError
from qviz.core.evaluation.accumulators import OutputRole
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.results import EvaluationCancelled, Metric
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.progress import Progress, run_to_completion
from qviz.core.search.mixed import mixed_precision
from qviz.core.search.sensitivity import sensitivity
from qviz.core.search.sensitivity_cache import SensitivityCache
from qviz.core.stats.collect import CalibrationStats, collect_stats

ray = pytest.importorskip("ray")

Demo = tuple[LoadedModel, Dataset, CalibrationStats]
LIMIT = 128


@pytest.fixture(scope="module")
def demo() -> Demo:
    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    return model, data, run_to_completion(collect_stats(model, data, batch_size=250))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A 2-CPU Ray on this machine, for the module (the backends join it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _doc(report: Any) -> dict[str, Any]:
    doc = report.to_json()
    doc.pop("elapsed_s", None)
    if "sensitivity" in doc:
        doc["sensitivity"].pop("elapsed_s", None)
    return doc


def _sensitivity(demo: Demo, **kw: Any) -> Generator[Progress, None, Any]:
    model, data, stats = demo
    return sensitivity(model, stats, QuantConfig(), data, limit=LIMIT, batch_size=64, **kw)


@pytest.fixture(scope="module")
def local_report(demo: Demo) -> dict[str, Any]:
    return _doc(run_to_completion(_sensitivity(demo)))


def _kill_one_worker_midway(gen: Generator[Progress, None, Any], backend: Any) -> Any:
    """Drive `gen`; once a few runs are done, SIGKILL one worker process."""
    killed: list[int] = []
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            assert killed, "the sweep ended before a worker could be killed"
            return stop.value
        pids = backend.worker_pids()
        if not killed and p.total and p.done >= 3 * LIMIT and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])


# --------------------------------------------------------------------------- same numbers


def test_ray_sensitivity_equals_local_and_survives_a_killed_worker(
    demo: Demo, local_ray: None, local_report: dict[str, Any]
) -> None:
    backend = RayBackend(workers=2)
    assert _doc(run_to_completion(_sensitivity(demo, compute=backend))) == local_report
    report = _kill_one_worker_midway(_sensitivity(demo, compute=backend), backend)
    assert _doc(report) == local_report


def test_process_pool_sensitivity_equals_local_and_survives_a_killed_worker(
    demo: Demo, local_report: dict[str, Any]
) -> None:
    backend = ProcessBackend(2)
    report = _kill_one_worker_midway(_sensitivity(demo, compute=backend), backend)
    assert _doc(report) == local_report


def test_ray_evaluation_and_mixed_search_equal_local(demo: Demo, local_ray: None) -> None:
    model, data, stats = demo
    results = analyze(model, stats, QuantConfig())
    kw: dict[str, Any] = dict(native=True, limit=300, batch_size=100, latency=False)
    here = run_to_completion(evaluate_with(None, model, results, data, **kw))
    there = run_to_completion(evaluate_with(RayBackend(workers=1), model, results, data, **kw))
    assert there.to_json() == here.to_json()
    # What the outputs hold travels with the job: values, so no top-1 metrics there either.
    kw["role"] = OutputRole.VALUES
    there = run_to_completion(evaluate_with(RayBackend(workers=1), model, results, data, **kw))
    assert Metric.AGREEMENT not in there.quantized_metrics
    assert there.to_json() == run_to_completion(
        evaluate_with(None, model, results, data, **kw)
    ).to_json()

    base = QuantConfig()
    base = base.with_default(
        TensorKind.ACTIVATION, replace(base.activations, spec=MethodSpec(Method.MINMAX))
    )

    def search(compute: Any) -> dict[str, Any]:
        return _doc(run_to_completion(mixed_precision(
            model, stats, base, data, Criterion.parse("accuracy_drop<=0.5"),
            "int4,int8,float", limit=LIMIT, confirm_limit=400, batch_size=64, compute=compute,
        )))  # fmt: skip

    local = search(None)
    assert len(local["points"]) >= 2  # it searched: promotions were measured
    assert search(RayBackend(workers=2)) == local


# --------------------------------------------------------------------------- partial results


def test_a_stopped_sweep_keeps_its_finished_runs(
    demo: Demo, tmp_path: Path, local_report: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SensitivityCache(tmp_path)

    def stored() -> int:
        files = list(tmp_path.glob("*.partial.json"))
        return len(json.loads(files[0].read_text())["runs"]) if files else 0

    with pytest.raises(EvaluationCancelled):
        run_to_completion(_sensitivity(demo, cache=cache, should_stop=lambda: stored() >= 4))
    kept = stored()
    assert kept >= 4

    calls = []
    inner = jobs_mod.measure
    monkeypatch.setattr(jobs_mod, "measure", lambda *a, **k: calls.append(1) or inner(*a, **k))
    report = run_to_completion(_sensitivity(demo, cache=cache))
    assert len(calls) == report.n_runs - kept  # only what was missing ran
    assert _doc(report) == local_report
    assert not list(tmp_path.glob("*.partial.json"))  # the whole report replaced it


# --------------------------------------------------------------------------- bad input


def test_what_cannot_be_used_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QvizError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1"):
        check_reachable("127.0.0.1:1", timeout=1.0)
    with pytest.raises(QvizError, match="HOST:PORT"):
        check_reachable("not an address")
    with pytest.raises(QvizError, match=r"runs qviz 0\.0\.1, this is qviz"):
        check_worker_version(("0.0.1", code_fingerprint()), "node-7")
    with pytest.raises(QvizError, match="another build of qviz"):
        check_worker_version((qviz.__version__, "0" * 16), "node-7")
    check_worker_version(identity(), "here")  # the same qviz is welcome
    error = _actor_error(ray, RuntimeError("ModuleNotFoundError: No module named 'qviz'"), "h:1")
    assert "cannot import qviz" in str(error) and "qviz[ray]" in str(error)
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a machine without the extra
    with pytest.raises(QvizError, match=r"Ray is not installed here: pip install 'qviz\[ray\]'"):
        import_ray()


def test_backend_choices_read_back() -> None:
    for text in ("local", "processes/2", "ray:local", "ray:10.0.0.5:6379/8", "ray:ray://h:10001"):
        assert BackendChoice.parse(text).to_text() == text
    assert BackendChoice.parse("ray:h:1/4") == BackendChoice(BackendKind.RAY, 4, "h:1")
    with pytest.raises(QvizError):
        BackendChoice.parse("cluster")
