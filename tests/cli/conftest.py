"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from qviz.cli import main
from qviz.core.demo import demo_paths


@pytest.fixture(scope="session")
def demo_stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Statistics of the built-in demo on its data, collected once (tests only read them)."""
    out = tmp_path_factory.mktemp("demo_stats") / "demo.qvstats"
    demo = demo_paths()
    assert main(["collect", str(demo.model), "--data", str(demo.data), "-o", str(out),
                 "--quiet"]) == 0
    return out
