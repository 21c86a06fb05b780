"""The app's source and option choosers list what the engine's registries hold, nothing hand-kept."""

from __future__ import annotations

from PySide6.QtCore import Qt

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


def test_a_group_with_too_few_samples_is_flagged_in_the_table(qtbot):
    from snp_engine import api
    from snp_engine.data import load_data
    from snp_engine.models import load_model
    from snp_gui.layer_rows import layer_rows
    from snp_gui.layer_table import LayerTableModel

    model = load_model("demo-vgg").model
    analysis = api.analyze(model, load_data("digits"), samples=40)  # 40 samples for a 128-unit layer
    table = LayerTableModel()
    table.set_rows(layer_rows(analysis, model))
    names = [table.name_at(row) for row in range(table.rowCount())]
    flagged = table.index(names.index("classifier.1"), 0)
    assert flagged.data() == "classifier.1 ⚠"
    assert "40 calibration samples for 128 units" in flagged.data(Qt.ItemDataRole.ToolTipRole)
    assert table.index(names.index("features.0"), 0).data() == "features.0"  # conv maps: plenty of samples
