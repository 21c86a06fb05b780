"""The app's source and option choosers list what the engine's registries hold, nothing hand-kept."""

from __future__ import annotations

from snp_engine.analysis import CURVES
from snp_engine.datasources import DATA_SOURCES
from snp_engine.modelsources import MODEL_SOURCES
from snp_engine.subspace import ORDERINGS
from snp_engine.workflows import Compensation
from snp_gui.panels.analysis_panel import AnalysisPanel
from snp_gui.panels.data_panel import DataPanel
from snp_gui.panels.model_panel import PAGES, ModelPanel


def _items(combo) -> list:
    return [combo.itemData(i) for i in range(combo.count())]


def test_data_kinds_are_the_registered_sources(qtbot, tmp_path):
    panel = DataPanel()
    qtbot.addWidget(panel)
    assert _items(panel.kind) == list(DATA_SOURCES)
    for name, source in DATA_SOURCES.items():  # each kind turns a chosen path into a spec its source accepts
        panel.set_spec(source.spec_for(str(tmp_path / "x.npz")) if name == "npz" else source.spec_for(str(tmp_path)))
        assert panel.kind.currentData() == name
        assert DATA_SOURCES[name].matches(panel.current()) or name == "npz"  # the npz file does not exist
        assert panel.path.isVisibleTo(panel) == (source.path_kind != "none")


def test_every_model_source_has_a_page(qtbot):
    panel = ModelPanel()
    qtbot.addWidget(panel)
    assert set(PAGES.values()) == set(MODEL_SOURCES)
    assert [panel.kind.itemText(i) for i in range(panel.kind.count())] == [
        MODEL_SOURCES[name].label for name in PAGES.values()
    ]


def test_option_choosers_follow_the_engine(qtbot):
    panel = AnalysisPanel([("cpu", "CPU")])
    qtbot.addWidget(panel)
    assert _items(panel.ordering) == list(ORDERINGS)
    assert _items(panel.curve) == list(CURVES)
    assert sorted(_items(panel.compensation)) == sorted(c.value for c in Compensation)
