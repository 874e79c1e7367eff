"""Edit ▸ History: every settings change of the session, newest last; click one to go there.

The list is the document's undo history. The current state is bold; steps after it (undone,
ready to redo) are grey. Clicking a row jumps the whole configuration to that step, as undoing
or redoing until there would.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont, QShowEvent
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from qviz.core.document.document import Document

UNDONE_FG = QColor("#9e9e9e")


class HistoryView(QListWidget):
    """The document's undo history as a list."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self.setToolTip(
            "Every change of settings, oldest first. Click a step to return to it; Undo "
            "(Ctrl+Z) and Redo (Ctrl+Shift+Z) walk the same list."
        )
        self.setAlternatingRowColors(True)
        self.itemClicked.connect(self._on_clicked)
        self._stale = True
        doc.events.history.connect(self._on_history)
        self.refresh()

    def _on_history(self) -> None:
        # Rebuilt only while on screen: a hidden list costs nothing per change.
        self._stale = True
        if self.isVisible():
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        if self._stale:
            self.refresh()
        super().showEvent(event)

    def refresh(self) -> None:
        self._stale = False
        history = self._doc.history
        self.blockSignals(True)
        try:
            self.clear()
            for i, entry in enumerate(history.entries):
                item = QListWidgetItem(f"{i}. {entry.label}")
                item.setData(Qt.ItemDataRole.UserRole, i)
                if i == history.index:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                elif i > history.index:
                    item.setForeground(QBrush(UNDONE_FG))
                self.addItem(item)
            self.setCurrentRow(history.index)
        finally:
            self.blockSignals(False)
        self.scrollToItem(self.item(history.index))

    def labels(self) -> list[str]:
        """The rows as shown (tests read them)."""
        return [self.item(i).text() for i in range(self.count())]

    def _on_clicked(self, item: QListWidgetItem) -> None:
        index = int(item.data(Qt.ItemDataRole.UserRole))
        if index != self._doc.history.index:
            self._doc.goto_history(index)
