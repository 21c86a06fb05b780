"""The main window: setup panels on the left, curves and the per-layer table in the middle, numbers on top.

It only composes: it creates the views, docks and menus and binds each view to the one
:class:`~snp_gui.state.Session` (see :mod:`snp_gui.panels.binding`). All state and work live in
the session; the window keeps nothing but its layout.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QGuiApplication, QShowEvent
from PySide6.QtWidgets import QDockWidget, QMainWindow, QScrollArea, QSplitter, QTabWidget, QVBoxLayout, QWidget

from snp_gui.dialogs import files
from snp_gui.dialogs.about import show_about
from snp_gui.dialogs.errors import ErrorReporter
from snp_gui.dialogs.export import export_with_dialog
from snp_gui.dialogs.trust import confirm_pickle
from snp_gui.layer_table import LayerTable
from snp_gui.panels import binding
from snp_gui.panels.actions import apply_icons, bind_actions, bind_recent, build_actions
from snp_gui.panels.analysis_panel import AnalysisPanel, available_devices
from snp_gui.panels.architecture_panel import ArchitecturePanel
from snp_gui.panels.blocks_panel import BlocksPanel
from snp_gui.panels.data_panel import DataPanel
from snp_gui.panels.evaluate_panel import EvaluatePanel, FinetunePanel
from snp_gui.panels.model_panel import ModelPanel
from snp_gui.panels.plans_panel import PlansPanel
from snp_gui.panels.sensitivity_panel import SensitivityPanel
from snp_gui.panels.status import ProgressStatus
from snp_gui.plots.curves import CurvesWidget
from snp_gui.settings import Settings, load_options, save_options
from snp_gui.sources import MODEL_SUFFIXES
from snp_gui.state import Session
from snp_gui.summary import SummaryBar
from snp_gui.threshold import ThresholdControl

DEFAULT_SIZE = (1360, 860)
CURVES_SHARE, CURVES_MIN_HEIGHT, TABS_MIN_HEIGHT = 0.66, 240, 140
MINIMUM_SIZE = (1024, 640)  # below this the curves get too small to read and drag


def fitting_size(window: QWidget, width: int, height: int) -> tuple[int, int]:
    """``width`` × ``height``, made smaller where the screen has less room (a 1280×720 laptop)."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return width, height
    room = screen.availableGeometry()
    low_width, low_height = minimum_size(window)
    return max(min(width, room.width()), low_width), max(min(height, room.height() - 40), low_height)


def minimum_size(window: QWidget) -> tuple[int, int]:
    """:data:`MINIMUM_SIZE`, or the whole screen where that is smaller."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return MINIMUM_SIZE
    room = screen.availableGeometry()
    return min(MINIMUM_SIZE[0], room.width()), min(MINIMUM_SIZE[1], room.height())


class MainWindow(QMainWindow):
    """Build with ``MainWindow()``; ``window.session.open_demo()`` starts on the bundled example."""

    def __init__(self, session: Session | None = None, settings: Settings | None = None) -> None:
        super().__init__()
        self.setObjectName("snpMainWindow")
        self.setWindowTitle("snp — Subspace Node Pruning")
        self.setAcceptDrops(True)
        self.setMinimumSize(*minimum_size(self))
        self.session = session or Session(self)
        self.session.confirm_trust = lambda path: confirm_pickle(self, path)  # tests replace it
        self.settings = settings or Settings()
        self.errors = ErrorReporter(self)
        self._build()
        self.actions, self.menus = build_actions(self, self._handlers())
        self._bind()
        self._restore_settings()

    @property
    def controller(self) -> Session:
        """The earlier name of ``session``, still used by benchmarks/gui_latency.py."""
        return self.session

    # -- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_panel = ModelPanel()
        self.data_panel = DataPanel()
        self.analysis_panel = AnalysisPanel(available_devices())
        setup = QWidget()
        column = QVBoxLayout(setup)
        for panel in (self.model_panel, self.data_panel, self.analysis_panel):
            column.addWidget(panel)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(setup)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setup_dock = QDockWidget("Setup", self)
        self.setup_dock.setObjectName("setupDock")
        self.setup_dock.setWidget(scroll)
        self.setup_dock.setMinimumWidth(setup.sizeHint().width() + 24)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.setup_dock)
        self._build_central()
        self.progress = ProgressStatus()
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().showMessage("Ready")

    def _build_central(self) -> None:
        """Summary on top, threshold and curves as the main view, the table and extra tools in tabs."""
        self.summary = SummaryBar()
        self.threshold = ThresholdControl()
        self.curves = CurvesWidget()
        self.table = LayerTable()
        self.evaluate_panel = EvaluatePanel()
        self.finetune_panel = FinetunePanel()
        self.plans_panel = PlansPanel()
        self.sensitivity_panel = SensitivityPanel()
        self.architecture_panel = ArchitecturePanel()
        self.blocks_panel = BlocksPanel()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.table, "Layers")
        self.tabs.addTab(self.plans_panel, "Plans")
        self.tabs.addTab(self.sensitivity_panel, "Sensitivity")
        self.tabs.addTab(self.architecture_panel, "Architecture")
        self.tabs.addTab(self.blocks_panel, "Blocks")
        self.tabs.addTab(self.evaluate_panel, "Evaluate && sweep")
        self.tabs.addTab(self.finetune_panel, "Fine-tune")
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.threshold)
        top_layout.addWidget(self.curves, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([560, 280])  # the curves are the main view; the tabs get the rest
        self.splitter.setChildrenCollapsible(False)
        self.curves.setMinimumHeight(CURVES_MIN_HEIGHT)
        self.tabs.setMinimumHeight(TABS_MIN_HEIGHT)
        self._sized = False  # the splitter is shared out once the window has its real size
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 4, 6, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

    def _handlers(self) -> dict:
        s, ask = self.session, lambda chooser, then: files.ask_then(chooser, self, self.settings, then)
        return {
            "open_model": lambda: ask(files.ask_model_file, s.open_path),
            "open_data": lambda: ask(files.ask_data_folder, s.open_data),
            "open_npz": lambda: ask(files.ask_npz_file, s.open_data),
            "open_session": lambda: ask(files.ask_session_to_open, s.open_session_file),
            "save_session": lambda: files.save_session(self, s, self.settings),
            "save_session_as": lambda: files.save_session(self, s, self.settings, ask=True),
            "export": lambda: export_with_dialog(self, s, self.settings),
            "quit": self.close,
            "undo": s.undo,
            "redo": s.redo,
            "analyse": s.analyse,
            "cancel": s.cancel,
            "evaluate": s.evaluate,
            "sweep": lambda: s.sweep(),  # with the options' reductions (the action passes "checked")
            "finetune": lambda: s.finetune(),
            "reset_layout": self.reset_layout,
            "about": lambda: show_about(self),
        }

    def _bind(self) -> None:
        """Each view to the session, and the session's messages to the window's status bar and title."""
        s = self.session
        binding.bind_model_panel(self.model_panel, s)
        binding.bind_data_panel(self.data_panel, s)
        binding.bind_analysis_panel(self.analysis_panel, s)
        binding.bind_threshold(self.threshold, s)
        binding.bind_curves(self.curves, s)
        binding.bind_table(self.table, s)
        binding.bind_summary(self.summary, s)
        binding.bind_evaluate_panel(self.evaluate_panel, s)
        binding.bind_finetune_panel(self.finetune_panel, s)
        binding.bind_plans_panel(self.plans_panel, s)
        binding.bind_sensitivity_panel(self.sensitivity_panel, s)
        binding.bind_architecture_panel(self.architecture_panel, s)
        binding.bind_blocks_panel(self.blocks_panel, s)
        binding.bind_progress(self.progress, s)
        bind_actions(self.actions, s)
        bind_recent(self.menus, self.settings, s)
        s.message.connect(self.statusBar().showMessage)
        s.error_occurred.connect(self.errors.show)
        s.model_changed.connect(lambda loaded: self.setWindowTitle(f"snp — {loaded.arch}"))

    # -- window events ----------------------------------------------------------------------------
    def reset_layout(self) -> None:
        self.setup_dock.setFloating(False)
        self.setup_dock.show()
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.setup_dock)

    def _restore_settings(self) -> None:
        geometry, state = self.settings.window_geometry(), self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(*fitting_size(self, *DEFAULT_SIZE))
        if state is not None:
            self.restoreState(state)
        notes: list[str] = []
        self.session.set_options(load_options(self.settings, self.session.options.device, notes))
        if notes:  # a damaged or hand-edited settings file: the defaults were used instead
            self.statusBar().showMessage(f"Settings: {'; '.join(notes)}")
        for panel in (self.model_panel, self.data_panel):
            panel.set_start_dir(self.settings.last_dir())

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "actions"):  # icons in the new text colour
            apply_icons(self, self.actions)
        super().changeEvent(event)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._sized:  # once, now that the window has its real height
            self._sized = True
            total = sum(self.splitter.sizes())
            self.splitter.setSizes([round(CURVES_SHARE * total), total - round(CURVES_SHARE * total)])

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and all(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls()]
        # models first, so a model and its data dropped together end up in the right order
        paths.sort(key=lambda p: Path(p).suffix not in MODEL_SUFFIXES)
        opened = [path for path in paths if self.session.open_path(path)]
        for path in opened:
            self.settings.remember_dir(path)
        if opened:
            event.acceptProposedAction()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.errors.closing = True
        if self.session.busy:
            self.statusBar().showMessage("Stopping the running task…")
        self.session.shutdown()
        self.settings.save_window(self.saveGeometry(), self.saveState())
        save_options(self.settings, self.session.options)
        self.settings.sync()
        event.accept()
