"""Named plans: keep the current plan under a name, list plans side by side, switch between them (an undoable
plan load), measure them in the background (progress, cancel), show them on the sweep plot, save them with
the session."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from snp_gui.main_window import MainWindow
from snp_gui.panels.plans_panel import ERROR, FLOPS, LATENCY, NAME, TARGET, TOP1
from snp_gui.plans import NamedPlan
from snp_gui.settings import Settings
from snp_gui.workers import CANCELLED, FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


def make_window(qtbot, settings: Settings, demo: bool = True) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=2)
    if demo:
        window.session.open_demo()
        qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
        assert run(qtbot, window, "analysis", window.session.analyse)[0] == FINISHED
    return window


@pytest.fixture
def window(qtbot, settings) -> MainWindow:
    window = make_window(qtbot, settings)
    yield window
    window.session.shutdown()


def keep_two_plans(window: MainWindow) -> tuple[dict, dict]:
    """A threshold plan "half" and a hand-edited plan "edited", kept through the panel."""
    s, panel = window.session, window.plans_panel
    window.threshold.valueChangeFinished.emit("flops", 0.5)
    half = dict(s.keep)
    panel.name.setText("half")
    panel.keep_button.click()
    window.curves.keepChangeFinished.emit(s.analysis.names[0], 2)
    edited = dict(s.keep)
    panel.name.setText("edited")
    panel.keep_button.click()
    return half, edited


def test_plans_are_kept_under_a_name_and_listed_side_by_side(qtbot, window):
    panel = window.plans_panel
    assert not panel.empty.isHidden() and panel.table.isHidden()
    half, _edited = keep_two_plans(window)
    assert panel.names() == ["half", "edited"] and panel.empty.isHidden()
    assert panel.cell("half", TARGET) == "FLOPs reduction 50.0 %" and panel.cell("edited", TARGET) == "custom"
    reduction = 100 * (1 - window.session.plan_named("half").flops[1] / window.session.plan_named("half").flops[0])
    assert f"-{reduction:.1f} %" in panel.cell("half", FLOPS)
    assert panel.cell("half", TOP1) == "—" and panel.cell("half", LATENCY) == "—"
    assert panel.table.item(1, 0).text() == "●", "the plan in use is marked"
    # a second plan under a used name replaces it
    window.threshold.valueChangeFinished.emit("flops", 0.3)
    panel.name.setText("half")
    panel.keep_button.click()
    assert panel.names() == ["half", "edited"] and window.session.plan_named("half").keep != half


def test_a_plan_without_a_name_is_refused_beside_the_field(qtbot, window):
    panel = window.plans_panel
    panel.name.setText("   ")
    panel.keep_button.click()
    assert not panel.note.isHidden() and "give the plan a name" in panel.note.text()
    assert panel.names() == []
    panel.name.setText("x" * 61)
    panel.keep_button.click()
    assert "at most 60 characters" in panel.note.text() and panel.names() == []
    panel.name.textEdited.emit("ok")
    assert panel.note.isHidden()


def test_switching_plans_is_an_undoable_plan_load(qtbot, window):
    s, panel = window.session, window.plans_panel
    half, edited = keep_two_plans(window)
    assert s.keep == edited
    panel.table.selectRow(0)
    panel.switch_button.click()
    assert s.keep == half and s.options.threshold_mode == "flops" and not window.threshold.is_custom()
    assert window.curves.keep() == half and panel.table.item(0, 0).text() == "●"
    s.undo()
    assert s.keep == edited and window.threshold.is_custom()
    panel.table.cellDoubleClicked.emit(0, NAME)  # a double-click switches too
    assert s.keep == half


def test_switching_restores_the_plans_constraints(qtbot, window):
    s, panel = window.session, window.plans_panel
    name = s.analysis.names[0]
    s.lock_layer(name, True)
    panel.name.setText("locked")
    panel.keep_button.click()
    s.lock_layer(name, False)
    assert not s.constraints
    s.load_plan("locked")
    assert name in s.constraints.locked


def test_measuring_fills_in_each_plan_and_shows_it_on_the_sweep_plot(qtbot, window):
    s, panel = window.session, window.plans_panel
    keep_two_plans(window)
    progress = []
    s.runner.progress.connect(lambda _task, _fraction, text, _left: progress.append(text))
    outcome, message = run(qtbot, window, "plan measuring", panel.measure_button.click)
    assert outcome == FINISHED, message
    for name in ("half", "edited"):
        plan = s.plan_named(name)
        assert plan.metrics["top1_after"] is not None and plan.metrics["latency_after_ms"] > 0
        assert panel.cell(name, TOP1).endswith("%") and panel.cell(name, LATENCY).endswith("ms")
        assert panel.cell(name, ERROR).endswith("%")
    assert any("plan 'half' (1 of 2)" in text for text in progress), "progress names the plan being measured"
    assert sorted(window.evaluate_panel.sweep_plot.plan_labels()) == ["edited", "half"]
    window.evaluate_panel.sweep_plot.clear()  # a new sweep keeps the plan points
    assert sorted(window.evaluate_panel.sweep_plot.plan_labels()) == ["edited", "half"]
    s.remove_plan("edited")
    assert window.evaluate_panel.sweep_plot.plan_labels() == ["half"] and panel.names() == ["half"]


def test_measuring_can_be_cancelled_and_keeps_the_event_loop_going(qtbot, window):
    from PySide6.QtCore import QTimer

    s = window.session
    for index, reduction in enumerate((0.2, 0.3, 0.4, 0.5, 0.6, 0.7)):
        window.threshold.valueChangeFinished.emit("flops", reduction)
        s.keep_plan(f"plan {index}")
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    with qtbot.waitSignal(s.runner.ended, timeout=TIMEOUT) as blocker:
        s.measure_plans()
        qtbot.waitUntil(lambda: any(plan.metrics for plan in s.plans), timeout=TIMEOUT)  # one is measured
        s.cancel()
    timer.stop()
    assert blocker.args[1] == CANCELLED
    measured = [plan.name for plan in s.plans if plan.metrics]
    assert 1 <= len(measured) < len(s.plans), "the plans measured before the cancel keep their numbers"
    assert len(ticks) > 3, "the event loop kept running while plans were measured"
    assert not s.busy


def test_a_current_evaluation_goes_with_a_kept_plan(qtbot, window):
    s = window.session
    assert run(qtbot, window, "evaluation", s.evaluate)[0] == FINISHED
    window.plans_panel.name.setText("evaluated")
    window.plans_panel.keep_button.click()
    assert s.plan_named("evaluated").metrics["top1_after"] == s.metrics["top1_after"]
    window.curves.keepChangeFinished.emit(s.analysis.names[0], 3)  # stale numbers do not
    window.plans_panel.name.setText("later")
    window.plans_panel.keep_button.click()
    assert s.plan_named("later").metrics == {}


def test_plans_are_saved_with_the_session(qtbot, window, settings, tmp_path):
    s = window.session
    half, _edited = keep_two_plans(window)
    s.plan_named("half").metrics = {"top1_after": 91.5, "latency_after_ms": 1.25, "fidelity": 0.1}
    path = tmp_path / "plans.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    raw = json.loads(path.read_text())
    assert [plan["name"] for plan in raw["plans"]] == ["half", "edited"]

    other = make_window(qtbot, settings, demo=False)
    outcome, message = run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)))
    assert outcome == FINISHED, message
    assert [p.name for p in other.session.plans] == ["half", "edited"]
    assert other.session.plan_named("half").keep == half and other.session.plan_named("edited").overridden
    assert other.plans_panel.cell("half", TOP1) == "91.50 %"
    assert other.evaluate_panel.sweep_plot.plan_labels() == ["half"]
    other.session.load_plan("half")
    assert other.session.keep == half
    other.session.shutdown()


def test_a_damaged_plan_in_a_session_file_is_left_out_with_a_note(qtbot, window, settings, tmp_path):
    s = window.session
    keep_two_plans(window)
    path = tmp_path / "edited.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    raw = json.loads(path.read_text())
    first = next(iter(raw["plans"][0]["keep"]))
    raw["plans"][0]["keep"][first] = 10_000
    raw["plans"].append("not a plan")
    path.write_text(json.dumps(raw))

    other = make_window(qtbot, settings, demo=False)
    messages = []
    other.session.message.connect(messages.append)
    assert run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)))[0] == FINISHED
    assert [p.name for p in other.session.plans] == ["edited"]
    assert any("plan left out" in m and "10000" in m for m in messages)
    other.session.shutdown()


def test_plan_records_check_what_they_read():
    units = {"a": 4, "b": 8}
    good = {"name": "p", "keep": {"a": 2, "b": 8}, "mode": "variance", "value": 0.9, "threshold": 0.9}
    assert NamedPlan.from_dict(good, units).keep == {"a": 2, "b": 8}
    for bad, reason in (
        ({**good, "name": ""}, "not a name"),
        ({**good, "keep": {"a": 2}}, "does not name the analysed layers"),
        ({**good, "keep": {"a": 0, "b": 8}}, "not a count"),
        ({**good, "mode": "speed"}, "not valid"),
        ({**good, "constraints": {"a": {"locked": 9}}}, "cannot be locked"),
    ):
        with pytest.raises(ValueError, match=reason):
            NamedPlan.from_dict(bad, units)
