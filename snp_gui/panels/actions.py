"""Menu bar, toolbar and keyboard shortcuts of the main window, in one table."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu, QStyle, QToolBar

# key: (text, shortcuts, tooltip, standard icon or None, on toolbar)
ACTIONS: dict[str, tuple[str, tuple[str, ...], str, str | None, bool]] = {
    "open_model": (
        "Open &model file…",
        ("Ctrl+O",),
        "Open a weights file or an snp export",
        "SP_DialogOpenButton",
        True,
    ),
    "open_data": (
        "Open image &folder…",
        ("Ctrl+Shift+O",),
        "Use a folder of images (one subfolder per class)",
        "SP_DirOpenIcon",
        True,
    ),
    "open_npz": ("Open &NumPy data…", (), "Use images stored in an .npz file", None, False),
    "open_session": ("Open &session…", (), "Reopen saved work: model, data, settings and keep counts", None, False),
    "save_session": (
        "&Save session",
        ("Ctrl+S",),
        "Save the current work so it can be reopened later",
        "SP_DialogSaveButton",
        True,
    ),
    "save_session_as": ("Save session &as…", ("Ctrl+Shift+S",), "Save the current work under a new name", None, False),
    "export": (
        "&Export pruned network…",
        ("Ctrl+Shift+E",),
        "Write the pruned network to a file",
        "SP_DriveFDIcon",
        True,
    ),
    "quit": ("&Quit", ("Ctrl+Q",), "Close snp", None, False),
    "analyse": (
        "&Analyse",
        ("Ctrl+R", "F5"),
        "Measure every layer's activations on the calibration images",
        "SP_MediaPlay",
        True,
    ),
    "cancel": ("&Cancel", ("Esc",), "Stop the running task; the previous results are kept", "SP_MediaStop", True),
    "evaluate": (
        "E&valuate plan",
        ("Ctrl+E",),
        "Prune and measure accuracy, output error and latency",
        "SP_DialogApplyButton",
        True,
    ),
    "sweep": (
        "Run accuracy &sweep",
        (),
        "Top-1 against FLOPs reduction, compared with a baseline ordering",
        None,
        False,
    ),
    "finetune": ("&Fine-tune pruned network", (), "Train the pruned network for a few epochs", None, False),
    "reset_layout": ("&Reset layout", (), "Put the panels back where they started", None, False),
    "about": ("&About snp", ("F1",), "Versions and what snp does", None, False),
}
MENUS = {
    "&File": (
        "open_model",
        "open_data",
        "open_npz",
        "|recent_models",
        "|recent_data",
        None,
        "open_session",
        "|recent_sessions",
        "save_session",
        "save_session_as",
        None,
        "export",
        None,
        "quit",
    ),
    "&Run": ("analyse", "cancel", None, "evaluate", "sweep", "finetune"),
    "&View": ("reset_layout",),
    "&Help": ("about",),
}
RECENT_MENUS = {"recent_models": "Recent &models", "recent_data": "Recent &data", "recent_sessions": "Recent &sessions"}


def build_actions(
    window: QMainWindow, handlers: dict[str, Callable[[], None]]
) -> tuple[dict[str, QAction], dict[str, QMenu]]:
    """Create every action (shortcut in its tooltip), the menus and the toolbar."""
    actions: dict[str, QAction] = {}
    for key, (text, shortcuts, tip, icon, _toolbar) in ACTIONS.items():
        action = QAction(text, window)
        action.setObjectName(key)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            tip = f"{tip} ({' / '.join(shortcuts)})"
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if icon:
            action.setIcon(window.style().standardIcon(getattr(QStyle.StandardPixmap, icon)))
        if key in handlers:
            action.triggered.connect(handlers[key])
        window.addAction(action)  # shortcuts work even while the menu bar is hidden
        actions[key] = action
    actions["quit"].setMenuRole(QAction.MenuRole.QuitRole)
    actions["about"].setMenuRole(QAction.MenuRole.AboutRole)
    menus: dict[str, QMenu] = {}
    for title, keys in MENUS.items():
        menu = window.menuBar().addMenu(title)
        for key in keys:
            if key is None:
                menu.addSeparator()
            elif key.startswith("|"):
                menus[key[1:]] = menu.addMenu(RECENT_MENUS[key[1:]])
            else:
                menu.addAction(actions[key])
    toolbar = QToolBar("Main toolbar", window)
    toolbar.setObjectName("mainToolbar")
    toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    for key, spec in ACTIONS.items():
        if spec[4]:
            toolbar.addAction(actions[key])
    window.addToolBar(toolbar)
    return actions, menus


def fill_recent(menu: QMenu, entries: list[str], open_entry: Callable[[str], None], clear: Callable[[], None]) -> None:
    """Rebuild a recent-files submenu; most recent first."""
    menu.clear()
    for entry in entries:
        action = menu.addAction(entry)
        action.triggered.connect(lambda _checked=False, entry=entry: open_entry(entry))
    if entries:
        menu.addSeparator()
        menu.addAction("Clear list").triggered.connect(clear)
    menu.setEnabled(bool(entries))
