"""The Architecture tab: traced in the background when shown, nodes coloured by kept share, excluded layers grey
with their reason, coupled layers tied, clicking a node selects its layer everywhere."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtWidgets import QGraphicsPathItem

from snp_gui.main_window import MainWindow
from snp_gui.plots.architecture import kept_colour
from snp_gui.settings import Settings
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch) -> MainWindow:
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(path))
    window = MainWindow(settings=Settings(path))
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16)
    window.session.open_demo(model="demo-resnet")
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    assert run(qtbot, window, "analysis", window.session.analyse)[0] == FINISHED
    window.show()
    assert run(qtbot, window, "architecture", lambda: window.tabs.setCurrentWidget(window.architecture_panel))[0] == (
        FINISHED
    )
    yield window
    window.session.shutdown()


def test_showing_the_tab_traces_the_network_once(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    assert s.architecture is not None and view.graph is s.architecture
    assert "conv1" in view.items and "layer1.0.relu#2" in view.items
    started: list[str] = []
    s.runner.started.connect(started.append)
    window.tabs.setCurrentWidget(window.table)
    window.tabs.setCurrentWidget(window.architecture_panel)
    qtbot.wait(50)
    assert "architecture" not in started  # the same analysis: the graph is kept


def test_nodes_are_coloured_by_the_kept_share_and_follow_the_plan(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    stream = next(links for links in s.architecture.groups.values() if len(links.producers) > 1)
    window.curves.keepChangeFinished.emit(stream.name, stream.units // 4)
    expected = kept_colour(s.keep[stream.name] / stream.units).name()
    assert all(view.node_colour(name) == expected for name in (*stream.producers, *stream.channelwise))
    window.curves.keepChangeFinished.emit(stream.name, stream.units)
    assert view.node_colour(stream.producers[0]) == kept_colour(1.0).name()


def test_excluded_layers_are_grey_with_their_reason(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    excluded = s.analysis.excluded[0]
    item = view.items[excluded.name]
    assert f"Not pruned: {excluded.reason}" in item.toolTip()
    assert view.node_colour(excluded.name) not in {kept_colour(f / 10).name() for f in range(11)}


def test_coupled_layers_are_tied_and_outlined_with_their_readers(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    stream = next(links for links in s.architecture.groups.values() if len(links.producers) > 1)
    ties = [
        item
        for item in view.scene().items()
        if isinstance(item, QGraphicsPathItem) and item.toolTip().startswith(f"{stream.name}:")
    ]
    assert len(ties) == len(stream.producers) - 1
    s.select_layer(stream.name)
    outlined = view.outlined()
    assert all(outlined.get(name) == "selected" for name in stream.producers)
    assert all(outlined.get(name) == "reader" for name in stream.readers if s.architecture.node(name).group)
    assert "shared by producers" in view.items[stream.producers[1]].toolTip()


def test_clicking_a_node_selects_its_layer_everywhere(qtbot, window):
    s, view = window.session, window.architecture_panel.view
    name = "layer1.0.bn1"  # a BatchNorm carries the units of the conv before it
    group = s.architecture.node(name).group
    assert group == "layer1.0.conv1" and s.selected != group
    view.click_node(name)
    assert s.selected == group and window.table.selected() == group
    assert window.curves.focus.getPlotItem().titleLabel.text == group
    view.click_node("relu")  # a layer of no group selects nothing
    assert s.selected == group


def test_a_new_analysis_traces_again(qtbot, window):
    s = window.session
    old = s.architecture
    with qtbot.waitSignal(s.architecture_changed, timeout=TIMEOUT, check_params_cb=lambda g: g is not None):
        s.analyse()
    assert s.architecture is not None and s.architecture is not old
