"""The Blocks tab: residual blocks scored in the background and ticked for removal; the summary, the plan, the
architecture view, undo, session files, evaluation and export follow."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import torch

from snp_engine import io
from snp_gui.main_window import MainWindow
from snp_gui.panels.blocks_panel import NAME, UNEXPLAINED
from snp_gui.plots.architecture import REMOVED_COLOUR
from snp_gui.settings import Settings
from snp_gui.workers import CANCELLED, FINISHED
from tests.gui.helpers import run

BLOCK = "layer1.0"


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch) -> MainWindow:
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(path))
    window = MainWindow(settings=Settings(path))
    qtbot.addWidget(window)
    s = window.session
    s.update_options(device="cpu", samples=64, batch_size=16)
    s.open_demo(model="demo-resnet")
    qtbot.waitUntil(lambda: s.data is not None and not s.busy, timeout=60_000)
    assert run(qtbot, window, "analysis", s.analyse)[0] == FINISHED
    s.set_threshold("flops", 0.5)
    window.tabs.setCurrentWidget(window.blocks_panel)
    assert run(qtbot, window, "blocks", window.blocks_panel.score_button.click)[0] == FINISHED
    yield window
    s.shutdown()


def _flops_cut(session) -> float:
    _pb, _pa, before, after = session.costs()
    return 1 - after / before


def test_scoring_lists_each_block_as_a_row_with_its_score(qtbot, window):
    s, panel = window.session, window.blocks_panel
    assert [row.name for row in s.blocks] == [BLOCK] and s.blocks[0].score is not None
    assert panel.table.rowCount() == 1 and panel.table.item(0, NAME).text() == BLOCK
    assert panel.table.item(0, UNEXPLAINED).text().endswith("%")
    assert "1 removable residual block(s), 0 removed" in panel.status.text()


def test_ticking_a_block_keeps_the_flops_target_and_undo_brings_it_back(qtbot, window):
    s, panel = window.session, window.blocks_panel
    keep_before, cut_before = dict(s.keep), _flops_cut(s)
    assert abs(cut_before - 0.5) < 0.03
    panel.toggle(BLOCK)
    assert s.removed_blocks == (BLOCK,) and panel.removed() == [BLOCK]
    assert abs(_flops_cut(s) - 0.5) < 0.03  # the channels give back what the block saves
    assert s.keep["layer1.0.conv1"] == s.analysis.units["layer1.0.conv1"]  # goes with the block
    assert sum(s.keep.values()) > sum(keep_before.values())  # fewer channels cut elsewhere
    assert "−" in window.summary.text() or "-" in window.summary.text()
    assert panel.table.item(0, NAME).font().strikeOut()
    s.undo()
    assert s.removed_blocks == () and s.keep == keep_before and panel.removed() == []
    s.redo()
    assert s.removed_blocks == (BLOCK,)


def test_a_hand_edited_plan_keeps_its_counts_and_the_summary_drops_the_block(qtbot, window):
    s = window.session
    s.set_layer_keep("conv1", 16)
    keep, (_pb, params_before, _fb, flops_before) = dict(s.keep), s.costs()
    s.set_block_removed(BLOCK, True)
    _pb, params_after, _fb, flops_after = s.costs()
    assert s.keep == keep and flops_after < flops_before and params_after < params_before
    assert s.stale is False or s.metrics == {}


def test_removed_blocks_are_greyed_and_struck_in_the_architecture_view(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    window.show()
    assert run(qtbot, window, "architecture", lambda: window.tabs.setCurrentWidget(window.architecture_panel))[0] == (
        FINISHED
    )
    inside, outside = "layer1.0.conv1", "layer2.0.conv1"
    assert not view.items[inside].struck()
    s.set_block_removed(BLOCK, True)
    assert view.items[inside].struck() and view.node_colour(inside) == REMOVED_COLOUR
    assert not view.items[outside].struck() and view.node_colour(outside) != REMOVED_COLOUR
    assert "Removed with the residual block layer1.0" in view.items[inside].toolTip()
    assert view.frames[BLOCK][1].text() == "layer1.0 · removed"
    s.undo()
    assert not view.items[inside].struck() and view.frames[BLOCK][1].text() == BLOCK


def test_evaluation_and_export_remove_the_block(qtbot, window, tmp_path):
    s = window.session
    s.set_block_removed(BLOCK, True)
    assert run(qtbot, window, "evaluation", s.evaluate, timeout=120_000)[0] == FINISHED
    m = s.metrics
    assert abs(1 - m["flops_after"] / m["flops_before"] - 0.5) < 0.03 and m["top1_after"] > 50
    out = tmp_path / "small.safetensors"
    assert run(qtbot, window, "export", lambda: s.export(str(out)), timeout=120_000)[0] == FINISHED
    loaded = io.load_exported(out)
    assert isinstance(loaded.model.layer1[0], torch.nn.Identity) and loaded.pruning.blocks == (BLOCK,)
    assert io.read_metadata(out)["settings"]["removed_blocks"] == [BLOCK]


def test_session_files_keep_the_removed_blocks_and_leave_out_bad_ones(qtbot, window, tmp_path, settings):
    s = window.session
    s.set_block_removed(BLOCK, True)
    path = tmp_path / "work.snpsession"
    assert run(qtbot, window, "save session", lambda: s.save_session_file(str(path)))[0] == FINISHED
    assert json.loads(path.read_text())["removed_blocks"] == [BLOCK]
    raw = json.loads(path.read_text())
    raw["removed_blocks"] = [BLOCK, "layer9.9", 7]
    damaged = tmp_path / "damaged.snpsession"
    damaged.write_text(json.dumps(raw))
    (tmp_path / "damaged.stats.safetensors").write_bytes((tmp_path / "work.stats.safetensors").read_bytes())
    other = MainWindow(settings=settings)
    qtbot.addWidget(other)
    messages: list[str] = []
    other.session.message.connect(messages.append)
    assert run(qtbot, other, "open session", lambda: other.session.open_session_file(str(damaged)), 120_000)[0] == (
        FINISHED
    )
    o = other.session
    assert o.removed_blocks == (BLOCK,) and [row.name for row in o.blocks] == [BLOCK]
    assert other.blocks_panel.removed() == [BLOCK]
    assert abs(_flops_cut(o) - 0.5) < 0.03
    assert any("'layer9.9' is not a removable block" in m and "7 is not the name" in m for m in messages)
    o.shutdown()


def test_scoring_can_be_cancelled_and_changes_nothing(qtbot, window):
    s = window.session
    s.clear_blocks()
    outcome, _ = run(qtbot, window, "blocks", lambda: (s.score_blocks(), s.cancel()))
    assert outcome == CANCELLED and s.blocks == ()
    assert window.blocks_panel.table.rowCount() == 0


def test_a_tick_without_an_analysis_is_refused_with_a_note(qtbot, window):
    s, panel = window.session, window.blocks_panel
    s._reset_analysis()
    assert not s.set_block_removed(BLOCK, True)
    assert s.removed_blocks == () and "run an analysis first" in panel.note.text()
