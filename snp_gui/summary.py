"""Summary bar: what the current plan costs and, once evaluated, what it does to accuracy and latency."""

from __future__ import annotations

import math

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QGridLayout, QLabel, QWidget

__all__ = ["SummaryBar", "human_count"]

DASH = "—"
STALE_TIP = "plan changed since the last evaluation"
_PREFIXES = ("", " k", " M", " G", " T", " P")


def human_count(x: float) -> str:
    """Three significant digits with a metric prefix: ``11.2 M``, ``37.0 k``, ``1.82 G``; small integers stay whole."""
    if x is None or not math.isfinite(x):
        return DASH
    sign, x = ("-" if x < 0 else ""), abs(float(x))
    if x < 1000:
        return f"{sign}{x:.0f}" if x == int(x) else f"{sign}{x:.3g}"
    exponent = min(int(math.log10(x) // 3), len(_PREFIXES) - 1)
    scaled = float(f"{x / 1000**exponent:.3g}")  # round first, so that 999.96 k becomes 1.00 M, not 1000 k
    if scaled >= 1000 and exponent + 1 < len(_PREFIXES):
        exponent, scaled = exponent + 1, scaled / 1000
    decimals = 2 if scaled < 10 else 1 if scaled < 100 else 0
    return f"{sign}{scaled:.{decimals}f}{_PREFIXES[exponent]}"


def _change(before: float, after: float) -> str:
    """``before → after (−12.3 %)``; the sign shows whether the plan shrinks or grows the number."""
    if not before:  # nothing analysed yet, or a cost the model cannot count
        return DASH if not after else f"{DASH} → {human_count(after)}"
    delta = 100.0 * (after - before) / before
    sign = "−" if delta < 0 else "+"
    return f"{human_count(before)} → {human_count(after)} ({sign}{abs(delta):.1f} %)"


FIELDS: dict[str, tuple[str, str]] = {
    "params": ("Parameters", "Parameters before → after pruning (change in %)"),
    "flops": ("FLOPs", "Multiply-accumulates per image before → after pruning (change in %)"),
    "heads": ("Heads", "Attention heads before → after pruning, over all attention layers (shown for transformers)"),
    "speedup": (
        "Speed-up",
        "FLOPs before ÷ FLOPs after: an estimate until Evaluate measures the latency, "
        "real speed depends on the hardware",
    ),
    "top1": ("Top-1", "Top-1 accuracy, original → pruned"),
    "fidelity": (
        "Output error",
        "Relative difference of the pruned network's logits from the original's "
        "(‖pruned − original‖ / ‖original‖; 0 % = identical outputs)",
    ),
    "latency": ("Latency", "Measured inference time, original → pruned"),
}


class SummaryBar(QWidget):
    """A row of captioned numbers: parameters, FLOPs, speed-up, top-1, output error, latency.

    The speed-up is the FLOPs ratio, marked "(est.)", until an evaluation measured both latencies of
    the current plan; then it is the measured ratio, until the plan changes again."""

    MEASURED = ("top1", "fidelity", "latency")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._stale = False
        self._where: str | None = None  # what the accuracies were measured on
        self._estimate = float("nan")  # FLOPs before ÷ after of the current plan
        self._timing: dict = {}  # the measured latencies (and where) behind a measured speed-up
        self.values: dict[str, QLabel] = {}
        self._titles: dict[str, QLabel] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 2, 6, 2)
        grid.setHorizontalSpacing(24)
        grid.setVerticalSpacing(0)
        for column, (key, (caption, tip)) in enumerate(FIELDS.items()):
            title = QLabel(caption)
            title.setForegroundRole(QPalette.ColorRole.PlaceholderText)  # captions recede behind the numbers
            font = title.font()
            font.setPointSizeF(font.pointSizeF() * 0.85)
            title.setFont(font)
            value = QLabel(DASH)
            bold = value.font()
            bold.setBold(True)
            value.setFont(bold)
            for label in (title, value):
                label.setToolTip(tip)
            grid.addWidget(title, 0, column)
            grid.addWidget(value, 1, column)
            self.values[key] = value
            self._titles[key] = title
        grid.setColumnStretch(len(FIELDS), 1)
        self.set_heads(0, 0)

    def set_costs(self, params_before: int, params_after: int, flops_before: float, flops_after: float) -> None:
        """Parameters and FLOPs of the original and the planned network."""
        self.values["params"].setText(_change(params_before, params_after))
        self.values["flops"].setText(_change(flops_before, flops_after))
        self._estimate = flops_before / flops_after if flops_after else float("nan")
        self._show_speedup()

    def set_heads(self, before: int, after: int) -> None:
        """Attention heads of the original and the planned network; the field is shown only for networks
        with attention layers."""
        shown = before > 0
        for label in (self.values["heads"], self._titles["heads"]):
            label.setVisible(shown)
        self.values["heads"].setText(_change(before, after) if shown else DASH)

    def set_metrics(self, metrics: dict) -> None:
        """Measured numbers, replacing the previous ones; missing keys read "—".

        Keys: ``top1_before``/``top1_after`` (percent), ``fidelity`` (relative output error, a fraction),
        ``latency_before_ms``/``latency_after_ms``.
        """

        def fmt(key: str, pattern: str, scale: float = 1.0) -> str:
            value = metrics.get(key)
            return DASH if value is None else pattern.format(scale * value)

        self.values["top1"].setText(f"{fmt('top1_before', '{:.2f} %')} → {fmt('top1_after', '{:.2f} %')}")
        self._where = metrics.get("eval_data")
        self.values["top1"].setToolTip(self._tip("top1"))
        self.values["fidelity"].setText(fmt("fidelity", "{:.2f} %", 100.0))
        self.values["latency"].setText(
            f"{fmt('latency_before_ms', '{:.1f} ms')} → {fmt('latency_after_ms', '{:.1f} ms')}"
        )
        if not any(key in metrics for key in ("top1_before", "top1_after")):
            self.values["top1"].setText(DASH)
        if not any(key in metrics for key in ("latency_before_ms", "latency_after_ms")):
            self.values["latency"].setText(DASH)
        keys = ("latency_before_ms", "latency_after_ms", "latency_batch", "device")
        self._timing = {key: metrics.get(key) for key in keys}
        self._show_speedup()

    def _measured_speedup(self) -> float | None:
        """Original ÷ pruned latency of the current plan's evaluation; None when not measured or stale."""
        before, after = self._timing.get("latency_before_ms"), self._timing.get("latency_after_ms")
        if self._stale or not before or not after or not math.isfinite(before / after):
            return None
        return before / after

    def _show_speedup(self) -> None:
        """The measured speed-up where the current plan was evaluated, else the FLOPs estimate."""
        label, measured = self.values["speedup"], self._measured_speedup()
        if measured is not None:
            timing = self._timing
            details = [f"{timing['latency_before_ms']:.1f} → {timing['latency_after_ms']:.1f} ms"]
            details += [f"batch {timing['latency_batch']}"] if timing.get("latency_batch") else []
            details += [f"on {timing['device']}"] if timing.get("device") else []
            estimate = f"{self._estimate:.2f}×" if math.isfinite(self._estimate) else DASH
            label.setText(f"{measured:.2f}× measured")
            label.setToolTip(
                f"Measured: latency original ÷ pruned ({', '.join(details)}); FLOPs before ÷ after: {estimate}"
            )
            return
        label.setText(f"{self._estimate:.2f}× (est.)" if math.isfinite(self._estimate) else DASH)
        label.setToolTip(FIELDS["speedup"][1])

    def mark_stale(self, stale: bool) -> None:
        """Grey the measured numbers when the plan changed after they were measured."""
        self._stale = bool(stale)
        for key in self.MEASURED:
            label = self.values[key]
            label.setForegroundRole(QPalette.ColorRole.PlaceholderText if stale else QPalette.ColorRole.WindowText)
            tip = self._tip(key)
            label.setToolTip(f"{tip}\n\n⚠ {STALE_TIP}" if stale else tip)
        self._show_speedup()  # a measured speed-up belongs to the evaluated plan only

    def _tip(self, key: str) -> str:
        """The field's explanation, for top-1 with the data it was measured on."""
        tip = FIELDS[key][1]
        return tip + f", measured on {self._where}" if key == "top1" and self._where else tip

    def is_stale(self) -> bool:
        return self._stale

    def text(self) -> str:
        """Everything the bar shows, as one line (for tests, the status bar and copying)."""
        return "  ".join(
            f"{FIELDS[key][0]}: {label.text()}" for key, label in self.values.items() if not label.isHidden()
        )
