"""Run ▸ Compute Backend…: run measurements here, on a pool of local processes, or on Ray."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qviz.core.compute.choice import BackendChoice, BackendKind
from qviz.core.errors import QvizError


class ComputeDialog(QDialog):
    """Edits a `BackendChoice`; `choice()` reads it back (raises QvizError when invalid)."""

    def __init__(self, current: BackendChoice, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compute Backend")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(
            "Where sensitivity, mixed precision and the full evaluation run their models.\n"
            "Results are the same numbers wherever they run."
        ))
        self.group = QButtonGroup(self)
        self.buttons: dict[BackendKind, QRadioButton] = {}
        for kind, text, tip in (
            (BackendKind.LOCAL, "&This process", "One configuration at a time, every core"),
            (BackendKind.PROCESSES, "Local &processes", "A pool of processes on this machine"),
            (BackendKind.RAY, "&Ray", "Ray actors: on this machine ('local') or a cluster "
             "(HOST:PORT); needs pip install 'qviz[ray]'"),
        ):
            button = QRadioButton(text)
            button.setToolTip(tip)
            self.group.addButton(button)
            self.buttons[kind] = button
            layout.addWidget(button)
        form = QFormLayout()
        self.address = QLineEdit(current.address or "local")
        self.address.setToolTip("'local' starts Ray here; HOST:PORT or ray://HOST:PORT joins a "
                                "running cluster")
        self.workers = QSpinBox()
        self.workers.setRange(0, 4096)
        self.workers.setSpecialValueText("automatic")
        self.workers.setValue(current.workers or 0)
        self.workers.setToolTip("Workers (processes or Ray actors); automatic: as many as the "
                                "cores allow")
        form.addRow("Cluster address:", self.address)
        form.addRow("Workers:", self.workers)
        layout.addLayout(form)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.group.buttonToggled.connect(lambda *_: self._sync())
        self.buttons[current.kind].setChecked(True)
        self._sync()

    def kind(self) -> BackendKind:
        for kind, button in self.buttons.items():
            if button.isChecked():
                return kind
        return BackendKind.LOCAL

    def _sync(self) -> None:
        kind = self.kind()
        self.address.setEnabled(kind is BackendKind.RAY)
        self.workers.setEnabled(kind is not BackendKind.LOCAL)

    def choice(self) -> BackendChoice:
        kind = self.kind()
        workers = self.workers.value() or None
        if kind is BackendKind.LOCAL:
            return BackendChoice()
        if kind is BackendKind.PROCESSES:
            return BackendChoice(kind, workers)
        address = self.address.text().strip()
        if not address:
            raise QvizError("give a cluster address (HOST:PORT) or 'local'")
        return BackendChoice(kind, workers, None if address == "local" else address)
