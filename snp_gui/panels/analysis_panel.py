"""Analysis options: device, unit ordering, curve kind, compensation and shared (coupled) channels,
plus the Analyse button."""

from __future__ import annotations

import torch
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QGroupBox, QPushButton, QWidget

from snp_engine.analysis import CURVE_HELP
from snp_engine.subspace import ORDERING_HELP, ORDERINGS
from snp_engine.workflows import COMPENSATION_HELP, COUPLED_HELP
from snp_gui.panels.common import fill_combo, select_data

# generated from the engine's registries, so a new curve kind or compensation shows up by itself
CURVES = tuple((name, label, tip) for name, (label, tip) in CURVE_HELP.items())
COMPENSATION = tuple((kind.value, label, tip) for kind, (label, tip) in COMPENSATION_HELP.items())
COUPLED = tuple((name, label, tip) for name, (label, tip) in COUPLED_HELP.items())


class AnalysisPanel(QGroupBox):
    """Emits ``changed(key, value)`` for each option and ``analyseRequested()``."""

    changed = Signal(str, str)
    analyseRequested = Signal()

    def __init__(self, devices: list[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__("Analysis", parent)
        self.device = QComboBox()
        fill_combo(self.device, ((d, label, f"Run on {label}") for d, label in devices))
        self.device.setToolTip("Where the network runs for analysis, pruning, evaluation and fine-tuning")
        self.ordering = QComboBox()
        fill_combo(self.ordering, ((name, name, ORDERING_HELP.get(name, name)) for name in ORDERINGS))
        self.ordering.setToolTip(
            "How units are ranked: the first ones in the ranking are kept.\n"
            "Changing it re-plots instantly from the stored statistics."
        )
        self.curve = QComboBox()
        fill_combo(self.curve, CURVES)
        self.curve.setToolTip("What the curves measure for each number of kept units (re-plots instantly)")
        self.compensation = QComboBox()
        fill_combo(self.compensation, COMPENSATION)
        self.compensation.setToolTip("How the layers after a pruned one are adjusted to make up for removed units")
        self.coupled = QComboBox()
        fill_combo(self.coupled, COUPLED)
        self.coupled.setToolTip(
            "Channels shared by several layers (residual streams, gates): prune them or not (next analysis)"
        )
        self.combos = {
            "device": self.device,
            "ordering": self.ordering,
            "curve": self.curve,
            "compensation": self.compensation,
            "coupled": self.coupled,
        }
        for key, combo in self.combos.items():
            combo.activated.connect(lambda _index, key=key, combo=combo: self.changed.emit(key, combo.currentData()))
            combo.currentIndexChanged.connect(lambda _index, combo=combo: self._sync_tip(combo))
            self._sync_tip(combo)
        self.analyse_button = QPushButton("Analyse")
        self.analyse_button.setToolTip(
            "Run the calibration images through the network once and measure every layer (Ctrl+R / F5). Esc cancels."
        )
        self.analyse_button.clicked.connect(self.analyseRequested)
        form = QFormLayout(self)
        form.addRow("Device", self.device)
        form.addRow("Ordering", self.ordering)
        form.addRow("Curve", self.curve)
        form.addRow("Compensation", self.compensation)
        form.addRow("Shared channels", self.coupled)
        form.addRow(self.analyse_button)

    def _sync_tip(self, combo: QComboBox) -> None:
        """The closed combo's tooltip explains the current choice, not just the setting."""
        base = combo.property("baseTip") or combo.toolTip()
        combo.setProperty("baseTip", base)
        item = combo.itemData(combo.currentIndex(), Qt.ItemDataRole.ToolTipRole)
        combo.setToolTip(f"{base}\n\nNow: {item}" if item else base)

    def set_value(self, key: str, value: str) -> bool:
        combo = self.combos[key]
        combo.blockSignals(True)
        found = select_data(combo, value)
        combo.blockSignals(False)
        self._sync_tip(combo)
        return found

    def value(self, key: str) -> str:
        return str(self.combos[key].currentData())


def available_devices() -> list[tuple[str, str]]:
    """(device id, label) for the CPU and every CUDA device, GPUs first so they are the default."""
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            devices.append((f"cuda:{index}", f"GPU {index}: {torch.cuda.get_device_name(index)}"))
    return [*devices, ("cpu", "CPU")]
