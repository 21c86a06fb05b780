"""The summary bar counts attention heads for networks that have them (and shows no heads field for
those without): kept heads over all attention layers follow every keep edit."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from snp_gui.panels.binding import bind_summary
from snp_gui.state import Session
from snp_gui.summary import SummaryBar
from tests.gui.helpers import small_vit_analysis


def test_the_heads_field_shows_only_for_networks_with_attention(qtbot):
    bar = SummaryBar()
    qtbot.addWidget(bar)
    assert bar.values["heads"].isHidden() and "Heads" not in bar.text()
    bar.set_heads(72, 48)
    assert not bar.values["heads"].isHidden()
    assert bar.values["heads"].text() == "72 → 48 (−33.3 %)" and "Heads: 72 → 48" in bar.text()
    bar.set_heads(0, 0)
    assert bar.values["heads"].isHidden()


def test_the_summary_counts_the_heads_a_plan_keeps(qtbot):
    _model, analysis = small_vit_analysis()
    session, bar = Session(), SummaryBar()
    qtbot.addWidget(bar)
    bind_summary(bar, session)
    session.set_analysis(analysis, keep=dict(analysis.units))
    assert bar.values["heads"].text().startswith("8 → 8")
    session.set_layer_keep("encoder.layers.encoder_layer_1.self_attention", 1)
    assert bar.values["heads"].text() == "8 → 5 (−37.5 %)"
