"""The confirmation shown before a pickled model is opened, because unpickling can run code."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

WARNING = (
    "<p><b>Opening a pickled model can run code on this computer.</b></p>"
    "<p>A file saved with <code>torch.save(model)</code> is a Python pickle: loading it executes whatever "
    "instructions it contains, with your permissions. Only continue if you trust where "
    "<b>{name}</b> came from.</p>"
    "<p>Safer: load the architecture from torchvision with a weights file, or open an snp export.</p>"
)


def confirm_pickle(parent: QWidget | None, path: str) -> bool:
    """Ask before unpickling ``path``; the safe answer (Cancel) is the default."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Open a pickled model?")
    box.setText(WARNING.format(name=Path(path).name or path))
    load = box.addButton("Load anyway", QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    box.exec()
    return box.clickedButton() is load
