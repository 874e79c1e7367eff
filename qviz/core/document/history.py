"""Undo and redo as a list of immutable snapshots, one per user action.

Each entry holds the whole state after an action (a frozen configuration), never an inverse
operation: undoing is showing the previous snapshot, so no action can be undone wrongly and
a new kind of action needs no undo code of its own. The entry also remembers which tensor the
action was about, so that undoing it can show that tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F")

# Snapshots share everything that did not change (frozen objects), so a long history is cheap;
# the bound only keeps a session of thousands of edits from growing without end.
DEFAULT_LIMIT = 500


@dataclass(frozen=True)
class HistoryEntry(Generic[T, F]):
    label: str       # what the user did, as Edit ▸ Undo names it
    state: T         # the state after the action
    focus: F | None  # what the action was about (shown again when it is undone)


class History(Generic[T, F]):
    """A linear history; a new action after some undos drops the undone ones (as editors do)."""

    def __init__(self, initial: T, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = max(2, limit)
        self.reset(initial)

    def reset(self, initial: T, label: str = "Opened") -> None:
        self._entries: list[HistoryEntry[T, F]] = [HistoryEntry(label, initial, None)]
        self._index = 0

    @property
    def entries(self) -> tuple[HistoryEntry[T, F], ...]:
        return tuple(self._entries)

    @property
    def index(self) -> int:
        """Position of the current state in `entries`."""
        return self._index

    @property
    def current(self) -> HistoryEntry[T, F]:
        return self._entries[self._index]

    @property
    def can_undo(self) -> bool:
        return self._index > 0

    @property
    def can_redo(self) -> bool:
        return self._index < len(self._entries) - 1

    @property
    def undo_label(self) -> str | None:
        return self._entries[self._index].label if self.can_undo else None

    @property
    def redo_label(self) -> str | None:
        return self._entries[self._index + 1].label if self.can_redo else None

    def record(self, label: str, state: T, focus: F | None = None) -> None:
        """A user action produced `state`: it becomes the current entry."""
        del self._entries[self._index + 1 :]
        self._entries.append(HistoryEntry(label, state, focus))
        if len(self._entries) > self._limit:
            del self._entries[: len(self._entries) - self._limit]
        self._index = len(self._entries) - 1

    def undo(self) -> tuple[HistoryEntry[T, F], HistoryEntry[T, F]] | None:
        """Step back: (the entry undone, the entry now current); None at the start."""
        if not self.can_undo:
            return None
        undone = self._entries[self._index]
        self._index -= 1
        return undone, self._entries[self._index]

    def redo(self) -> HistoryEntry[T, F] | None:
        """Step forward: the entry now current; None at the end."""
        if not self.can_redo:
            return None
        self._index += 1
        return self._entries[self._index]

    def goto(self, index: int) -> HistoryEntry[T, F]:
        """Jump to any entry (the history view); later entries stay for redo."""
        if not 0 <= index < len(self._entries):
            raise IndexError(f"no history entry {index}")
        self._index = index
        return self._entries[index]
