"""The main window: setup panels on the left, curves and the per-layer table in the middle, numbers on top.

It only arranges widgets and forwards between them and the :class:`~snp_gui.controller.Controller`;
all state and work live there.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QDockWidget,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from snp_engine.errors import SnpError
from snp_gui import session
from snp_gui.controller import Controller
from snp_gui.dialogs import files
from snp_gui.dialogs.about import show_about
from snp_gui.dialogs.export import ExportDialog, removal_summary
from snp_gui.dialogs.trust import confirm_pickle
from snp_gui.layer_table import LayerTable
from snp_gui.panels.actions import build_actions, fill_recent
from snp_gui.panels.analysis_panel import AnalysisPanel, available_devices
from snp_gui.panels.data_panel import DataPanel
from snp_gui.panels.evaluate_panel import EvaluatePanel, FinetunePanel
from snp_gui.panels.model_panel import MODEL_SUFFIXES, ModelPanel, guess_kind, is_snp_export
from snp_gui.panels.status import ProgressStatus
from snp_gui.panels.wiring import connect_all, show_options, store_options
from snp_gui.plots.curves import CurvesWidget
from snp_gui.settings import Settings
from snp_gui.summary import SummaryBar
from snp_gui.threshold import ThresholdControl

RUN_ACTIONS = ("analyse", "evaluate", "sweep", "finetune", "export", "save_session", "save_session_as")


class MainWindow(QMainWindow):
    """Build with ``MainWindow()``; call :meth:`open_demo` to start on the bundled example."""

    def __init__(self, controller: Controller | None = None, settings: Settings | None = None) -> None:
        super().__init__()
        self.setObjectName("snpMainWindow")
        self.setWindowTitle("snp — Subspace Node Pruning")
        self.setAcceptDrops(True)
        self.controller = controller or Controller(self)
        self.settings = settings or Settings()
        self.confirm_trust = lambda path: confirm_pickle(self, path)  # replaceable, so tests need no dialog
        self.session_path: str | None = None
        self.last_error: tuple[str, str] | None = None
        self._error_box: QMessageBox | None = None
        self._closing = False
        self._build()
        self.actions, self.menus = build_actions(self, self._handlers())
        connect_all(self)
        self._restore_settings()
        self.refresh_recent()
        self.update_actions()

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
        self.tabs = QTabWidget()
        self.tabs.addTab(self.table, "Layers")
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
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 4, 6, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

    def _handlers(self) -> dict:
        c = self.controller
        return {
            "open_model": lambda: self._ask(files.ask_model_file),
            "open_data": lambda: self._ask(files.ask_data_folder),
            "open_npz": lambda: self._ask(files.ask_npz_file),
            "open_session": lambda: self._ask(files.ask_session_to_open),
            "save_session": self.save_session,
            "save_session_as": lambda: self.save_session(ask=True),
            "export": self.export_dialog,
            "quit": self.close,
            "analyse": c.analyse,
            "cancel": self.cancel,
            "evaluate": c.evaluate,
            "sweep": self.evaluate_panel.sweep_button.click,
            "finetune": self.finetune_panel.start_button.click,
            "reset_layout": self.reset_layout,
            "about": lambda: show_about(self),
        }

    # -- starting points --------------------------------------------------------------------------
    def open_demo(self, model: str = "demo-vgg", data: str = "digits") -> None:
        self.load_model_spec(model, guess_kind(model))
        self.load_data_spec(data)

    def load_model_spec(self, spec: str, kind: str | None = None) -> None:
        kind = kind or guess_kind(spec)
        self.model_panel.set_spec(spec, kind)
        if not spec.strip():
            self.show_error("load model", "choose a model file first")
            return
        trust = kind == "pickle"
        if trust and not self.confirm_trust(spec):
            self.statusBar().showMessage("Not opened: the pickled model was not trusted")
            return
        self.controller.load_model(spec, trust=trust)

    def load_data_spec(self, spec: str) -> None:
        self.data_panel.set_spec(spec)
        self.controller.load_data(spec)

    def open_path(self, path: str) -> bool:
        """Open a dropped or given path by what it is: session, data folder/npz or model file."""
        target = Path(path)
        if target.suffix == session.SUFFIX:
            self.open_session(path)
        elif target.is_dir() or target.suffix == ".npz":
            self.load_data_spec(path)
        elif target.suffix in MODEL_SUFFIXES:
            self.open_model_path(path)
        else:
            self.statusBar().showMessage(
                f"Don't know how to open {target.name}: drop a model file "
                f"({', '.join(MODEL_SUFFIXES)}), an image folder, an .npz or a session"
            )
            return False
        self.settings.remember_dir(target)
        return True

    def open_model_path(self, path: str) -> None:
        """An snp export opens as itself; any other weights file goes with the chosen architecture."""
        if path.endswith(".safetensors") and is_snp_export(path):
            self.load_model_spec(path, "snp")
            return
        self.model_panel.set_weights_file(path)
        self.model_panel.request_load()

    # -- file dialogs -----------------------------------------------------------------------------
    def _ask(self, chooser, then=None) -> None:
        path = chooser(self, self.settings.last_dir())
        if path:
            (then or self.open_path)(path)

    def open_session(self, path: str) -> None:
        try:
            data = session.read_session(path)
        except SnpError as exc:
            self.show_error("open session", str(exc))
            return
        trust = data.model_kind == "pickle" and bool(data.model_spec)
        if trust and not self.confirm_trust(data.model_spec):
            self.statusBar().showMessage("Session not opened: its pickled model was not trusted")
            return
        if data.model_spec:
            self.model_panel.set_spec(data.model_spec, data.model_kind)
        if data.data_spec:
            self.data_panel.set_spec(data.data_spec)
        session.restore(self.controller, path, data, trust)
        self.apply_options()
        self.session_path = path
        self.settings.add_recent("sessions", path)
        self.refresh_recent()

    def save_session(self, ask: bool = False) -> None:
        if ask or not self.session_path:
            self._ask(files.ask_session_to_save, self.save_session_to)
        else:
            self.save_session_to(self.session_path)

    def save_session_to(self, path: str) -> None:
        c = self.controller
        # what was loaded, not what the panel shows now: a pickle must ask for trust again on reopening
        kind = None if c.model is None else "pickle" if c.model_trusted else guess_kind(c.model.spec)
        session.save(c, path, kind, on_saved=lambda _written: self._session_saved(path))

    def _session_saved(self, path: str) -> None:
        self.session_path = path
        self.settings.add_recent("sessions", path)
        self.refresh_recent()

    def export_dialog(self) -> None:
        c = self.controller
        try:
            plan = c.plan()
        except SnpError as exc:
            self.show_error("export", str(exc))
            return
        name = Path(c.model.spec).stem.replace("torchvision:", "") if c.model else "model"
        default = str(Path(self.settings.last_dir()) / f"{name}-pruned.safetensors")
        dialog = ExportDialog(removal_summary(plan, c.analysis.units, c.metrics, c.stale), default, self)
        if dialog.exec():
            choice = dialog.choice()
            self.settings.remember_dir(choice.path)
            c.export(choice.path, choice.torchscript, choice.onnx)

    # -- state shown in the window ----------------------------------------------------------------
    def cancel(self) -> None:
        if self.controller.runner.busy:
            self.progress.cancelling()
            self.controller.cancel()

    def show_error(self, task: str, text: str) -> None:
        """One line in the status bar plus a non-blocking dialog; the window stays usable."""
        self.last_error = (task, text)
        self.statusBar().showMessage(f"{task.capitalize()} failed: {text}")
        if self._closing:  # a dialog now would keep the application alive after its window closed
            return
        if self._error_box is not None:
            self._error_box.close()
        self._error_box = QMessageBox(
            QMessageBox.Icon.Warning, f"{task.capitalize()} failed", text, QMessageBox.StandardButton.Ok, self
        )
        self._error_box.setObjectName("errorDialog")
        self._error_box.open()

    def update_actions(self) -> None:
        c, busy = self.controller, self.controller.runner.busy
        ready = {"analyse": c.model is not None and c.data is not None, "save_session": c.model is not None}
        for key in RUN_ACTIONS:
            needs = ready.get(key, c.analysis is not None)
            self.actions[key].setEnabled(not busy and needs)
        self.actions["save_session_as"].setEnabled(not busy and c.model is not None)
        self.actions["cancel"].setEnabled(busy)
        for widget in (self.model_panel, self.data_panel, self.analysis_panel):
            widget.setEnabled(not busy)
        self.analysis_panel.analyse_button.setEnabled(self.actions["analyse"].isEnabled())
        for button in (
            self.evaluate_panel.evaluate_button,
            self.evaluate_panel.sweep_button,
            self.finetune_panel.start_button,
        ):
            button.setEnabled(self.actions["evaluate"].isEnabled())

    def refresh_recent(self) -> None:
        for kind, opener in (
            ("models", self.load_model_spec),
            ("data", self.load_data_spec),
            ("sessions", self.open_session),
        ):
            fill_recent(
                self.menus[f"recent_{kind}"],
                self.settings.recent(kind),
                opener,
                lambda kind=kind: (self.settings.clear_recent(kind), self.refresh_recent()),
            )

    def apply_options(self) -> None:
        """Show the controller's options in the panels (after a session or saved settings were loaded)."""
        show_options(self)

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
            self.resize(1360, 860)
        if state is not None:
            self.restoreState(state)
        store_options(self, load=True)
        for panel in (self.model_panel, self.data_panel):
            panel.set_start_dir(self.settings.last_dir())

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and all(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls()]
        # models first, so a model and its data dropped together end up in the right order
        paths.sort(key=lambda p: Path(p).suffix not in MODEL_SUFFIXES)
        if any([self.open_path(p) for p in paths]):
            event.acceptProposedAction()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._closing = True
        if self.controller.runner.busy:
            self.statusBar().showMessage("Stopping the running task…")
        self.controller.shutdown()
        self.settings.save_window(self.saveGeometry(), self.saveState())
        store_options(self, load=False)
        self.settings.sync()
        event.accept()
