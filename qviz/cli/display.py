"""Before the window opens: can Qt show one here? One clear line when it cannot.

Without the X11 libraries Qt's `xcb` plugin needs, PySide6 prints "Could not load the Qt
platform plugin xcb … Reinstalling the application may fix this problem" and aborts — wrong
advice: the system packages are missing, not qviz. This checks what the plugin loads and names
the packages to install (Debian/Ubuntu and Fedora names).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

# The shared libraries Qt 6's xcb plugin loads beyond libxcb itself, with the package that
# provides each on Debian/Ubuntu and on Fedora.
XCB_LIBRARIES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
}


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def display_problem(
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    loads: Callable[[str], bool] | None = None,
) -> str | None:
    """Why Qt cannot open a window here, in one line; None when it can (or when another
    platform plugin than xcb was chosen, which Qt reports well itself)."""
    env = os.environ if environ is None else environ
    chosen = env.get("QT_QPA_PLATFORM", "")
    if not platform.startswith("linux") or (chosen and not chosen.startswith("xcb")):
        return None
    if not chosen and env.get("WAYLAND_DISPLAY"):
        return None  # Qt picks its Wayland plugin
    if not env.get("DISPLAY"):
        return (
            "no display to open a window on (DISPLAY is not set): run qviz on a desktop, or "
            "set QT_QPA_PLATFORM=offscreen to run it without one"
        )
    loadable = _loads if loads is None else loads
    missing = [lib for lib in XCB_LIBRARIES if not loadable(lib)]
    if not missing:
        return None
    debian = " ".join(dict.fromkeys(XCB_LIBRARIES[lib][0] for lib in missing))
    fedora = " ".join(dict.fromkeys(XCB_LIBRARIES[lib][1] for lib in missing))
    names = ", ".join(Path(lib).name.split(".so")[0] for lib in missing)
    return (
        f"Qt cannot open a window: the system libraries {names} are missing; install them "
        f"(Debian/Ubuntu: sudo apt-get install {debian}; Fedora: sudo dnf install {fedora})"
    )
