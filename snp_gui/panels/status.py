"""The progress area of the status bar: what runs, how far it is, time left, and Cancel."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget


def format_left(seconds: float | None) -> str:
    """ "12 s left", "3 min left", "1 h 5 min left"; empty while the estimate is not yet meaningful."""
    if seconds is None or seconds < 0:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s left"
    minutes = round(seconds / 60)
    return f"{minutes} min left" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min left"


class ProgressStatus(QWidget):
    """Hidden while nothing runs; emits ``cancelRequested`` from its Cancel button."""

    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stage = QLabel()
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setFixedWidth(220)
        self.bar.setTextVisible(True)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop the running task (Esc); what was there before is kept")
        self.cancel_button.clicked.connect(self.cancelRequested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stage)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.setVisible(False)

    def start(self, task: str) -> None:
        self.task = task
        self.bar.setValue(0)
        self.bar.setFormat(f"{task} %p%")
        self.stage.setText(f"{task.capitalize()}…")
        self.cancel_button.setEnabled(True)
        self.setVisible(True)

    def update_progress(self, task: str, fraction: float, message: str, left: float | None) -> None:
        self.bar.setValue(round(1000 * fraction))
        self.bar.setFormat(f"{task} %p%")
        self.stage.setText(" · ".join(part for part in (message, format_left(left)) if part))

    def cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.stage.setText("Cancelling…")

    def finish(self) -> None:
        self.setVisible(False)
