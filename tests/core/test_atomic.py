"""Atomic writes: the file appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qviz.core.files.atomic import atomic_open, write_text_atomic


def test_written_file_has_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text_atomic(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
