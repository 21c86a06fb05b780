"""The engine never imports Qt (it must run headless, in the CLI and on servers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import snp_engine

QT_PREFIXES = ("PySide6", "PyQt", "pyqtgraph", "superqt", "shiboken6", "snp_gui")

CHECK = f"""
import importlib, pkgutil, sys
import snp_engine
names = sorted(m.name for m in pkgutil.iter_modules(snp_engine.__path__) if not m.name.startswith("_"))
for name in names:
    importlib.import_module("snp_engine." + name)
assert "api" in names, names
loaded = sorted(m for m in sys.modules if m.startswith({QT_PREFIXES!r}))
assert not loaded, loaded
print(",".join(names))
"""


def test_engine_imports_no_qt():
    root = Path(snp_engine.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = done.stdout.strip().split(",")
    assert {"api", "statistics", "subspace", "compensation", "groups", "surgery"} <= set(imported)
