"""Residual blocks ticked for removal in named plans, plan measuring, the sweep and the sensitivity: each
goes through the same removal as Evaluate (snp_engine.workflows.prune_with_blocks)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from snp_gui.main_window import MainWindow
from snp_gui.panels.plans_panel import BLOCKS, FLOPS
from snp_gui.plots import muted
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

BLOCK, INSIDE = "layer1.0", "layer1.0.conv1"
TIMEOUT = 120_000


def make_window(qtbot, settings, demo: bool = True) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    s = window.session
    s.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=2)
    if demo:
        s.open_demo(model="demo-resnet")
        qtbot.waitUntil(lambda: s.data is not None and not s.busy, timeout=60_000)
        assert run(qtbot, window, "analysis", s.analyse)[0] == FINISHED
        s.set_threshold("flops", 0.7)
        assert run(qtbot, window, "blocks", s.score_blocks)[0] == FINISHED
    return window


@pytest.fixture
def window(qtbot, settings) -> MainWindow:
    window = make_window(qtbot, settings)
    yield window
    window.session.shutdown()


def _keep(window: MainWindow, name: str, removed: bool) -> None:
    window.session.set_block_removed(BLOCK, removed)
    window.plans_panel.name.setText(name)
    window.plans_panel.keep_button.click()


def test_a_plan_keeps_its_blocks_shows_them_and_switching_ticks_them_again(qtbot, window):
    s, panel = window.session, window.plans_panel
    _keep(window, "with block", True)
    with_block = dict(s.keep)
    _keep(window, "plain", False)
    assert s.plan_named("with block").blocks == (BLOCK,) and s.plan_named("plain").blocks == ()
    assert panel.cell("with block", BLOCKS) == BLOCK and panel.cell("plain", BLOCKS) == "—"
    for name in ("with block", "plain"):  # both meet the target: the block's FLOPs count as removed
        assert s.plan_named(name).flops_reduction() == pytest.approx(0.7, abs=0.03)
        assert f"-{100 * s.plan_named(name).flops_reduction():.1f} %" in panel.cell(name, FLOPS)
    assert panel.table.item(1, 0).text() == "●"
    s.load_plan("with block")
    assert s.removed_blocks == (BLOCK,) and window.blocks_panel.removed() == [BLOCK] and s.keep == with_block
    assert panel.table.item(0, 0).text() == "●" and panel.table.item(1, 0).text() == ""
    s.undo()
    assert s.removed_blocks == () and window.blocks_panel.removed() == []


def test_measuring_a_plan_measures_the_network_without_its_blocks(qtbot, window):
    s = window.session
    _keep(window, "with block", True)
    assert run(qtbot, window, "evaluation", s.evaluate, timeout=TIMEOUT)[0] == FINISHED
    evaluated = dict(s.metrics)
    s.set_block_removed(BLOCK, False)  # the plan, not the current state, says which blocks go
    assert run(qtbot, window, "plan measuring", lambda: s.measure_plans(["with block"]), TIMEOUT)[0] == FINISHED
    measured = s.plan_named("with block").metrics
    assert measured["top1_after"] == pytest.approx(evaluated["top1_after"])
    assert measured["fidelity"] == pytest.approx(evaluated["fidelity"])


def test_a_sweep_is_of_the_network_without_the_ticked_blocks(qtbot, window):
    s, plot = window.session, window.evaluate_panel.sweep_plot
    s.set_block_removed(BLOCK, True)
    assert run(qtbot, window, "evaluation", s.evaluate, timeout=TIMEOUT)[0] == FINISHED
    outcome, message = run(qtbot, window, "sweep", lambda: s.sweep([0.7], s.analysis.ordering), TIMEOUT)
    assert outcome == FINISHED, message
    label = f"SNP ({s.analysis.ordering}) without {BLOCK}"
    assert list(s.sweep_results) == [label] and plot.names() == [label]
    assert label in plot.legend.text()  # the legend says the blocks are removed
    assert s.sweep_results[label][0.7] == pytest.approx(s.metrics["top1_after"])  # as Evaluate prunes it


def test_sensitivity_is_measured_on_the_network_without_the_ticked_blocks(qtbot, window):
    s = window.session
    s.set_block_removed(BLOCK, True)
    messages: list[str] = []
    s.message.connect(messages.append)
    assert run(qtbot, window, "sensitivity", s.measure_sensitivity, timeout=TIMEOUT)[0] == FINISHED
    assert s.sensitivity_blocks == (BLOCK,) and INSIDE not in s.sensitivity and s.sensitivity
    assert s.stale_layers() == set()
    assert any(f"on the network without {BLOCK} (1 layer(s) inside not measured)" in m for m in messages)
    plot = window.sensitivity_panel.plot
    assert plot.values(INSIDE) is None and plot.values("layer2.0.conv1") is not None
    assert plot.describe(INSIDE) == f"{INSIDE}: removed with the residual block {BLOCK}, not measured"
    assert f"measured without {BLOCK} (1 layer(s) inside, no bar)" in plot.readout.text()
    s.set_block_removed(BLOCK, False)  # measured without the block: no longer the plan's numbers
    assert s.stale_layers() == set(s.sensitivity) and s.fresh_sensitivity() is None
    assert plot.colour_of("layer2.0.conv1") == muted(plot.palette()).name()  # greyed
    assert "greyed" in plot.readout.text() and plot.describe(INSIDE) == f"{INSIDE}: not measured yet"


def test_session_files_keep_each_plans_blocks_and_leave_out_unknown_ones(qtbot, window, settings, tmp_path):
    s = window.session
    _keep(window, "with block", True)
    _keep(window, "plain", False)
    path = tmp_path / "plans.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    raw = json.loads(path.read_text())
    assert raw["removed_blocks"] == [] and [p["blocks"] for p in raw["plans"]] == [[BLOCK], []]
    raw["plans"].append({**raw["plans"][0], "name": "elsewhere", "blocks": ["layer9.9"]})
    path.write_text(json.dumps(raw))
    other = make_window(qtbot, settings, demo=False)
    messages: list[str] = []
    other.session.message.connect(messages.append)
    outcome, message = run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)), TIMEOUT)
    assert outcome == FINISHED, message
    o = other.session
    assert [p.name for p in o.plans] == ["with block", "plain"] and o.plan_named("with block").blocks == (BLOCK,)
    assert [row.name for row in o.blocks] == [BLOCK] and o.removed_blocks == ()
    assert other.plans_panel.cell("with block", BLOCKS) == BLOCK
    assert any("plan 'elsewhere': 'layer9.9' is not a removable block" in m for m in messages)
    o.load_plan("with block")
    assert o.removed_blocks == (BLOCK,) and o.keep == s.plan_named("with block").keep
    o.shutdown()


def test_the_blocks_tab_shows_each_blocks_next_reader_energy_share(qtbot, window):
    from snp_gui.panels.blocks_panel import READERS

    (row,) = window.session.blocks
    assert row.score.reader_energy is not None
    shown = window.blocks_panel.table.item(0, READERS).text()
    assert shown == f"{100 * row.score.reader_energy:.1f} %"


def test_plans_that_remove_the_same_blocks_share_one_removal_when_measured(qtbot, window, monkeypatch):
    from snp_gui import tasks

    s = window.session
    made: list[tuple[str, ...]] = []
    real = tasks.without_blocks
    monkeypatch.setattr(tasks, "without_blocks", lambda *a, **k: made.append(tuple(a[1])) or real(*a, **k))
    _keep(window, "with block", True)
    s.set_threshold("flops", 0.8)
    _keep(window, "more, with block", True)
    _keep(window, "plain", False)
    assert run(qtbot, window, "plan measuring", s.measure_plans, TIMEOUT)[0] == FINISHED
    assert made == [(BLOCK,)]  # once for both plans that remove it, never for the plain one
    assert all(isinstance(plan.metrics.get("top1_after"), float) for plan in s.plans)
    first, second = (s.plan_named(name).metrics["fidelity"] for name in ("with block", "more, with block"))
    assert first < second  # each plan pruned to its own counts
