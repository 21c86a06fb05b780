"""Tabs below the plots: evaluating the plan, an accuracy-vs-FLOPs sweep and a short fine-tune."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from snp_engine.subspace import ORDERING_HELP, ORDERINGS
from snp_gui.panels.common import fill_combo, select_data
from snp_gui.plots.history import HistoryPlot, SweepPlot
from snp_gui.settings import parse_reductions

DASH = "—"
REDUCTIONS_HELP = "write FLOPs reductions between 0 and 1 (or in %), separated by commas, e.g. 0.3, 0.5, 0.7"
WARNING_COLOUR = "#d9534f"


class EvaluatePanel(QWidget):
    """Evaluate button, the detailed numbers, and the sweep with its plot."""

    evaluateRequested = Signal()
    sweepRequested = Signal(list, str)
    latencyBatchChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.evaluate_button = QPushButton("Evaluate plan")
        self.evaluate_button.setToolTip(
            "Prune with the current keep counts and measure top-1, output error and "
            "latency of the original and pruned network (Ctrl+E)"
        )
        self.evaluate_button.clicked.connect(self.evaluateRequested)
        self.latency_batch = QSpinBox()
        self.latency_batch.setRange(1, 1024)
        self.latency_batch.setValue(16)
        self.latency_batch.setPrefix("latency batch ")
        self.latency_batch.setToolTip("Images per forward pass when timing the networks")
        self.latency_batch.valueChanged.connect(self.latencyBatchChanged)
        self.results = QLabel("Not evaluated yet.")
        self.results.setWordWrap(True)
        self.results.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reductions = QLineEdit("0.3, 0.5, 0.7")
        self.reductions.setToolTip("FLOPs reductions to try, as fractions separated by commas")
        self.reductions_note = QLabel()  # why the sweep cannot run with what was typed, beside the field
        self.reductions_note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.reductions_note.setWordWrap(True)
        self.reductions_note.hide()
        self.reductions.textEdited.connect(lambda _text: self.reductions_note.hide())
        self.baseline = QComboBox()
        fill_combo(self.baseline, ((n, n, ORDERING_HELP.get(n, n)) for n in ORDERINGS))
        select_data(self.baseline, "l1")
        self.baseline.setToolTip(
            "The ordering to compare against (same compensation); l1 is the classic filter-magnitude baseline"
        )
        self.sweep_button = QPushButton("Run sweep")
        self.sweep_button.setToolTip(
            "Prune to each FLOPs reduction with the current ordering and with the "
            "baseline, and plot test top-1 against the reduction"
        )
        self.sweep_button.clicked.connect(self._request_sweep)
        self.sweep_plot = SweepPlot()
        controls = QHBoxLayout()
        controls.addWidget(self.evaluate_button)
        controls.addWidget(self.latency_batch)
        controls.addSpacing(24)
        controls.addWidget(QLabel("Sweep FLOPs reductions"))
        controls.addWidget(self.reductions, 1)
        controls.addWidget(QLabel("vs"))
        controls.addWidget(self.baseline)
        controls.addWidget(self.sweep_button)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.reductions_note)
        body = QHBoxLayout()
        scroll = QScrollArea()  # the numbers stay reachable when the tab is short
        scroll.setWidget(self.results)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        body.addWidget(scroll, 1)
        body.addWidget(self.sweep_plot, 2)
        layout.addLayout(body, 1)

    def check_reductions(self) -> list[float] | None:
        """The typed reductions, or None with the reason shown beside the field."""
        values = parse_reductions(self.reductions.text())
        self.reductions_note.setText(
            "" if values is not None else f"⚠ Sweep: “{self.reductions.text().strip()}” — {REDUCTIONS_HELP}"
        )
        self.reductions_note.setVisible(values is None)
        return values

    def _request_sweep(self) -> None:
        values = self.check_reductions()
        if values is None:
            self.reductions.selectAll()
            self.reductions.setFocus()
            return
        self.sweepRequested.emit(values, str(self.baseline.currentData()))

    def show_metrics(self, metrics: dict) -> None:
        if not metrics:
            self.results.setText("Not evaluated yet.")
            return

        def pct(key: str) -> str:
            return DASH if metrics.get(key) is None else f"{metrics[key]:.2f} %"

        def ms(key: str) -> str:
            return DASH if metrics.get(key) is None else f"{metrics[key]:.2f} ms"

        fid = metrics.get("fidelity")
        tuned = f" after {metrics['finetuned_epochs']} fine-tuning epoch(s)" if metrics.get("finetuned_epochs") else ""
        rows = [
            ("Top-1", pct("top1_before"), pct("top1_after")),
            ("Top-5", pct("top5_before"), pct("top5_after")),
            (
                f"Latency (batch {metrics.get('latency_batch', '?')}, {metrics.get('device', '?')})",
                ms("latency_before_ms"),
                ms("latency_after_ms"),
            ),
        ]
        table = "".join(
            f"<tr><td>{name}</td><td align=right>{a}</td><td align=right>{b}</td></tr>" for name, a, b in rows
        )
        where = metrics.get("eval_data")
        self.results.setText(
            (f"Accuracies on {where} ({metrics.get('eval_samples', '?')} images)<br>" if where else "")
            + f"<table cellspacing=6><tr><th></th><th>original</th><th>pruned{tuned}</th></tr>{table}</table>"
            + (
                f"Output error: {100 * fid:.2f} % (relative logit difference)"
                if fid is not None
                else "Output error: — (not comparable after fine-tuning)"
                if tuned
                else ""
            )
        )


class FinetunePanel(QWidget):
    """Epochs and learning rate for a short fine-tune of the pruned network, with live history."""

    finetuneRequested = Signal(int, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(3)
        self.epochs.setToolTip("Passes over the training images")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(0.001)
        self.lr.setValue(0.01)
        self.lr.setToolTip("Starting learning rate (SGD with momentum, decayed to zero on a cosine)")
        self.start_button = QPushButton("Fine-tune pruned network")
        self.start_button.setToolTip(
            "Train a copy of the pruned network for a few epochs; Evaluate and Export "
            "then use the fine-tuned weights until the plan changes"
        )
        self.start_button.clicked.connect(lambda: self.finetuneRequested.emit(self.epochs.value(), self.lr.value()))
        self.history = HistoryPlot()
        form = QFormLayout()
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        form.addRow(self.start_button)
        layout = QHBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.history, 1)
