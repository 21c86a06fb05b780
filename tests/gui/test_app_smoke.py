"""The installed ``snp-gui`` command starts, shows the demo and quits cleanly in a separate process."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import subprocess
import sys
from pathlib import Path


def gui_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen", "SNP_GUI_SETTINGS": str(tmp_path / "settings.ini")}


def gui_command() -> list[str]:
    """The console script when installed (``pip install -e .``), else the module."""
    script = Path(sys.executable).with_name("snp-gui")
    if script.is_file():
        return [str(script)]
    found = shutil.which("snp-gui")
    return [found] if found else [sys.executable, "-m", "snp_gui.app"]


def test_snp_gui_starts_and_quits(tmp_path):
    result = subprocess.run(
        [*gui_command(), "--quit-after", "1500"], env=gui_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "settings.ini").is_file()  # window layout saved on quit


def test_help_works():
    result = subprocess.run([sys.executable, "-m", "snp_gui.app", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--demo", "--model", "--data", "--analyse"):
        assert option in result.stdout
    assert "--quit-after" not in result.stdout  # test-only options stay out of the help


def test_a_failure_while_quitting_does_not_keep_the_app_alive(tmp_path):
    # the model fails to load around the time the window closes; no error dialog may outlive the window
    result = subprocess.run(
        [sys.executable, "-m", "snp_gui.app", "--model", "no-such-model", "--quit-after", "0"],
        env=gui_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
