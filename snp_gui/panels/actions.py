"""Menu bar, toolbar and keyboard shortcuts of the main window, in one table; which of them can run now,
and the recent-files menus, both following the session."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QColor, QIcon, QKeySequence, QPainter, QPalette
from PySide6.QtWidgets import QMainWindow, QMenu, QStyle, QToolBar, QWidget

from snp_gui.panels.binding import on_state_change

if TYPE_CHECKING:
    from snp_gui.settings import Settings
    from snp_gui.state import Session

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
    "undo": ("&Undo plan change", ("Ctrl+Z",), "Go back to the plan before the last change", None, False),
    "redo": ("&Redo plan change", ("Ctrl+Shift+Z", "Ctrl+Y"), "Make the undone change again", None, False),
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
    "&Edit": ("undo", "redo"),
    "&Run": ("analyse", "cancel", None, "evaluate", "sweep", "finetune"),
    "&View": ("reset_layout",),
    "&Help": ("about",),
}
RECENT_MENUS = {"recent_models": "Recent &models", "recent_data": "Recent &data", "recent_sessions": "Recent &sessions"}
# actions that start a task: each needs an idle runner and an analysis, unless NEEDS says otherwise
RUN_ACTIONS = ("analyse", "evaluate", "sweep", "finetune", "export", "save_session", "save_session_as")
NEEDS: dict[str, Callable[[Session], bool]] = {
    "analyse": lambda s: s.model is not None and s.data is not None,
    "save_session": lambda s: s.model is not None,
    "save_session_as": lambda s: s.model is not None,
}


def build_actions(
    window: QMainWindow, handlers: dict[str, Callable[[], None]]
) -> tuple[dict[str, QAction], dict[str, QMenu]]:
    """Create every action (shortcut in its tooltip), the menus and the toolbar."""
    actions: dict[str, QAction] = {}
    for key, (text, shortcuts, tip, _icon, _toolbar) in ACTIONS.items():
        action = QAction(text, window)
        action.setObjectName(key)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            tip = f"{tip} ({' / '.join(shortcuts)})"
        action.setToolTip(tip)
        action.setStatusTip(tip)
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
    apply_icons(window, actions)
    return actions, menus


DARK_ICON = 90  # icons darker than this vanish on a dark toolbar


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def tinted(icon: QIcon, colour: QColor, size: int = 32) -> QIcon:
    """``icon`` as a silhouette in ``colour`` (the style's standard icons are drawn for light toolbars)."""
    pixmap = icon.pixmap(size, size)
    painter = QPainter(pixmap)
    painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceIn)
    painter.fillRect(pixmap.rect(), colour)
    painter.end()
    return QIcon(pixmap)


def lightness(icon: QIcon, size: int = 16) -> float:
    """Mean lightness (0..255) of the icon's visible pixels."""
    image = icon.pixmap(size, size).toImage()
    values = [
        colour.lightness()
        for y in range(image.height())
        for x in range(image.width())
        if (colour := image.pixelColor(x, y)).alpha() > 64
    ]
    return sum(values) / len(values) if values else 255.0


def apply_icons(window: QWidget, actions: dict[str, QAction]) -> None:
    """The standard icons; on a dark palette the black ones (play, stop, tick) are redrawn in the text colour."""
    palette = window.palette()
    for key, (_text, _shortcuts, _tip, icon, _toolbar) in ACTIONS.items():
        if not icon:
            continue
        standard = window.style().standardIcon(getattr(QStyle.StandardPixmap, icon))
        dark_icon = is_dark(palette) and lightness(standard) < DARK_ICON
        actions[key].setIcon(tinted(standard, palette.color(QPalette.ColorRole.ButtonText)) if dark_icon else standard)


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


def bind_actions(actions: dict[str, QAction], session: Session) -> None:
    """Enable each action when it can run: nothing else running and what it needs is loaded."""

    def update() -> None:
        for key in RUN_ACTIONS:
            needs = NEEDS.get(key, lambda s: s.analysis is not None)
            actions[key].setEnabled(not session.busy and needs(session))
        actions["cancel"].setEnabled(session.busy)

    on_state_change(session, update)

    def undo_state(can_undo: bool, can_redo: bool) -> None:
        actions["undo"].setEnabled(can_undo)
        actions["redo"].setEnabled(can_redo)

    session.undo_changed.connect(undo_state)
    undo_state(session.can_undo(), session.can_redo())


def bind_recent(menus: dict[str, QMenu], settings: Settings, session: Session) -> None:
    """Remember what was loaded or saved, and open it again from the recent-files menus."""
    openers = {"models": session.open_model, "data": session.open_data, "sessions": session.open_session_file}

    def refresh(kind: str) -> None:
        clear = partial(_clear_recent, settings, kind, refresh)
        fill_recent(menus[f"recent_{kind}"], settings.recent(kind), openers[kind], clear)

    def remember(kind: str, entry: str | None) -> None:
        if entry:
            settings.add_recent(kind, entry)
            refresh(kind)

    session.model_changed.connect(lambda loaded: remember("models", loaded.spec))
    session.data_changed.connect(lambda _bundle: remember("data", session.data_spec))
    session.session_file_changed.connect(lambda path: remember("sessions", path))
    for kind in openers:
        refresh(kind)


def _clear_recent(settings: Settings, kind: str, refresh: Callable[[str], None]) -> None:
    settings.clear_recent(kind)
    refresh(kind)
