"""Fixtures shared by the app's tests: one torch thread (the demo network is tiny: on a shared
two-core machine extra intra-op threads only contend), a fresh settings file per test, and garbage
collection in the GUI thread.

The cyclic garbage collector runs in the GUI thread only, on a timer, as in the app
(:func:`snp_gui.app.collect_garbage_in_gui_thread`): a collection in a worker thread can destroy
the GUI thread's Qt objects (pytest-qt's event loops and timers among them) and hang the run.
"""

from __future__ import annotations

import gc

import pytest
import torch

from snp_gui.settings import Settings


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """A settings file of the test's own, also named in SNP_GUI_SETTINGS for windows made without one."""
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(path))
    return Settings(path)


@pytest.fixture(autouse=True)
def _garbage_collected_in_the_gui_thread(qapp):
    """Within each test of the app; the tests outside keep automatic collection."""
    from snp_gui.app import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread(qapp)
    gc.disable()  # the collector disables it once, when it is made
    yield
    gc.enable()
