"""App tests: garbage collected between tests, at a safe point.

Each test leaves a closed window behind as cyclic garbage (pyqtgraph items, menus, layouts).
Left to the collector's own timing, it is collected in the middle of a later test, while that
test's background job runs ONNX Runtime on a worker thread; with the fastest-objective search
that ended the process ("pure virtual method called") on this machine. Collected here, after
every test, when no job of that test is running any more.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests() -> Iterator[None]:
    yield
    gc.collect()
