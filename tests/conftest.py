"""Test configuration. Qt must be told to run without a screen before it is imported."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qviz.core.runtime.cpu import assume_u8s8_saturation


@pytest.fixture(params=[False, True], ids=["u8s8-exact", "u8s8-saturates"])
def u8s8_saturates(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test once under each answer of qviz's CPU detection (`u8s8_may_saturate`):
    False as on CPUs with VNNI or AMX (or off x86), True as on AVX2 without VNNI.

    The override changes what qviz *reports* about ORT's int8 kernels (the fusion report's
    ``saturating`` layers, its note, what the app shows), never what the kernels *do*: a test
    using this fixture takes its report expectations from the answer, and asserts about
    measured numbers only what holds on both kinds of CPU."""
    answer: bool = request.param
    with assume_u8s8_saturation(answer):
        yield answer
