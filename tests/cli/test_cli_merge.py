"""`qviz collect --shard K/N` on the demo, `qviz merge`, and one clear line for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qviz.cli import main
from qviz.core.demo import demo_paths
from qviz.core.stats.stats_file import load_stats

SAMPLES = 300


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's first samples, as a file of their own (shards are cut from a file)."""
    with np.load(demo_paths().data) as z:
        arrays = {k: z[k][:SAMPLES] for k in z.files}
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> list[Path]:
    out = tmp_path_factory.mktemp("shards")
    model = str(demo_paths().model)
    paths = []
    for k in (1, 2):
        path = out / f"part{k}.qvstats"
        args = ["collect", model, "--data", str(small_data), "--shard", f"{k}/2", "-o",
                str(path), "--quiet"]
        assert main(args) == 0
        paths.append(path)
    return paths


def test_shards_merge_into_the_whole(shards: list[Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    parts = [load_stats(p) for p in shards]
    assert [p.n_samples for p in parts] == [SAMPLES // 2, SAMPLES - SAMPLES // 2]
    first = parts[0].provenance.shard
    assert first is not None and (first.start, first.stop, first.total) == (0, 150, SAMPLES)
    out = tmp_path / "all.qvstats"
    assert main(["merge", *map(str, shards), "-o", str(out)]) == 0
    assert "rebinned" in capsys.readouterr().err
    merged = load_stats(out)
    assert merged.n_samples == SAMPLES
    assert merged.data_description == first.data_description
    assert len(merged.provenance.merged_from) == 2
    # The merged file is a statistics file like any other: report reads it.
    assert main(["report", str(out), "--json"]) == 0


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qviz: error:"), err
    for w in words:
        assert w in err, err


def test_merge_refuses_bad_input(shards: list[Path], tmp_path: Path, small_data: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = shards[0].read_bytes()
    assert main(["merge", str(shards[0]), str(shards[1]), "-o", str(shards[0])]) == 2
    _one_line_error(capsys, "one of the inputs")
    assert shards[0].read_bytes() == before  # an input is never overwritten
    coarse = tmp_path / "coarse.qvstats"
    assert main(["collect", str(demo_paths().model), "--data", str(small_data), "--shard",
                 "2/2", "--bins", "256", "-o", str(coarse), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "all.qvstats"
    assert main(["merge", str(shards[0]), str(coarse), "-o", str(out)]) == 2
    _one_line_error(capsys, "--bins")
    assert not out.exists()
    assert main(["merge", str(shards[0]), str(tmp_path / "missing.qvstats"), "-o",
                 str(out)]) == 2
    _one_line_error(capsys)
    assert main(["collect", str(demo_paths().model), "--data", str(small_data), "--shard",
                 "3/2", "-o", str(out)]) == 2
    _one_line_error(capsys, "K/N")


def test_compute_options_refuse_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shards: list[Path], small_data: Path
) -> None:
    model = str(demo_paths().model)
    base = ["sensitivity", model, "--stats", str(shards[0]), "--data", str(small_data),
            "--limit", "16", "--no-cache", "--quiet"]
    assert main([*base, "--ray", "127.0.0.1:1"]) == 2
    _one_line_error(capsys, "cannot reach a Ray cluster at 127.0.0.1:1")
    assert main([*base, "--workers", "0"]) == 2
    _one_line_error(capsys, "--workers")
