"""The weights' statistics computed on a helper thread while ONNX Runtime builds its session:
the same statistics as computed in line whether the thread finished, was stopped at once or
failed; `qviz collect` stops it when the first batch is about to run."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from qviz.cli import cmd_collect, main
from qviz.core.model.loading import LoadedModel, from_proto
from qviz.core.progress import Progress, run_to_completion
from qviz.core.stats import weight_collect
from qviz.core.stats.stats_file import load_stats
from qviz.core.stats.weight_stats import WeightStats
from tests.core import model_factory as mf


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 100)  # conv1, conv2; not fc
    return from_proto(mf.make_conv_net(), source="net.onnx", sha256="1" * 64)


def _same(a: dict[str, WeightStats], b: dict[str, WeightStats]) -> None:
    assert sorted(a) == sorted(b) and len(a) == 2
    for name in a:
        np.testing.assert_array_equal(a[name].rows.counts, b[name].rows.counts)
        np.testing.assert_array_equal(a[name].channel_sumsq, b[name].channel_sumsq)
        np.testing.assert_array_equal(a[name].tensor.histogram.counts,
                                      b[name].tensor.histogram.counts)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = weight_collect.compute_weight_stats

    def counted(w, name, axis):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(w, name, axis)

    monkeypatch.setattr(weight_collect, "compute_weight_stats", counted)
    return calls


def test_a_finished_thread_leaves_nothing_to_compute(model, monkeypatch) -> None:
    expected = run_to_completion(weight_collect.collect_weight_stats(model))
    calls = _counting(monkeypatch)
    meanwhile = weight_collect.WeightStatsMeanwhile(model)
    deadline = time.monotonic() + 30
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    meanwhile.stop()
    assert meanwhile.done == 2 and len(calls) == 2
    _same(run_to_completion(meanwhile.finish()), expected)
    assert len(calls) == 2  # finish read no weight again


def test_a_thread_stopped_at_once_leaves_the_rest_to_finish(model, monkeypatch) -> None:
    expected = run_to_completion(weight_collect.collect_weight_stats(model))
    calls = _counting(monkeypatch)
    meanwhile = weight_collect.WeightStatsMeanwhile(model)
    meanwhile.stop()
    progress = list(_progress(meanwhile.finish()))
    assert sorted(calls) == sorted(expected)  # each weight read once, by one of the two
    assert progress[-1].done == progress[-1].total > 0


def test_an_error_on_the_thread_is_met_again_by_finish(model, monkeypatch) -> None:
    def broken(*_args: object) -> WeightStats:
        raise OSError("short read")

    monkeypatch.setattr(weight_collect, "compute_weight_stats", broken)
    meanwhile = weight_collect.WeightStatsMeanwhile(model)
    meanwhile.stop()
    assert meanwhile.done == 0
    with pytest.raises(OSError, match="short read"):
        run_to_completion(meanwhile.finish())


def _progress(gen: Generator[Progress, None, object]) -> Generator[Progress, None, None]:
    yield from gen


def test_collect_stops_the_thread_before_the_first_batch(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(weight_collect, "STATS_MIN_VALUES", 100)
    events: list[str] = []
    real_stop = weight_collect.WeightStatsMeanwhile.stop
    real_collect = cmd_collect.collect_stats

    def stop(self: weight_collect.WeightStatsMeanwhile) -> None:
        events.append("stop")
        real_stop(self)

    def collect(*args, **kwargs):  # type: ignore[no-untyped-def]
        gen = real_collect(*args, **kwargs)
        first = next(gen)  # the session is built
        events.append("session")
        yield first
        events.append("batches")
        return (yield from gen)

    monkeypatch.setattr(weight_collect.WeightStatsMeanwhile, "stop", stop)
    monkeypatch.setattr(cmd_collect, "collect_stats", collect)
    model_path = tmp_path / "net.onnx"
    model_path.write_bytes(mf.make_conv_net().SerializeToString())
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "s.qvstats"
    assert main(["collect", str(model_path), "--data", str(data), "-o", str(out),
                 "--quiet"]) == 0
    assert events[:3] == ["session", "stop", "batches"]
    assert len(load_stats(out).weights) == 2


def test_after_first_calls_even_when_the_start_fails() -> None:
    called: list[bool] = []

    def failing() -> Generator[Progress, None, None]:
        raise ValueError("no session")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="no session"):
        run_to_completion(cmd_collect._after_first(failing(), lambda: called.append(True)))
    assert called == [True]
