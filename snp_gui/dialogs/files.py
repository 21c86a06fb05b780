"""File choosers of the main window; each returns a path, or "" when the user cancelled."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QFileDialog, QWidget

from snp_gui.sources import SESSION_SUFFIX

if TYPE_CHECKING:
    from snp_gui.settings import Settings
    from snp_gui.state import Session

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


def ask_then(
    chooser: Callable[[QWidget, str], str], parent: QWidget, settings: Settings, then: Callable[[str], object]
) -> None:
    """Ask with ``chooser`` from the last folder used; a chosen path is remembered and handed to ``then``."""
    path = chooser(parent, settings.last_dir())
    if path:
        settings.remember_dir(path)
        then(path)


def save_session(parent: QWidget, session: Session, settings: Settings, ask: bool = False) -> None:
    """Save to the session's file, asking for one first when there is none yet (or ``ask``)."""
    if ask or not session.session_path:
        ask_then(ask_session_to_save, parent, settings, session.save_session_file)
    else:
        session.save_session_file(session.session_path)
