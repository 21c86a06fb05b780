"""File choosers of the main window; each returns a path, or "" when the user cancelled."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog, QWidget

from snp_gui.session import SUFFIX as SESSION_SUFFIX

MODEL_FILTER = "Models (*.pth *.pt *.safetensors *.bin *.ckpt);;All files (*)"


def ask_model_file(parent: QWidget, folder: str) -> str:
    return QFileDialog.getOpenFileName(parent, "Open model", folder, MODEL_FILTER)[0]


def ask_data_folder(parent: QWidget, folder: str) -> str:
    return QFileDialog.getExistingDirectory(parent, "Open image folder", folder)


def ask_npz_file(parent: QWidget, folder: str) -> str:
    return QFileDialog.getOpenFileName(parent, "Open NumPy data", folder, "NumPy (*.npz)")[0]


def ask_session_to_open(parent: QWidget, folder: str) -> str:
    return QFileDialog.getOpenFileName(parent, "Open session", folder, f"snp sessions (*{SESSION_SUFFIX})")[0]


def ask_session_to_save(parent: QWidget, folder: str) -> str:
    path = QFileDialog.getSaveFileName(parent, "Save session", folder, f"snp sessions (*{SESSION_SUFFIX})")[0]
    return path if not path or path.endswith(SESSION_SUFFIX) else path + SESSION_SUFFIX
