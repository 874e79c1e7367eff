"""The runs of an unfinished sweep, kept beside the cache: written even before the cache's
folder exists, read back by the next sweep with the same key, ignored when foreign."""

from __future__ import annotations

from pathlib import Path

from qviz.core.evaluation.results import Metric, RunMode
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement
from qviz.core.search.sensitivity_cache import CacheKey, SensitivityCache
from qviz.core.search.sensitivity_partial import PartialRuns

KEY = CacheKey("m" * 64, "r" * 64, "d" * 64, "data.npz", 128, True, KernelPrecision.DEFAULT)
RUN = Measurement({Metric.SQNR: 31.25, Metric.COSINE: 0.998}, RunMode.NATIVE, 1234, 128)


def test_the_first_run_creates_the_cache_folder(tmp_path: Path) -> None:
    cache = SensitivityCache(tmp_path / "not" / "yet")
    PartialRuns(cache, KEY).store("quantize conv1", RUN)
    assert PartialRuns(cache, KEY).load() == {"quantize conv1": RUN}


def test_another_key_or_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    cache = SensitivityCache(tmp_path)
    PartialRuns(cache, KEY).store("quantize conv1", RUN)
    other = CacheKey("x" * 64, "r" * 64, "d" * 64, "data.npz", 128, True, KernelPrecision.DEFAULT)
    assert PartialRuns(cache, other).load() == {}
    partial = PartialRuns(cache, KEY)
    assert partial.path is not None
    partial.path.write_bytes(b"[" * 10_000)
    assert PartialRuns(cache, KEY).load() == {}
    partial.drop()
    assert not partial.path.exists()
