"""Small widgets shared by the panels."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QWidget,
)


def load_controls(text: str, tooltip: str, on_click, empty: str) -> tuple[QPushButton, QLabel]:
    """The "Load …" button and the selectable summary label under it, as every setup panel has."""
    button = QPushButton(text)
    button.setToolTip(tooltip)
    button.clicked.connect(on_click)
    info = QLabel(empty)
    info.setWordWrap(True)
    info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return button, info


class PathEdit(QWidget):
    """A path field with a browse button; ``mode`` is "file" or "folder"."""

    pathChosen = Signal(str)  # from the browse dialog or Enter in the field

    def __init__(self, placeholder: str, file_filter: str = "", mode: str = "file", parent: QWidget | None = None):
        super().__init__(parent)
        self.mode, self.file_filter, self.start_dir = mode, file_filter, ""
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.returnPressed.connect(lambda: self.pathChosen.emit(self.path()))
        self.button = QToolButton()
        self.button.setText("…")
        self.button.setToolTip("Browse for a " + ("folder" if mode == "folder" else "file"))
        self.button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button)

    def path(self) -> str:
        return self.edit.text().strip()

    def set_path(self, path: str) -> None:
        self.edit.setText(path)

    def setToolTip(self, text: str) -> None:
        super().setToolTip(text)
        self.edit.setToolTip(text)

    def browse(self) -> None:
        start = self.path() or self.start_dir
        if self.mode == "folder":
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self.file_filter)
        if path:
            self.set_path(path)
            self.pathChosen.emit(path)


def fill_combo(combo: QComboBox, items: Iterable[tuple[str, str, str]]) -> None:
    """(data, label, tooltip) entries; the tooltip shows when hovering the item in the list."""
    combo.clear()
    for index, (data, label, tip) in enumerate(items):
        combo.addItem(label, data)
        combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)


def select_data(combo: QComboBox, data: object) -> bool:
    """Select the item whose data is ``data``; False when there is none."""
    index = combo.findData(data)
    if index >= 0:
        combo.setCurrentIndex(index)
    return index >= 0
