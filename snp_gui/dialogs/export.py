"""Export dialog: where to write the pruned network, in which formats, and what will be removed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from snp_engine import workflows
from snp_engine.api import Plan
from snp_engine.errors import SnpError
from snp_gui.summary import human_count

if TYPE_CHECKING:
    from snp_gui.settings import Settings
    from snp_gui.state import Session


@dataclass(frozen=True)
class ExportChoice:
    path: str
    torchscript: bool
    onnx: bool


def removal_summary(plan: Plan, units: dict[str, int], metrics: dict, stale: bool) -> str:
    """An HTML overview of what the export removes, layer by layer, and what it costs."""
    rows = "".join(
        f"<tr><td>{name}</td><td align=right>{plan.keep[name]} / {total}</td>"
        f"<td align=right>{total - plan.keep[name]}</td>"
        f"<td align=right>{100 * plan.explained.get(name, 1.0):.1f} %</td></tr>"
        for name, total in units.items()
    )
    removed = sum(units.values()) - sum(plan.keep.values())
    lines = [
        f"<p><b>{removed}</b> of {sum(units.values())} units removed · parameters "
        f"{human_count(plan.params_before)} → {human_count(plan.params_after)} · FLOPs "
        f"{human_count(plan.flops_before)} → {human_count(plan.flops_after)} "
        f"({100 * plan.flops_reduction:.1f} % fewer)</p>",
    ]
    if metrics and not stale:
        lines.append(
            f"<p>Evaluated: top-1 {metrics.get('top1_before', 0):.2f} % → "
            f"{metrics.get('top1_after', 0):.2f} %; these numbers are stored in the file.</p>"
        )
    else:
        lines.append("<p>This plan has not been evaluated; no accuracy is stored in the file.</p>")
    # cellpadding, not cellspacing: Qt's rich text puts no room between header cells otherwise
    lines.append(
        "<table cellspacing=0 cellpadding=5><tr><th align=left>Layer</th><th align=right>Kept</th>"
        f"<th align=right>Removed</th><th align=right>Explained</th></tr>{rows}</table>"
    )
    return "".join(lines)


class ExportDialog(QDialog):
    """Collects an :class:`ExportChoice`; the actual writing and verification run in a worker."""

    def __init__(self, summary_html: str, default_path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export pruned network")
        self.path = QLineEdit(default_path)
        self.path.setToolTip(
            "The snp file (.safetensors): weights plus the architecture description, "
            "reloadable without running any code"
        )
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.torchscript = QCheckBox("Also write TorchScript (.pt)")
        self.torchscript.setToolTip("A traced copy for torch.jit.load, e.g. for C++ deployment")
        self.onnx = QCheckBox("Also write ONNX (.onnx)")
        # the file is checked by running it in onnxruntime, so both packages are needed
        has_onnx = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
        self.onnx.setEnabled(has_onnx)
        self.onnx.setToolTip(
            "A copy for ONNX runtimes, checked against the model in onnxruntime"
            if has_onnx
            else "Needs the onnx and onnxruntime packages: pip install onnx onnxruntime"
        )
        details = QTextBrowser()
        details.setHtml(summary_html)
        details.setMinimumSize(480, 260)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Write the pruned network to:"))
        layout.addLayout(row)
        layout.addWidget(self.torchscript)
        layout.addWidget(self.onnx)
        layout.addWidget(details, 1)
        note = QLabel("Each file is read back and compared with the pruned network before it is kept.")
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def own_class(self) -> None:
        """A network of its own class: no snp file can rebuild it, so the TorchScript copy is the export."""
        self.torchscript.setChecked(True)
        self.path.setToolTip(
            "No snp file can rebuild this network's own class: the TorchScript (.pt) and ONNX (.onnx) "
            "files beside this name are written instead"
        )

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export pruned network", self.path.text(), "snp export (*.safetensors)"
        )
        if path:
            self.path.setText(path)

    def _accept(self) -> None:
        if not self.path.text().strip():
            self.path.setFocus()
            return
        self.accept()

    def choice(self) -> ExportChoice:
        path = self.path.text().strip()
        if Path(path).suffix != ".safetensors":
            path += ".safetensors"
        return ExportChoice(path, self.torchscript.isChecked(), self.onnx.isChecked())


def export_with_dialog(parent: QWidget, session: Session, settings: Settings) -> None:
    """Show what the export removes, let the user choose where and how, then export in the background."""
    try:
        plan = session.plan()
    except SnpError as exc:
        session.error_occurred.emit("export", str(exc))
        return
    name = Path(session.model.spec).stem.replace("torchvision:", "") if session.model else "model"
    default = str(Path(settings.last_dir()) / f"{name}-pruned.safetensors")
    summary = removal_summary(plan, session.analysis.units, session.metrics, session.stale)
    dialog = ExportDialog(summary, default, parent)
    if session.model is not None and not workflows.rebuildable(session.model.arch):
        dialog.own_class()
    if dialog.exec():
        choice = dialog.choice()
        settings.remember_dir(choice.path)
        session.export(choice.path, choice.torchscript, choice.onnx)
