"""The layer table names how the last pruning fitted each layer's consumer (kind and ridge)."""

from __future__ import annotations

import torch

from snp_engine import api
from snp_engine.data import load_data
from snp_engine.models import load_model
from snp_gui.layer_rows import fit_texts, layer_rows
from snp_gui.layer_table import LAYER, LayerTable


def test_fit_texts_name_the_kind_and_ridge_of_each_group():
    fits = {
        "a": {
            "fit": "one-shot",
            "relative_ridge": 0.03,
            "heldout_error": 0.1,
            "heldout_error_sequential": 0.2,
            "heldout_error_one_shot": 0.1,
            "folds": 4,
        },
        "s": {
            "fit": "sequential",
            "relative_ridge": 1e-4,
            "heldout_error_sequential": 0.05,
            "heldout_error_one_shot": 0.5,
        },
        "s:layer2.conv1": {
            "fit": "sequential",
            "relative_ridge": 1e-6,
            "heldout_error_sequential": 0.01,
            "heldout_error_one_shot": 0.02,
        },
        "broken": {"fit": "sequential"},
    }
    texts = fit_texts(fits)
    assert set(texts) == {"a", "s"}  # an entry of another shape shows nothing
    assert texts["a"] == "one-shot, ridge 3e-02 (held-out error: sequential 20.0 %, one-shot 10.0 %)"
    assert (
        texts["s"].startswith("sequential, ridge 1e-04") and "; at layer2.conv1: sequential, ridge 1e-06" in texts["s"]
    )
    assert fit_texts({}) == {}


def test_the_layer_cell_shows_the_fit_of_a_pruned_network(qtbot):
    torch.set_num_threads(1)
    data = load_data("digits")
    loaded = load_model("demo-vgg")
    analysis = api.analyze(loaded.model, data, samples=64)
    plan = analysis.plan(flops_reduction=0.5)
    pruned = api.prune(loaded.model, analysis, plan, data=data, samples=64, physical=False)
    texts = fit_texts(pruned.record.fits)
    assert texts and set(texts) <= set(analysis.names)

    table = LayerTable()
    qtbot.addWidget(table)
    table.set_rows(layer_rows(analysis, loaded.model))
    name = next(iter(texts))
    row = table.layer_model.row_of(name)
    cell = table.layer_model.index(row, LAYER)
    assert table.fit_tip(cell) is None  # nothing pruned yet
    table.set_fits(texts)
    tip = table.fit_tip(cell)
    assert tip is not None and tip.endswith(f"Fit of its consumer: {texts[name]}")
    assert table.fit_tip(table.layer_model.index(row, LAYER + 1)) is None  # only the Layer cell
    table.set_fits({})
    assert table.fit_tip(cell) is None
