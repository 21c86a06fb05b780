"""Per-layer constraints in the app: lock, minimum and round-to in the layer table, respected by threshold
and budget plans and by hand edits (fitted, with the reason beside the control), undoable, and saved with
the session (a bad value is left out with a note)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import Qt

from snp_engine.ratios import Constraints, GroupConstraint
from snp_gui.layer_table import KEPT, LOCK, MIN, ROUND
from snp_gui.main_window import MainWindow
from snp_gui.settings import Settings
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


def make_window(qtbot, settings: Settings, demo: bool = True) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=3)
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


def cell(window: MainWindow, name: str, column: int):
    model = window.table.layer_model
    return model.index(model.row_of(name), column)


def widest(window: MainWindow) -> str:
    units = window.session.analysis.units
    return max(units, key=units.get)


def test_a_locked_layer_stays_when_the_threshold_moves(qtbot, window):
    s, model = window.session, window.table.layer_model
    name = widest(window)
    window.threshold.valueChangeFinished.emit("variance", 0.95)
    held = s.keep[name]
    assert model.setData(cell(window, name, LOCK), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    assert s.constraints.locked == {name: held}
    assert cell(window, name, LOCK).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    window.threshold.valueChangeFinished.emit("variance", 0.5)
    assert s.keep[name] == held, "the threshold moved a locked layer"
    others = [n for n in s.keep if n != name]
    assert any(s.keep[n] != s._planned.get(n, -1) or s.keep[n] < s.analysis.units[n] for n in others)
    window.threshold.valueChangeFinished.emit("flops", 0.4)  # a budget, too
    assert s.keep[name] == held and s.costs()[3] <= 0.6 * s.costs()[2] + 1e-6
    model.setData(cell(window, name, LOCK), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert s.constraints.locked == {} and not window.threshold.is_custom()
    assert s.keep == s._plan_from("flops", 0.4, s.constraints).keep, "unlocked, the layer follows the threshold"


def test_minimum_and_round_to_from_the_table_shape_threshold_plans(qtbot, window):
    s, model = window.session, window.table.layer_model
    name = widest(window)
    window.threshold.valueChangeFinished.emit("variance", 0.05)
    assert s.keep[name] < 6
    assert model.setData(cell(window, name, MIN), 6)
    assert s.constraints.of(name).min_units == 6 and s.keep[name] >= 6
    assert cell(window, name, MIN).data() == "6"
    other = next(n for n in s.keep if n != name)
    assert model.setData(cell(window, other, ROUND), 4)
    assert s.keep[other] % 4 == 0 or s.keep[other] == s.analysis.units[other]
    assert "multiple of 4" in cell(window, other, KEPT).data(Qt.ItemDataRole.ToolTipRole)
    assert model.setData(cell(window, name, MIN), 1)  # 1 is no rule: the layer follows the global settings
    assert s.constraints.of(name).min_units is None


def test_a_minimum_or_round_to_the_layer_cannot_have_is_refused_at_the_cell(qtbot, window):
    s, table = window.session, window.table
    name = widest(window)
    units = s.analysis.units[name]
    assert not table.layer_model.setData(cell(window, name, MIN), units + 1)
    assert f"has {units} units" in table.last_notice and "refused" in table.last_notice
    assert not table.layer_model.setData(cell(window, name, ROUND), 0)
    assert "round-to is 1" in table.last_notice
    assert not table.layer_model.setData(cell(window, name, MIN), "many")
    assert "no whole number" in table.last_notice
    assert not s.constraints
    # the session refuses what slips past the table too, with the reason at the cell
    assert not s.set_constraint(name, min_units=units + 5)
    assert "more than it has" in table.last_notice and not s.constraints


def test_a_kept_edit_is_fitted_to_the_minimum_and_rounding_and_says_why(qtbot, window):
    s, table = window.session, window.table
    name = widest(window)
    s.set_constraint(name, round_to=4, min_units=3)
    assert table.layer_model.setData(cell(window, name, KEPT), 5)
    qtbot.waitUntil(lambda: s.keep[name] == 8, timeout=2000)
    assert "5 became 8" in table.last_notice and "multiple of 4" in table.last_notice
    table.layer_model.setData(cell(window, name, KEPT), 1)
    assert s.keep[name] == 4 and "1 became 4" in table.last_notice


def test_a_marker_drag_is_fitted_visibly_with_the_reason_beside_the_plot(qtbot, window):
    s, curves = window.session, window.curves
    name = widest(window)
    s.set_constraint(name, round_to=4)
    curves.keepChangeFinished.emit(name, 4)
    curves.keepChanged.emit(name, 5)  # dragged up from 4: rounds up
    curves.keepChangeFinished.emit(name, 5)
    assert s.keep[name] == 8 and curves.keep()[name] == 8, "the marker is put where the plan is"
    assert not curves.note.isHidden() and "5 became 8" in curves.note.text() and "multiple of 4" in curves.note.text()
    curves.keepChangeFinished.emit(name, 12)
    assert s.keep[name] == 12 and curves.note.isHidden()
    curves.set_selected(name)
    curves.nudge(-1)  # the arrow key down goes to the multiple below, not back up to 12
    assert s.keep[name] == 8 and curves.keep()[name] == 8
    curves.nudge(+1)
    assert s.keep[name] == 12


def test_editing_a_locked_layer_moves_its_lock(qtbot, window):
    s = window.session
    name = widest(window)
    s.lock_layer(name, True)
    window.curves.keepChangeFinished.emit(name, 3)
    assert s.keep[name] == 3 and s.constraints.locked == {name: 3}
    window.threshold.valueChangeFinished.emit("variance", 0.999)
    assert s.keep[name] == 3


def test_locks_that_make_the_budget_unreachable_are_refused_in_one_line(qtbot, window):
    s = window.session
    window.threshold.valueChangeFinished.emit("flops", 0.3)
    before = dict(s.keep)
    names = sorted(s.analysis.units, key=s.analysis.units.get, reverse=True)
    # locking every layer at full width makes a 30 % cut impossible: the last lock is refused
    refused = None
    for name in names:
        if not s.set_constraint(name, locked=s.analysis.units[name]):
            refused = name
            break
        assert s.costs()[3] <= 0.7 * s.costs()[2] + 1e-6, "each accepted lock still meets the budget"
    assert refused is not None and refused not in s.constraints.locked
    assert "not reachable with these constraints" in window.table.last_notice
    assert "locked layer(s)" in window.table.last_notice and "\n" not in window.table.last_notice
    # with every layer locked, a new budget is refused beside the threshold and the plan stays
    s._set_constraints(Constraints({n: GroupConstraint(locked=u) for n, u in s.analysis.units.items()}))
    kept = dict(s.keep)
    window.threshold.valueChangeFinished.emit("flops", 0.6)
    assert s.keep == kept and "not reachable" in window.threshold.note.text()
    assert before != kept


def test_constraint_changes_are_undone_and_redone(qtbot, window):
    s = window.session
    name = widest(window)
    window.threshold.valueChangeFinished.emit("variance", 0.2)
    before = dict(s.keep)
    s.set_constraint(name, min_units=s.analysis.units[name])
    assert s.keep[name] == s.analysis.units[name] and s.can_undo()
    s.undo()
    assert s.keep == before and not s.constraints
    assert window.table.layer_model.index(window.table.layer_model.row_of(name), MIN).data() == "1"
    s.redo()
    assert s.constraints.of(name).min_units == s.analysis.units[name] and s.keep[name] == s.analysis.units[name]


def test_constraints_are_saved_with_the_session(qtbot, window, settings, tmp_path):
    s = window.session
    first, second = s.analysis.names[:2]
    s.lock_layer(first, True)
    s.set_constraint(second, min_units=2, round_to=2)
    rules = s.constraints
    path = tmp_path / "work.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    saved = json.loads(path.read_text())
    assert saved["constraints"][second] == {"min_units": 2, "round_to": 2}

    other = make_window(qtbot, settings, demo=False)
    outcome, message = run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)))
    assert outcome == FINISHED, message
    assert other.session.constraints == rules
    model = other.table.layer_model
    assert model.index(model.row_of(first), LOCK).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    other.session.shutdown()


def test_a_bad_constraint_in_a_session_file_is_left_out_with_a_note(qtbot, window, settings, tmp_path):
    s = window.session
    first, second = s.analysis.names[:2]
    path = tmp_path / "edited.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    raw = json.loads(path.read_text())
    raw["constraints"] = {first: {"round_to": 0}, second: {"min_units": 2}, "nowhere": {"locked": 1}}
    path.write_text(json.dumps(raw))

    other = make_window(qtbot, settings, demo=False)
    messages = []
    other.session.message.connect(messages.append)
    outcome, message = run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)))
    assert outcome == FINISHED, message
    assert list(other.session.constraints) == [second]
    assert any("round-to must be at least 1" in m for m in messages)
    assert any("nowhere" in m and "not a prunable layer" in m for m in messages)
    other.session.shutdown()
