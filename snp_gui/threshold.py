"""Global pruning target: a mode (explained variance, FLOPs or parameter reduction) and a value in percent.

The slider and the spin box mirror each other; each mode remembers its own value.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QSlider, QWidget

__all__ = ["DEFAULTS", "MODES", "ThresholdControl"]

SLIDER_STEPS = 1000  # 0.1 % per step, the spin box's resolution
MODES: dict[str, tuple[str, str]] = {
    "variance": (
        "Explained variance",
        "Every layer keeps the fewest units that still explain at least this share of its activation variance.\n"
        "Higher keeps more units and changes the network less.",
    ),
    "flops": (
        "FLOPs reduction",
        "Remove units until the network needs this much less computation (multiply-accumulates per image).\n"
        "Units are taken where they explain the least variance first.",
    ),
    "params": (
        "Params reduction",
        "Remove units until the network has this much fewer parameters.\n"
        "Units are taken where they explain the least variance first.",
    ),
}
DEFAULTS = {"variance": 0.99, "flops": 0.5, "params": 0.5}


class ThresholdControl(QWidget):
    """Mode combo + slider + percent spin box; values go out as fractions in 0..1."""

    valueChanged = Signal(str, float)
    valueChangeFinished = Signal(str, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._values = dict(DEFAULTS)
        self.mode_combo = QComboBox()
        for index, (key, (label, tip)) in enumerate(MODES.items()):
            self.mode_combo.addItem(label, key)
            self.mode_combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setPageStep(SLIDER_STEPS // 100)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, 100.0)
        self.spin.setDecimals(1)
        self.spin.setSingleStep(0.1)
        self.spin.setSuffix(" %")
        self.spin.setKeyboardTracking(False)  # act on Enter or focus loss, not on every typed digit
        self.spin.setAccelerated(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.mode_combo)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)

        self._show(self.mode(), self._values[self.mode()])
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.slider.valueChanged.connect(self._slider_moved)
        self.slider.sliderReleased.connect(self._finished)
        self.spin.valueChanged.connect(self._spin_changed)

    def mode(self) -> str:
        """Current mode key: "variance", "flops" or "params"."""
        return str(self.mode_combo.currentData())

    def value(self) -> float:
        """Current value as a fraction in 0..1."""
        return self._values[self.mode()]

    def set_value(self, mode: str, value: float) -> None:
        """Switch to ``mode`` and show ``value`` (a fraction) without emitting anything."""
        if mode not in MODES:
            raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(MODES)}")
        self._values[mode] = min(max(float(value), 0.0), 1.0)
        with QSignalBlocker(self.mode_combo):
            self.mode_combo.setCurrentIndex(list(MODES).index(mode))
        self._show(mode, self._values[mode])

    def _show(self, mode: str, value: float) -> None:
        """Put ``value`` into both editors without triggering their handlers."""
        with QSignalBlocker(self.slider), QSignalBlocker(self.spin):
            self.slider.setValue(round(value * SLIDER_STEPS))
            self.spin.setValue(100.0 * value)
        tip = MODES[mode][1]
        for widget in (self.mode_combo, self.slider, self.spin):
            widget.setToolTip(tip)

    def _mode_changed(self, _index: int) -> None:
        mode = self.mode()
        self._show(mode, self._values[mode])
        self.valueChanged.emit(mode, self._values[mode])
        self.valueChangeFinished.emit(mode, self._values[mode])

    def _slider_moved(self, position: int) -> None:
        value = position / SLIDER_STEPS
        self._values[self.mode()] = value
        with QSignalBlocker(self.spin):
            self.spin.setValue(100.0 * value)
        self.valueChanged.emit(self.mode(), value)
        if not self.slider.isSliderDown():  # keyboard, wheel or page steps: each one is a finished change
            self._finished()

    def _spin_changed(self, percent: float) -> None:
        value = percent / 100.0
        self._values[self.mode()] = value
        with QSignalBlocker(self.slider):
            self.slider.setValue(round(value * SLIDER_STEPS))
        # without keyboard tracking this only fires once editing finished (Enter, focus loss or a step)
        self.valueChanged.emit(self.mode(), value)
        self._finished()

    def _finished(self) -> None:
        self.valueChangeFinished.emit(self.mode(), self.value())
