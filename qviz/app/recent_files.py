"""Recently opened files, remembered across runs in QSettings.

The settings object is passed in so tests (and a second profile) use their own file instead
of the user's real settings.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

KEY = "recent_files"
MAX_RECENT = 10


def default_settings() -> QSettings:
    """The user's settings (platform-native location, organisation and app 'qviz')."""
    return QSettings("qviz", "qviz")


class RecentFiles:
    """Most recent first, without duplicates, at most `limit` entries."""

    def __init__(self, settings: QSettings, limit: int = MAX_RECENT) -> None:
        self._settings = settings
        self._limit = limit

    def paths(self) -> list[Path]:
        raw = self._settings.value(KEY, [])
        # QSettings gives a str for a one-element list in INI files, and None when empty.
        if raw is None:
            return []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            return []  # an edited settings file: no recent files rather than a crash
        return [Path(str(p)) for p in raw if p]

    def add(self, path: str | Path) -> None:
        p = str(Path(path).resolve())
        rest = [str(q) for q in self.paths() if str(q) != p]
        self._settings.setValue(KEY, [p, *rest][: self._limit])
        self._settings.sync()

    def remove(self, path: str | Path) -> None:
        p = str(Path(path))
        self._settings.setValue(KEY, [str(q) for q in self.paths() if str(q) != p])
        self._settings.sync()

    def clear(self) -> None:
        self._settings.remove(KEY)
        self._settings.sync()
