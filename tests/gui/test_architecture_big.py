"""The Architecture tab on big networks: blocks folded into boxes, rows wrapped to the view's width, a folded
block unfolds on a click and folds back, selecting a layer elsewhere unfolds and scrolls it into view, and
the find box finds layers by part of their name."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import torch
import torchvision
from PySide6.QtCore import Qt

from snp_engine.workflows.architecture import architecture
from snp_gui.main_window import MainWindow
from snp_gui.plots.architecture import FOLD_BUDGET, REMOVED_COLOUR, ArchitectureView, _Toggle, kept_colour, wrap
from snp_gui.settings import Settings
from snp_gui.workers import FINISHED
from tests.gui.helpers import run


@pytest.fixture(scope="module")
def resnet50_graph():
    torch.manual_seed(0)
    return architecture(torchvision.models.resnet50().eval(), (3, 64, 64))


@pytest.fixture
def view(qtbot, resnet50_graph) -> ArchitectureView:
    view = ArchitectureView()
    qtbot.addWidget(view)
    view.resize(1000, 420)
    view.show()
    qtbot.waitExposed(view)
    view.set_graph(resnet50_graph)
    return view


def drawn_width(view: ArchitectureView) -> float:
    """The scene's width on screen, at the view's scale."""
    return view.scene().sceneRect().width() * view.transform().m11()


def click(qtbot, view: ArchitectureView, item) -> None:
    point = view.mapFromScene(item.sceneBoundingRect().center())
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_a_resnet50_is_drawn_with_its_bottlenecks_folded_within_the_views_width(qtbot, view, resnet50_graph):
    bottlenecks = {
        f"layer{stage}.{index}"
        for stage, count in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True)
        for index in range(count)
    }
    assert set(view.folds) == bottlenecks and len(view.boxes) <= FOLD_BUDGET
    assert view.folds["layer1.0"].cell.type == "Bottleneck" and len(view.folds["layer1.0"].cell.members) == 11
    assert "conv1" in view.items and "layer1.0.conv1" not in view.items
    assert drawn_width(view) <= view.viewport().width() + 1
    rows = {round(item.rect().top()) for item in view.folds.values()}
    assert len(rows) >= 3  # wrapped: the four stages do not fit one row of a 1000-pixel view
    view.unfold_all()
    assert len(view.items) == len(resnet50_graph.nodes) and not view.folds
    assert drawn_width(view) <= view.viewport().width() + 1
    view.fold_all()
    assert set(view.folds) == {"layer1", "layer2", "layer3", "layer4"}


def test_a_narrower_view_wraps_into_more_rows(qtbot, view):
    rows = len(view._bands)
    view.resize(600, 420)
    qtbot.waitUntil(lambda: len(view._bands) > rows, timeout=5000)
    assert drawn_width(view) <= view.viewport().width() + 1


def test_a_folded_block_unfolds_on_a_click_and_folds_back_with_its_frames_minus(qtbot, view):
    click(qtbot, view, view.folds["layer2.1"])
    qtbot.waitUntil(lambda: "layer2.1" not in view.folds, timeout=5000)
    assert "layer2.1" not in view.folds and "layer2.1.conv2" in view.items
    assert "layer2.1" in view.frames and "layer2.0" in view.folds
    toggle = next(
        item
        for item in view.scene().items()
        if isinstance(item, _Toggle) and item.block == "layer2.1" and not item.unfold
    )
    click(qtbot, view, toggle)
    qtbot.waitUntil(lambda: "layer2.1" in view.folds, timeout=5000)
    assert "layer2.1" in view.folds and "layer2.1.conv2" not in view.items


def test_rows_end_between_blocks_rather_than_inside_one():
    # a chain of ten columns; blocks of columns 0-2, 3-6 and 7-9: a row of at most six ends after column 2
    placed = {f"n{i}": (i, 0) for i in range(10)}
    edges = [(f"n{i}", f"n{i + 1}") for i in range(9)]
    blocks = [["n0", "n1", "n2"], ["n3", "n4", "n5", "n6"], ["n7", "n8", "n9"]]
    rows = wrap(placed, edges, 6, blocks)
    assert [list(r) for r in rows] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    # without blocks the latest column of the second half ends the row
    assert [r.stop for r in wrap(placed, edges, 6)] == [6, 10]
    # a skip edge from column 3 to column 6: the row ends before it, where only one edge crosses
    assert wrap(placed, [*edges, ("n3", "n6")], 6)[0].stop == 3


def test_find_unfolds_scrolls_to_and_cycles_through_matches(qtbot, view):
    assert view.find("layer3.4.conv2") == "layer3.4.conv2"
    assert "layer3.4.conv2" in view.items and view.visible_in_viewport("layer3.4.conv2")
    assert view.outlined().get("layer3.4.conv2") == "found"
    first, second = view.find("downsample.0"), view.find("downsample.0")
    assert first != second and all(name.endswith("downsample.0") for name in (first, second))
    assert view.find("no such layer") == ""


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch) -> MainWindow:
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(path))
    window = MainWindow(settings=Settings(path))
    qtbot.addWidget(window)
    window.resize(1280, 800)
    window.session.update_options(device="cpu", samples=64, batch_size=16)
    window.session.open_demo(model="demo-resnet")
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=60_000)
    assert run(qtbot, window, "analysis", window.session.analyse)[0] == FINISHED
    window.show()
    shown = run(qtbot, window, "architecture", lambda: window.tabs.setCurrentWidget(window.architecture_panel))
    assert shown[0] == FINISHED
    yield window
    window.session.shutdown()


def pick_in_table(window: MainWindow, name: str) -> None:
    """What a click on the table row of ``name`` does."""
    window.table.selectRow(window.table._model.row_of(name))


def test_selecting_a_layer_in_the_table_unfolds_its_block_and_scrolls_it_into_view(qtbot, window):
    s, panel = window.session, window.architecture_panel
    view = panel.view
    view.fold_all()
    assert "layer3.0.conv1" not in view.items and s.selected != "layer3.0.conv1"
    window.tabs.setCurrentWidget(window.table)
    pick_in_table(window, "layer3.0.conv1")
    assert s.selected == "layer3.0.conv1"
    window.tabs.setCurrentWidget(panel)
    qtbot.waitUntil(lambda: view.visible_in_viewport("layer3.0.conv1"), timeout=5000)
    assert view.outlined()["layer3.0.conv1"] == "selected" and "layer3.0" not in view.folds
    # the next selection elsewhere folds back what was unfolded only for this one
    window.tabs.setCurrentWidget(window.table)
    pick_in_table(window, "layer1.0.conv1")
    window.tabs.setCurrentWidget(panel)
    qtbot.waitUntil(lambda: view.visible_in_viewport("layer1.0.conv1"), timeout=5000)
    assert "layer3.0" in view.folds
    # clicking a layer in the view selects it everywhere and keeps its block open
    group = s.architecture.node("layer1.0.conv2").group  # the residual stream the stem's conv1 starts
    view.click_node("layer1.0.conv2")
    assert s.selected == group and window.table.selected() == group
    assert "layer1.0.conv2" in view.items and "layer1.0" not in view.folds


def test_the_find_box_selects_a_found_layer_everywhere_and_says_when_nothing_matches(qtbot, window):
    s, panel = window.session, window.architecture_panel
    panel.view.fold_all()
    window.activateWindow()
    panel.view.setFocus()
    qtbot.keyClick(panel.view, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)  # Ctrl+F: to the find box
    qtbot.waitUntil(panel.find_box.hasFocus, timeout=5000)
    qtbot.keyClicks(panel.find_box, "layer2.0.conv2")
    qtbot.keyClick(panel.find_box, Qt.Key.Key_Return)
    assert s.selected == "layer2.0.conv2" and panel.view.visible_in_viewport("layer2.0.conv2")
    assert "found layer2.0.conv2" in panel.status.text()
    panel.find_box.clear()
    qtbot.keyClicks(panel.find_box, "zzz")
    qtbot.keyClick(panel.find_box, Qt.Key.Key_Return)
    assert "no layer or block matches 'zzz'" in panel.status.text() and s.selected == "layer2.0.conv2"


def test_a_removed_block_stays_marked_when_folded_and_unfolded_again(qtbot, window):
    view = window.architecture_panel.view
    view.set_removed(["layer1.0"])  # what the Blocks tab's Remove tick sends (tests/gui/test_blocks.py)
    view.fold_all()
    box = view.folds["layer1.0"]
    assert box.struck() and view.node_colour("layer1.0") == REMOVED_COLOUR
    assert "Removed by the plan" in box.toolTip() and not view.folds["layer2.0"].struck()
    view.unfold("layer1.0")
    assert view.frames["layer1.0"][1].text() == "layer1.0 · removed" and view.items["layer1.0.conv1"].struck()


def test_a_folded_boxs_plus_is_drawn_in_its_text_colour_on_a_dark_palette(qtbot, window):
    from snp_gui.app import _dark_palette

    view = window.architecture_panel.view
    view.setPalette(_dark_palette())
    view.fold_all()
    box = view.folds["layer2.0"]  # filled with its groups' kept share: a light colour
    assert box.toggle.pen().color() == box.texts[0].brush().color()
    assert box.toggle.pen().color().lightness() < 100 < box.brush().color().lightness()


def test_kept_counts_changed_while_the_tab_is_hidden_are_painted_when_it_is_shown(qtbot, window):
    s, panel = window.session, window.architecture_panel
    view = panel.view
    name = "layer2.0.conv1"
    units = s.architecture.groups[name].units
    window.tabs.setCurrentWidget(window.table)
    window.curves.keepChangeFinished.emit(name, 1)
    window.tabs.setCurrentWidget(panel)
    assert view.node_colour(name) == kept_colour(1 / units).name()
    assert f"keeps 1 of {units}" in view.items[name].toolTip()
    window.curves.keepChangeFinished.emit(name, units)  # while shown: repainted at once
    assert view.node_colour(name) == kept_colour(1.0).name()
