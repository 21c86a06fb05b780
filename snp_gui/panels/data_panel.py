"""Choosing the calibration/test data and how much of it the analysis reads."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QSpinBox, QWidget

from snp_engine.data import DataBundle
from snp_engine.datasources import DATA_SOURCES, find_source
from snp_engine.workflows import Prepared
from snp_gui.panels.common import PathEdit, fill_combo, load_controls, select_data

# one entry per registered data source: a new source appears here by itself
KINDS = tuple((name, source.label, source.summary) for name, source in DATA_SOURCES.items())


class DataPanel(QGroupBox):
    """Emits ``loadRequested(spec)`` and ``optionsChanged()`` when a number is edited."""

    loadRequested = Signal(str)
    optionsChanged = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Data", parent)
        self.kind = QComboBox()
        fill_combo(self.kind, KINDS)
        self.kind.setToolTip("Images used to measure the activations (calibration) and to score the network (test)")
        self.path = PathEdit("folder or .npz file")
        self.path.setToolTip("Where the images are")
        self.path.pathChosen.connect(lambda _path: self.request_load())
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.samples = _spin(
            8,
            1_000_000,
            256,
            "Calibration images the analysis looks at. More gives steadier "
            "curves but takes longer; a few hundred is usually enough.",
        )
        self.batch_size = _spin(
            1,
            4096,
            64,
            "Images processed together. Larger is faster but needs more memory; "
            "the progress bar and Cancel react once per batch.",
        )
        self.input_size = _spin(
            0,
            2048,
            0,
            "Side length, in pixels, the images are fed to the network at. 'auto': the data's own size "
            "for networks that take any size, else the size the network expects.",
        )
        self.input_size.setSpecialValueText("auto")
        self.input_size.setSuffix(" px")
        for spin in (self.samples, self.batch_size, self.input_size):
            spin.valueChanged.connect(lambda _value: self.optionsChanged.emit())
        self.load_button, self.info = load_controls(
            "Load data",
            "Load the chosen images (Ctrl+Shift+O opens a folder or file instead)",
            self.request_load,
            "No data loaded",
        )
        form = QFormLayout(self)
        form.addRow(self.kind)
        form.addRow(self.path)
        form.addRow("Calibration images", self.samples)
        self.samples_note = QLabel()  # when more images are asked for than the data has
        self.samples_note.setWordWrap(True)
        self.samples_note.setObjectName("samplesNote")
        self.samples_note.setStyleSheet("QLabel#samplesNote { color: #b26b00; }")
        self.samples_note.hide()
        form.addRow(self.samples_note)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Input size", self.input_size)
        form.addRow(self.load_button)
        form.addRow(self.info)
        self.fit = QLabel()
        self.fit.setWordWrap(True)
        self.fit.hide()
        self.banner = _banner()
        form.addRow(self.fit)
        form.addRow(self.banner)
        self._kind_changed()

    def _kind_changed(self, _index: int = 0) -> None:
        source = DATA_SOURCES[self.kind.currentData()]
        self.path.setVisible(source.path_kind != "none")
        self.path.mode = "folder" if source.path_kind == "folder" else "file"
        self.path.file_filter = source.file_filter or "All files (*)"
        self.path.edit.setPlaceholderText(source.label.lower())

    def current(self) -> str:
        source = DATA_SOURCES[self.kind.currentData()]
        path = self.path.path()
        return source.spec_for(path) if path or source.path_kind == "none" else ""

    def request_load(self) -> None:
        self.loadRequested.emit(self.current())

    def set_spec(self, spec: str) -> None:
        source = find_source(spec)
        if source is None:  # a path that is gone: keep it visible under the kind it looks like
            source = DATA_SOURCES["npz" if spec.startswith("npz:") or spec.endswith(".npz") else "folder"]
        select_data(self.kind, source.name)
        if source.path_kind != "none":
            self.path.set_path(spec.removeprefix("npz:"))

    def set_start_dir(self, folder: str) -> None:
        self.path.start_dir = folder

    def values(self) -> dict[str, int]:
        return {
            "samples": self.samples.value(),
            "batch_size": self.batch_size.value(),
            "input_size": self.input_size.value(),
        }

    def set_values(self, samples: int, batch_size: int, input_size: int) -> None:
        for spin, value in ((self.samples, samples), (self.batch_size, batch_size), (self.input_size, input_size)):
            spin.blockSignals(True)
            spin.setValue(int(value))
            spin.blockSignals(False)

    def show_loaded(self, bundle: DataBundle | None) -> None:
        """Describe the loaded data (what the model makes of it follows in :meth:`show_prepared`)."""
        self.show_prepared(None)
        if bundle is None:
            self.info.setText("No data loaded")
            return
        name = bundle.name if bundle.name == "digits" else Path(bundle.name).name
        train = f"{len(bundle.train)} train · " if bundle.train is not None else ""
        size = "×".join(map(str, bundle.image_size)) if bundle.image_size else "mixed sizes"
        skipped = f"<br>{bundle.skipped} unreadable file(s) skipped" if bundle.skipped else ""
        if bundle.held_out:
            use = f"{len(bundle.calibration)} calibration · {len(bundle.test)} test"
        else:
            use = f"{len(bundle.calibration)} images, used whole (no held-out test split)"
        self.info.setText(
            f"<b>{name}</b> · {bundle.num_classes or '?'} classes · {bundle.channels}×{size}<br>{train}{use}{skipped}"
        )
        self.info.setToolTip(bundle.name)

    def show_prepared(self, prepared: Prepared | None) -> None:
        """What was adapted for the model, the unpruned model's accuracy on the data, and any warning."""
        if prepared is None:
            self.banner.hide()
            self.fit.setText("")
            self.fit.hide()
            return
        lines = [f"fed to the model as {'×'.join(map(str, prepared.input_shape))}"]
        lines += [note.partition(": ")[2] or note for note in prepared.notes]
        if prepared.dense is not None:
            lines.append(
                f"unpruned top-1 {prepared.dense.top1:.1f} % on the first {prepared.dense.samples} images "
                f"(chance {prepared.dense.chance:.1f} %)"
            )
        self.fit.setText("<br>".join(lines))
        self.fit.show()
        self.banner.setText("<br>".join(f"⚠ {w}" for w in prepared.warnings))
        self.banner.setVisible(bool(prepared.warnings))


def show_samples_note(panel: DataPanel, text: str) -> None:
    """Say beside the calibration count how many images are really used; empty hides it."""
    panel.samples_note.setText(f"⚠ {text}" if text else "")
    panel.samples_note.setVisible(bool(text))


def _banner() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setObjectName("dataWarning")
    label.setStyleSheet("QLabel#dataWarning { background: #fff3cd; color: #664d03; padding: 4px; border-radius: 3px; }")
    label.hide()
    return label


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    spin.setGroupSeparatorShown(True)
    spin.setKeyboardTracking(False)
    return spin
