"""The summary bar's speed-up: the FLOPs ratio marked as an estimate until an evaluation measured the
latency of the current plan, then the measured ratio, and the estimate again once the plan changes."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from snp_gui.main_window import MainWindow
from snp_gui.summary import DASH, SummaryBar
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


def test_speedup_is_an_estimate_until_measured(qtbot):
    bar = SummaryBar()
    qtbot.addWidget(bar)
    bar.set_costs(11_200_000, 5_600_000, 1.82e9, 0.91e9)
    label = bar.values["speedup"]
    assert label.text() == "2.00× (est.)" and "estimate until Evaluate" in label.toolTip()
    bar.set_metrics({"latency_before_ms": 12.0})  # only one side measured: still the estimate
    assert label.text() == "2.00× (est.)"
    bar.set_metrics({"latency_before_ms": 12.0, "latency_after_ms": 8.0, "latency_batch": 16, "device": "cpu"})
    assert label.text() == "1.50× measured"
    assert "12.0 → 8.0 ms, batch 16, on cpu" in label.toolTip() and "2.00×" in label.toolTip()
    assert "Speed-up: 1.50× measured" in bar.text()
    bar.mark_stale(True)  # the plan changed: the measurement belongs to the old one
    assert label.text() == "2.00× (est.)"
    bar.set_costs(11_200_000, 4_000_000, 1.82e9, 0.455e9)
    assert label.text() == "4.00× (est.)"
    bar.mark_stale(False)
    assert label.text() == "1.50× measured"
    bar.set_metrics({})
    assert label.text() == "4.00× (est.)"
    bar.set_costs(0, 0, 0.0, 0.0)
    assert label.text() == DASH


@pytest.fixture
def window(qtbot, settings) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=3)
    window.session.open_demo()
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    assert run(qtbot, window.session, "analysis", window.session.analyse)[0] == FINISHED
    yield window
    window.session.shutdown()


def test_evaluation_replaces_the_estimate_and_a_plan_change_restores_it(qtbot, window):
    s, label = window.session, window.summary.values["speedup"]
    window.threshold.valueChangeFinished.emit("variance", 0.95)
    assert label.text().endswith("× (est.)")
    outcome, message = run(qtbot, window, "evaluation", s.evaluate)
    assert outcome == FINISHED, message
    measured = s.metrics["latency_before_ms"] / s.metrics["latency_after_ms"]
    assert label.text() == f"{measured:.2f}× measured"
    window.curves.keepChangeFinished.emit(s.analysis.names[0], 2)
    assert window.summary.is_stale() and label.text().endswith("× (est.)")
