"""Fixtures shared by the app's tests.

The cyclic garbage collector runs in the GUI thread only, on a timer, as in the app
(:func:`snp_gui.app.collect_garbage_in_gui_thread`): a collection in a worker thread can destroy
the GUI thread's Qt objects (pytest-qt's event loops and timers among them) and hang the run.
"""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True)
def _garbage_collected_in_the_gui_thread(qapp):
    """Within each test of the app; the tests outside keep automatic collection."""
    from snp_gui.app import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread(qapp)
    gc.disable()  # the collector disables it once, when it is made
    yield
    gc.enable()
