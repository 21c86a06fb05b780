"""Global pruning target: a mode (explained variance, FLOPs or parameter reduction) and a value in percent.

The slider and the spin box mirror each other; each mode remembers its own value. A value the mode
does not accept (0 % explained variance, a 100 % reduction) is refused at the control, with the
reason beside it; the session only ever receives valid values.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from snp_gui.settings import THRESHOLD_DEFAULTS, THRESHOLD_LABELS, THRESHOLD_LIMITS, clamp_threshold, threshold_problem

__all__ = ["DEFAULTS", "MODES", "ThresholdControl"]

WARNING_COLOUR = "#d9534f"  # a red that reads on light and dark backgrounds
SLIDER_STEPS = 1000  # 0.1 % per step, the spin box's resolution
CUSTOM_TIP = (
    "The keep counts were edited by hand (marker, table or undo) and differ from what this threshold gives.\n"
    "Move the threshold to plan every layer from it again."
)
MODES: dict[str, tuple[str, str]] = {
    "variance": (
        THRESHOLD_LABELS["variance"],
        "Every layer keeps the fewest units that still explain at least this share of its activation variance.\n"
        "Higher keeps more units and changes the network less.",
    ),
    "flops": (
        THRESHOLD_LABELS["flops"],
        "Remove units until the network needs this much less computation (multiply-accumulates per image).\n"
        "Units are taken where they explain the least variance first.",
    ),
    "params": (
        THRESHOLD_LABELS["params"],
        "Remove units until the network has this much fewer parameters.\n"
        "Units are taken where they explain the least variance first.",
    ),
}
DEFAULTS = THRESHOLD_DEFAULTS


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
        self.custom = QLabel("<i>custom</i>")
        self.custom.setToolTip(CUSTOM_TIP)
        self.custom.setVisible(False)
        self.note = QLabel()  # why a value was refused, or a warning about the plan it gives
        self.note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.note.setWordWrap(True)
        self.note.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.mode_combo)
        row.addWidget(self.slider, 1)
        row.addWidget(self.spin)
        row.addWidget(self.custom)
        layout = QVBoxLayout(self)  # the note goes under the controls, whole, only while there is one
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(row)
        layout.addWidget(self.note)

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
        """Switch to ``mode`` and show ``value`` (a fraction) without emitting anything.

        A value the mode does not accept is shown as the nearest valid one, with the reason beside it.
        """
        if mode not in MODES:
            raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(MODES)}")
        problem = threshold_problem(mode, value)
        self._values[mode] = clamp_threshold(mode, value)
        self.show_note(f"{problem}; showing {100 * self._values[mode]:.1f} %" if problem else "")
        with QSignalBlocker(self.mode_combo):
            self.mode_combo.setCurrentIndex(list(MODES).index(mode))
        self._show(mode, self._values[mode])

    def show_note(self, text: str) -> None:
        """Show ``text`` beside the control (why a value was refused, a warning); empty hides it."""
        self.note.setText(f"⚠ {text}" if text else "")
        self.note.setToolTip(text)
        self.note.setVisible(bool(text))

    def set_custom(self, custom: bool) -> None:
        """Say whether the plan was edited by hand away from what the threshold gives."""
        self.custom.setVisible(custom)

    def is_custom(self) -> bool:
        return not self.custom.isHidden()

    def _show(self, mode: str, value: float) -> None:
        """Put ``value`` into both editors without triggering their handlers."""
        low, high = THRESHOLD_LIMITS[mode]
        with QSignalBlocker(self.slider), QSignalBlocker(self.spin):
            self.slider.setRange(round(low * SLIDER_STEPS), round(high * SLIDER_STEPS))
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
        value = position / SLIDER_STEPS  # the slider's range only holds valid values
        self.show_note("")
        self._values[self.mode()] = value
        with QSignalBlocker(self.spin):
            self.spin.setValue(100.0 * value)
        self.valueChanged.emit(self.mode(), value)
        if not self.slider.isSliderDown():  # keyboard, wheel or page steps: each one is a finished change
            self._finished()

    def _spin_changed(self, percent: float) -> None:
        value, mode = percent / 100.0, self.mode()
        problem = threshold_problem(mode, value)
        if problem:  # refused: the previous value stays, and the reason is shown beside the control
            self.show_note(f"{problem}; kept {100 * self._values[mode]:.1f} %")
            self._show(mode, self._values[mode])
            return
        self.show_note("")
        self._values[mode] = value
        with QSignalBlocker(self.slider):
            self.slider.setValue(round(value * SLIDER_STEPS))
        # without keyboard tracking this only fires once editing finished (Enter, focus loss or a step)
        self.valueChanged.emit(self.mode(), value)
        self._finished()

    def _finished(self) -> None:
        self.valueChangeFinished.emit(self.mode(), self.value())
