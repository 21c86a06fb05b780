"""The Sensitivity tab: measure each layer pruned alone, see it as bars, relax the most sensitive layers.

Measure runs in the background (progress and Cancel in the status bar). "Relax N most sensitive" gives
the N most sensitive pruned layers back half of the units they lose and locks them there; a plan from the
threshold is made again for the same target around them (Ctrl+Z undoes it). Why it was refused is shown
beside the button.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from snp_engine.workflows.sensitivity import LayerSensitivity
from snp_gui.plots.sensitivity import WARNING_COLOUR, SensitivityPlot

__all__ = ["SensitivityPanel"]


class SensitivityPanel(QWidget):
    """Measure and Relax buttons, the layer count to relax, a note, and the bar charts."""

    measureRequested = Signal()
    relaxRequested = Signal(int)
    countChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.measure_button = QPushButton("Measure sensitivity")
        self.measure_button.setToolTip(
            "Prune each layer alone to its kept units (one-shot compensation) and measure top-1 and output "
            "error on the evaluation data, in the background; with residual blocks ticked for removal, on the "
            "network without them"
        )
        self.measure_button.clicked.connect(self.measureRequested)
        self.count = QSpinBox()
        self.count.setRange(1, 999)
        self.count.setValue(3)
        self.count.setSuffix(" layer(s)")
        self.count.setToolTip("How many of the most sensitive layers to relax")
        self.count.valueChanged.connect(self.countChanged)
        self.relax_button = QPushButton("Relax most sensitive")
        self.relax_button.setToolTip(
            "Give the most sensitive pruned layers back half of the units they lose and lock them there; a "
            "threshold or budget plan is made again for the same target with the other layers (Ctrl+Z undoes it)"
        )
        self.relax_button.clicked.connect(lambda: self.relaxRequested.emit(self.count.value()))
        self.note = QLabel()
        self.note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.note.setVisible(False)
        self.plot = SensitivityPlot()
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure_button)
        buttons.addSpacing(12)
        buttons.addWidget(self.relax_button)
        buttons.addWidget(self.count)
        buttons.addWidget(self.note, 1)
        buttons.addStretch(0)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.plot, 1)
        self._ready = False
        self._measured = False
        self._enable()

    def show_note(self, text: str) -> None:
        self.note.setText(f"⚠ {text}" if text else "")
        self.note.setVisible(bool(text))

    def set_ready(self, ready: bool) -> None:
        """Whether measuring can start (an analysis is there and nothing runs)."""
        self._ready = ready
        self._enable()

    def set_layers(self, names: Sequence[str]) -> None:
        self.plot.set_layers(names)
        self.count.setMaximum(max(len(names), 1))
        self._measured = False
        self._enable()

    def set_values(
        self, layers: Mapping[str, LayerSensitivity], stale: Collection[str], removed: Mapping[str, str] | None = None
    ) -> None:
        """Show the measured layers; ``removed``: the layers inside removed residual blocks, and their block."""
        self.plot.set_values(layers, stale, removed)
        self._measured = len(set(layers) - set(stale)) > 0
        self._enable()

    def _enable(self) -> None:
        self.measure_button.setEnabled(self._ready)
        self.relax_button.setEnabled(self._ready and self._measured)
        self.count.setEnabled(self._ready and self._measured)
