"""The GUI session driven on its own, without the main window: demo-vgg on the digits data end to end.

Views that are bound here are bound one at a time to the session (snp_gui.panels.binding), never
to each other, so these tests also show that a selection or a keep count reaches every view
through the session alone.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import torch

from snp_engine.models import load_model
from snp_gui.layer_table import LayerTable
from snp_gui.panels import binding
from snp_gui.panels.data_panel import DataPanel
from snp_gui.plots.curves import CurvesWidget
from snp_gui.state import Session
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


def record(signal) -> list[tuple]:
    seen: list[tuple] = []
    signal.connect(lambda *args: seen.append(args))
    return seen


@pytest.fixture
def session(qtbot) -> Session:
    session = Session()
    session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=3)
    yield session
    session.shutdown()


@pytest.fixture
def loaded(qtbot, session) -> Session:
    """demo-vgg and digits loaded through the task runner, and the data check done."""
    assert run(qtbot, session, "load model", lambda: session.open_model("demo-vgg"))[0] == FINISHED
    with qtbot.waitSignal(session.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None):
        assert run(qtbot, session, "load data", lambda: session.open_data("digits"))[0] == FINISHED
    return session


@pytest.fixture
def analysed(qtbot, loaded) -> Session:
    outcome, message = run(qtbot, loaded, "analysis", loaded.analyse)
    assert outcome == FINISHED, message
    return loaded


def test_loading_fits_and_checks_the_data(qtbot, session):
    models, data, prepared = record(session.model_changed), record(session.data_changed), []
    panel = DataPanel()  # one view, bound to the session only
    qtbot.addWidget(panel)
    binding.bind_data_panel(panel, session)
    session.prepared_changed.connect(prepared.append)
    assert run(qtbot, session, "load model", lambda: session.open_model("demo-vgg"))[0] == FINISHED
    with qtbot.waitSignal(session.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None):
        assert run(qtbot, session, "load data", lambda: session.open_data("digits"))[0] == FINISHED
    assert models[0][0].arch == "demo-vgg" and data[0][0].name == "digits"
    checked = prepared[-1]
    assert session.checked is checked and checked.input_shape == (1, 8, 8)
    assert checked.dense is not None and checked.dense.top1 > 90 and not checked.warnings
    assert "fed to the model as 1×8×8" in panel.fit.text() and "unpruned top-1" in panel.fit.text()
    assert panel.banner.isHidden()
    assert session.model_data().calibration[0][0].shape == (1, 8, 8)


def test_threshold_sets_keep_counts_and_costs(qtbot, analysed):
    s = analysed
    assert s.analysis.info["samples"] == 64 and set(s.keep) == set(s.analysis.names)
    keeps = record(s.keep_changed)
    s.set_threshold("flops", 0.5)
    assert keeps[-1] == (s.keep, True)
    params_before, params_after, flops_before, flops_after = s.costs()
    assert 1 - flops_after / flops_before == pytest.approx(0.5, abs=0.05)
    assert params_after < params_before
    assert s.plan().keep == s.keep and (s.options.threshold_mode, s.options.threshold_value) == ("flops", 0.5)
    assert sum(s.layer_costs()[0].values()) <= params_after  # the table's per-layer share of the total

    name = s.analysis.names[1]
    s.set_layer_keep(name, 3)
    assert s.keep[name] == 3 and s.overridden and keeps[-1] == (s.keep, True)
    assert s.costs()[3] < flops_after
    s.set_layer_keep(name, 10_000)  # clamped to the layer's units
    assert s.keep[name] == s.analysis.units[name]


def test_selection_goes_through_the_session_to_every_view(qtbot, analysed):
    s = analysed
    curves, table = CurvesWidget(), LayerTable()
    for view in (curves, table):
        qtbot.addWidget(view)
    binding.bind_curves(curves, s)
    binding.bind_table(table, s)
    s.set_analysis(s.analysis)  # rebuild the freshly bound views
    names = s.analysis.names
    assert s.selected == names[0] and curves.selected() == names[0] == table.selected()

    with qtbot.waitSignal(s.selection_changed, timeout=1000) as blocker:
        table.selectRow(table.layer_model.row_of(names[2]))  # a click in the table…
    assert blocker.args == [names[2]] and s.selected == names[2]
    assert curves.selected() == names[2]  # …and the curves follow
    with qtbot.waitSignal(s.selection_changed, timeout=1000):
        curves.curve(names[3]).sigClicked.emit(curves.curve(names[3]), None)  # a click on a curve
    assert table.selected() == names[3] == s.selected
    with qtbot.assertNotEmitted(s.selection_changed):
        s.select_layer(names[3])  # already selected
        s.select_layer("no such layer")
    s.set_layer_keep(names[3], 2)  # a hand-set count reaches both views as well
    assert curves.keep()[names[3]] == 2


def test_evaluate_marks_stale_and_export_reloads(qtbot, analysed, tmp_path):
    s = analysed
    s.set_threshold("flops", 0.5)
    metrics = []
    s.metrics_changed.connect(metrics.append)
    outcome, message = run(qtbot, s, "evaluation", s.evaluate)
    assert outcome == FINISHED, message
    m = metrics[-1]
    assert 90 < m["top1_before"] <= 100 and 0 <= m["top1_after"] <= 100 and m["latency_after_ms"] > 0
    assert s.metrics == m and not s.stale

    path = tmp_path / "small.safetensors"
    outcome, message = run(qtbot, s, "export", lambda: s.export(str(path)))
    assert outcome == FINISHED, message
    reloaded = load_model(str(path))
    assert sum(p.numel() for p in reloaded.model.parameters()) == s.costs()[1]
    assert reloaded.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)

    with qtbot.waitSignal(s.stale_changed, timeout=1000) as blocker:
        s.set_layer_keep(s.analysis.names[0], 2)
    assert blocker.args == [True] and s.stale


def test_options_refit_the_data_and_mark_results_stale(qtbot, loaded):
    s = loaded
    seen, errors = record(s.options_changed), record(s.error_occurred)
    outcome, message = run(qtbot, s, "check data", lambda: s.set_option("input_size", 16))
    assert outcome == "failed" and "8x8" in message and errors[-1] == ("check data", message)
    assert s.checked is None and seen[-1][0].input_size == 16
    with qtbot.waitSignal(s.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None) as blocker:
        s.set_option("input_size", 0)  # auto: the model's own 8x8 again
    assert blocker.args[0].input_shape == (1, 8, 8)
    s.set_metrics({"top1_before": 99.0, "top1_after": 98.0})
    with qtbot.waitSignal(s.stale_changed, timeout=1000):
        s.set_option("compensation", "none")
    with qtbot.assertNotEmitted(s.options_changed):
        s.set_option("compensation", "none")  # unchanged: nothing to tell


def test_new_model_resets_results_and_pickles_need_trust(qtbot, analysed, tmp_path):
    from snp_engine.models import DemoVGG

    s = analysed
    path = tmp_path / "whole.pt"
    torch.save(DemoVGG().eval(), path)
    s.open_model(str(path), "pickle")  # the default answer to "trust this pickle?" is no
    assert not s.busy and s.model.arch == "demo-vgg" and s.analysis is not None
    s.confirm_trust = lambda _path: True
    resets = record(s.reset)
    with qtbot.waitSignal(s.analysis_changed, timeout=TIMEOUT, check_params_cb=lambda a: a is None):
        assert run(qtbot, s, "load model", lambda: s.open_model(str(path), "pickle"))[0] == FINISHED
    assert s.model.arch == "pickle:DemoVGG" and s.model_trusted
    assert resets == [("all",)] and s.keep == {} and s.selected is None and s.metrics == {}


def test_a_model_that_does_not_fit_the_data_gets_a_warning_banner(qtbot, session):
    panel = DataPanel()
    qtbot.addWidget(panel)
    binding.bind_data_panel(panel, session)
    panel.resize(280, 600)
    panel.show()
    messages = record(session.message)
    assert run(qtbot, session, "load model", lambda: session.open_model("torchvision:resnet18"))[0] == FINISHED
    with qtbot.waitSignal(session.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None):
        assert run(qtbot, session, "load data", lambda: session.open_data("digits"))[0] == FINISHED
    checked = session.checked
    assert len(checked.warnings) == 2 and "1000 classes" in checked.warnings[0]
    assert checked.dense.top1 < 2 * checked.dense.chance  # random weights: near chance
    assert panel.banner.isVisible() and "1000 classes" in panel.banner.text()
    assert panel.banner.width() <= panel.width()  # wrapped inside the panel, not overflowing it
    assert "fed to the model as 3×8×8" in panel.fit.text()
    assert "2 warning(s)" in messages[-1][0]


def test_shared_channels_option_reaches_the_analysis(qtbot, session):
    """The analysis panel's 'Shared channels' choice decides whether residual streams are groups."""
    from snp_gui.panels.analysis_panel import AnalysisPanel

    panel = AnalysisPanel([("cpu", "CPU")])
    qtbot.addWidget(panel)
    binding.bind_analysis_panel(panel, session)
    assert run(qtbot, session, "load model", lambda: session.open_model("demo-resnet"))[0] == FINISHED
    with qtbot.waitSignal(session.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None):
        assert run(qtbot, session, "load data", lambda: session.open_data("digits"))[0] == FINISHED
    assert panel.value("coupled") == "prune"
    assert run(qtbot, session, "analysis", session.analyse)[0] == FINISHED
    assert "conv1" in session.analysis.names and len(session.analysis.names) == 6
    panel.coupled.setCurrentIndex(panel.coupled.findData("keep"))
    panel.coupled.activated.emit(panel.coupled.currentIndex())
    assert session.options.coupled == "keep"
    assert run(qtbot, session, "analysis", session.analyse)[0] == FINISHED
    assert "conv1" not in session.analysis.names and len(session.analysis.names) == 3


def test_a_network_of_its_own_class_exports_as_torchscript(qtbot, session, tmp_path):
    """A trusted pickle of one's own nn.Sequential: the snp file alone is refused in one line (no
    file could rebuild the class); with the TorchScript copy chosen, that file is the export."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 12, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 10),
    ).eval()
    torch.save(net, tmp_path / "own.pt")
    assert run(qtbot, session, "load model", lambda: session.load_model(str(tmp_path / "own.pt"), trust=True))[0] == (
        FINISHED
    )
    with qtbot.waitSignal(session.prepared_changed, timeout=TIMEOUT, check_params_cb=lambda p: p is not None):
        assert run(qtbot, session, "load data", lambda: session.open_data("digits"))[0] == FINISHED
    outcome, message = run(qtbot, session, "analysis", session.analyse)
    assert outcome == FINISHED, message
    session.set_threshold("flops", 0.5)
    target = tmp_path / "own-pruned.safetensors"
    outcome, message = run(qtbot, session, "export", lambda: session.export(str(target)))
    assert outcome == "failed" and "TorchScript" in message and "\n" not in message
    outcome, message = run(qtbot, session, "export", lambda: session.export(str(target), torchscript=True))
    assert outcome == FINISHED, message
    assert not target.exists()
    scripted = torch.jit.load(str(target.with_suffix(".pt")))
    assert scripted(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert next(p for n, p in scripted.named_parameters() if n.endswith("weight")).shape[0] < 12  # pruned
