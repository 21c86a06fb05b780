"""About dialog: what snp is and the versions of the pieces it runs on."""

from __future__ import annotations

import platform

from PySide6.QtWidgets import QMessageBox, QWidget


def versions() -> dict[str, str]:
    """Versions of snp and the libraries whose behaviour matters when reporting a problem."""
    import pyqtgraph
    import PySide6
    import torch
    import torchvision
    from PySide6.QtCore import qVersion

    from snp_engine import __version__

    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    return {
        "snp": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "CUDA": str(cuda),
        "PySide6": PySide6.__version__,
        "Qt": qVersion(),
        "pyqtgraph": pyqtgraph.__version__,
        "Python": platform.python_version(),
    }


def about_text() -> str:
    rows = "".join(f"<tr><td>{name}</td><td><b>{version}</b></td></tr>" for name, version in versions().items())
    return (
        "<h3>snp — Subspace Node Pruning</h3>"
        "<p>See how much of each layer's activations a few units explain, choose how many to keep, "
        "and export a smaller network.</p>"
        f"<table cellspacing=4>{rows}</table>"
    )


def show_about(parent: QWidget) -> QMessageBox:
    """Non-blocking, so a running analysis keeps reporting progress behind it."""
    box = QMessageBox(QMessageBox.Icon.Information, "About snp", about_text(), QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("aboutDialog")
    box.open()
    return box
