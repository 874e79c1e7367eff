"""The start-up check: a missing X11 library or no display is one line naming the fix."""

from __future__ import annotations

import pytest

from qviz.cli.display import XCB_LIBRARIES, display_problem
from qviz.cli.gui import run_gui


def test_missing_xcb_libraries_are_named_with_their_packages() -> None:
    missing = {"libxcb-cursor.so.0", "libxcb-icccm.so.4"}
    line = display_problem({"DISPLAY": ":0"}, "linux", lambda lib: lib not in missing)
    assert line is not None and "\n" not in line
    assert "libxcb-cursor, libxcb-icccm are missing" in line
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4" in line
    assert "sudo dnf install xcb-util-cursor xcb-util-wm" in line
    assert "Reinstall" not in line


def test_no_problem_when_everything_loads_or_another_platform_is_chosen() -> None:
    assert display_problem({"DISPLAY": ":0"}, "linux", lambda lib: True) is None
    never = lambda lib: False  # noqa: E731
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", never) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", never) is None
    assert display_problem({"DISPLAY": ":0"}, "darwin", never) is None
    assert len(XCB_LIBRARIES) == 8


def test_no_display_says_how_to_run_without_one() -> None:
    line = display_problem({}, "linux", lambda lib: True)
    assert line is not None and "QT_QPA_PLATFORM=offscreen" in line


def test_the_app_refuses_to_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", ":99")
    # As on a machine with every library but one (whatever this one has).
    monkeypatch.setattr("qviz.cli.display._loads", lambda lib: lib != "libxcb-icccm.so.4")
    assert run_gui([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qviz: error:")
    assert "libxcb-icccm are missing" in err[0] and "libxcb-icccm4" in err[0]
    assert run_gui(["--eval-data", "e.npz"]) == 2
