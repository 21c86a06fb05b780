"""Choosing the network to prune: a demo, a torchvision or timm architecture with weights, an snp file or a pickle."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QFormLayout,
    QGroupBox,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from snp_engine.architectures import TIMM_PREFIX, import_timm, timm_names
from snp_engine.errors import ModelLoadError
from snp_engine.models import DEMO_MODELS, TORCHVISION_PREFIX, LoadedModel, list_architectures
from snp_engine.modelsources import MODEL_SOURCES
from snp_gui.panels.common import PathEdit, fill_combo, load_controls, select_data
from snp_gui.sources import guess_kind

# the page of this panel for each registered model source (a new source needs a page: a test checks it)
PAGES = {"demo": "demo", "torchvision": "torchvision", "timm": "timm", "snp": "snp-file", "pickle": "trusted-file"}
KINDS = tuple((kind, MODEL_SOURCES[name].label, MODEL_SOURCES[name].summary) for kind, name in PAGES.items())
WEIGHTS_FILTER = "Weights (*.pth *.pt *.safetensors *.bin *.ckpt);;All files (*)"


class ModelPanel(QGroupBox):
    """Emits ``loadRequested(spec, kind)``; the session asks for trust before loading a pickle."""

    loadRequested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.kind = QComboBox()
        fill_combo(self.kind, KINDS)
        self.kind.setToolTip("Where the network to prune comes from")
        self.stack = QStackedWidget()
        self._build_editors()
        self._add_page(self.demo)
        self._add_page(self._torchvision_page())
        self._add_page(self._timm_page())
        self._add_page(self.snp_file)
        self._add_page(self.pickle_file)
        self.kind.currentIndexChanged.connect(self._show_page)
        self._show_page(0)
        for edit in (self.weights, self.timm_weights, self.snp_file, self.pickle_file):
            edit.pathChosen.connect(lambda _path: self.request_load())
        self.load_button, self.info = load_controls(
            "Load model", "Load the chosen network (Ctrl+O opens a file instead)", self.request_load, "No model loaded"
        )
        layout = QVBoxLayout(self)
        layout.addWidget(self.kind)
        layout.addWidget(self.stack)
        layout.addWidget(self.load_button)
        layout.addWidget(self.info)

    def _build_editors(self) -> None:
        """One editor per source: the demo list, architecture + weights, and the two file fields."""
        self.demo = QComboBox()
        fill_combo(
            self.demo,
            (
                (name, _demo_label(name), f"Bundled {name}, trained on {info.dataset}")
                for name, info in DEMO_MODELS.items()
            ),
        )
        self.demo.setToolTip("A small bundled network: loads instantly, good for trying things out")
        self.arch = QComboBox()
        self.arch.setEditable(True)
        self.arch.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.arch.addItems(
            [a.removeprefix(TORCHVISION_PREFIX) for a in list_architectures() if a.startswith(TORCHVISION_PREFIX)]
        )
        self.arch.completer().setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.arch.completer().setFilterMode(Qt.MatchFlag.MatchContains)
        self.arch.setCurrentText("resnet18")
        self.arch.setToolTip("The torchvision architecture the weights belong to (type to search)")
        self.weights = PathEdit("optional", WEIGHTS_FILTER)
        self.weights.setToolTip(
            "A state dict (.pth/.safetensors) for this architecture; its class count is read "
            "from the file. Leave empty for random weights."
        )
        self.timm_arch = QComboBox()
        self.timm_arch.setEditable(True)
        self.timm_arch.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.timm_arch.setCurrentText("resnet18")
        self.timm_arch.setToolTip("The timm model name (needs the timm package; type to search)")
        self.timm_weights = PathEdit("optional", WEIGHTS_FILTER)
        self.timm_weights.setToolTip(self.weights.toolTip())
        self.snp_file = PathEdit("exported .safetensors file", "snp export (*.safetensors);;All files (*)")
        self.snp_file.setToolTip("A file written by snp's export; it rebuilds the pruned network without running code")
        self.pickle_file = PathEdit("pickled model file", "PyTorch (*.pth *.pt *.pkl);;All files (*)")
        self.pickle_file.setToolTip(
            "A full model saved with torch.save. Only open files you trust: unpickling can run code."
        )

    def _add_page(self, widget: QWidget) -> None:
        # pages hug the top, so a one-line page is not stretched to the height of the tallest
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(widget)
        layout.addStretch(1)
        self.stack.addWidget(page)

    def _show_page(self, index: int) -> None:
        # hidden pages must not reserve space, otherwise the one-line pages get the torchvision page's height
        for position in range(self.stack.count()):
            policy = QSizePolicy.Policy.Preferred if position == index else QSizePolicy.Policy.Ignored
            self.stack.widget(position).setSizePolicy(policy, policy)
        self.stack.setCurrentIndex(index)
        self.stack.adjustSize()
        if self.kind.itemData(index) == "timm":
            self._fill_timm_names()

    def _fill_timm_names(self) -> None:
        """timm's model names, read the first time its page is shown (timm is optional and slow to import)."""
        if self.timm_arch.count():
            return
        try:
            names = timm_names(import_timm("timm"))
        except ModelLoadError:
            return  # not installed: loading says how to install it
        text = self.timm_arch.currentText()
        self.timm_arch.addItems(names)
        self.timm_arch.completer().setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.timm_arch.completer().setFilterMode(Qt.MatchFlag.MatchContains)
        self.timm_arch.setCurrentText(text)

    def _torchvision_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Architecture", self.arch)
        form.addRow("Weights", self.weights)
        return page

    def _timm_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.timm_arch)
        form.addRow("Weights", self.timm_weights)
        return page

    # -- specs ------------------------------------------------------------------------------------
    def current(self) -> tuple[str, str]:
        """(spec for load_model, kind)."""
        kind = str(self.kind.currentData())
        if kind == "demo":
            return str(self.demo.currentData()), kind
        if kind == "torchvision":
            weights = self.weights.path()
            return f"{TORCHVISION_PREFIX}{self.arch.currentText().strip()}" + (f"@{weights}" if weights else ""), kind
        if kind == "timm":
            weights = self.timm_weights.path()
            return f"{TIMM_PREFIX}{self.timm_arch.currentText().strip()}" + (f"@{weights}" if weights else ""), kind
        return (self.snp_file if kind == "snp" else self.pickle_file).path(), kind

    def request_load(self) -> None:
        spec, kind = self.current()
        self.loadRequested.emit(spec, kind)

    def set_spec(self, spec: str, kind: str | None = None) -> None:
        """Show ``spec`` in the matching page (used for recent files, sessions and dropped files)."""
        kind = kind or guess_kind(spec)
        if spec.startswith(TIMM_PREFIX) and kind == "snp":  # guess_kind knows no timm specs
            kind = "timm"
        select_data(self.kind, kind)
        if kind == "demo":
            select_data(self.demo, spec)
        elif kind == "torchvision":
            arch, _, weights = spec.removeprefix(TORCHVISION_PREFIX).partition("@")
            if arch:
                self.arch.setCurrentText(arch)
            self.weights.set_path(weights)
        elif kind == "timm":
            name, _, weights = spec.removeprefix(TIMM_PREFIX).partition("@")
            if name:
                self.timm_arch.setCurrentText(name)
            self.timm_weights.set_path(weights)
        else:
            (self.snp_file if kind == "snp" else self.pickle_file).set_path(spec)

    def set_weights_file(self, path: str) -> None:
        """A dropped weights file: keep the chosen architecture, use the file's weights."""
        select_data(self.kind, "torchvision")
        self.weights.set_path(path)

    def set_start_dir(self, folder: str) -> None:
        for edit in (self.weights, self.timm_weights, self.snp_file, self.pickle_file):
            edit.start_dir = folder

    def show_loaded(self, loaded: LoadedModel | None) -> None:
        if loaded is None:
            self.info.setText("No model loaded")
            return
        params = sum(p.numel() for p in loaded.model.parameters())
        source = Path(loaded.source).name if loaded.source not in ("random init",) else loaded.source
        self.info.setText(
            f"<b>{loaded.arch}</b> · {params:,} parameters · {loaded.num_classes} classes · "
            f"input {'×'.join(map(str, loaded.input_shape))}<br>from {source}"
        )
        self.info.setToolTip(loaded.source)


def _demo_label(name: str) -> str:
    top1 = DEMO_MODELS[name].test_top1
    return f"{name} (digits, {top1:.1f} % top-1)" if top1 is not None else name
