"""Failures as the user sees them: one line in the status bar plus a non-blocking dialog."""

from __future__ import annotations

from PySide6.QtWidgets import QMainWindow, QMessageBox


class ErrorReporter:
    """Shows the session's ``error_occurred``; the window stays usable while the dialog is open."""

    def __init__(self, window: QMainWindow) -> None:
        self.window = window
        self.last: tuple[str, str] | None = None  # task, message: the latest failure (for tests and support)
        self.closing = False  # set when the window closes: a dialog then would keep the application alive
        self._box: QMessageBox | None = None

    def show(self, task: str, text: str) -> None:
        self.last = (task, text)
        self.window.statusBar().showMessage(f"{task.capitalize()} failed: {text}")
        if self.closing:
            return
        if self._box is not None:
            self._box.close()
        self._box = QMessageBox(
            QMessageBox.Icon.Warning, f"{task.capitalize()} failed", text, QMessageBox.StandardButton.Ok, self.window
        )
        self._box.setObjectName("errorDialog")
        self._box.open()
