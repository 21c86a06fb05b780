"""Guards for the PySide6 pin: 6.12 crashed ("deallocating None") after many Qt calls returning None."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess
import sys
import textwrap

import PySide6

CALLS = 20_000

SCRIPT = textwrap.dedent(f"""
    from PySide6.QtWidgets import QApplication, QTableWidget

    app = QApplication([])
    table = QTableWidget(50, 8)
    empty = 0
    for index in range({CALLS}):
        # every cell is empty, so each call returns None: the pattern that exhausted None's refcount
        if table.item(index % 50, index % 8) is None:
            empty += 1
    assert empty == {CALLS}, empty
    print("ok")
""")


def test_many_none_returning_calls_do_not_crash():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip() == "ok"


def test_pyside6_is_the_pinned_6_11_series():
    assert PySide6.__version__.startswith("6.11."), (
        f"PySide6 {PySide6.__version__} is installed; snp pins 6.11.x (6.12 crashes after many calls returning None)"
    )
