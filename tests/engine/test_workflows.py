"""The workflow layer: the one input-size rule, the checks before long work, plan targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from snp_engine import workflows
from snp_engine.errors import SnpError
from snp_engine.inputs import ANY, FIXED, RECORDED, resolve_input_shape
from snp_engine.models import LoadedModel
from snp_engine.workflows import AnalysisOptions, Compensation, PlanTarget


def _pooling_net(pools: int, classes: int = 3) -> nn.Module:
    """Conv + ``pools`` max-pools + linear on a 1x1 map: runs only on inputs of at least 2**pools."""
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()]
    layers += [nn.MaxPool2d(2) for _ in range(pools)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)).eval()


def test_any_size_model_runs_at_the_data_size():
    shape, reason = resolve_input_shape(_pooling_net(2), (1, 224, 224), ANY, (12, 12))
    assert shape == (1, 12, 12) and reason is None


def test_too_small_data_goes_to_the_smallest_doubling_that_runs():
    shape, reason = resolve_input_shape(_pooling_net(4), (1, 224, 224), ANY, (5, 5))
    assert shape == (1, 20, 20)  # 5 and 10 are too small for four max-pools
    assert "cannot run on 5x5" in reason


def test_fixed_and_recorded_sizes_and_the_override():
    net = _pooling_net(1)
    assert resolve_input_shape(net, (1, 8, 8), FIXED, (32, 32))[0] == (1, 8, 8)
    assert resolve_input_shape(net, (1, 8, 8), RECORDED, (32, 32))[0] == (1, 8, 8)
    assert resolve_input_shape(net, (1, 8, 8), ANY, (32, 32), 16)[0] == (1, 16, 16)
    with pytest.raises(SnpError, match="fixed input size"):
        resolve_input_shape(net, (1, 8, 8), FIXED, None, 16)
    assert resolve_input_shape(net, (1, 224, 224), ANY, None)[0] == (1, 224, 224)  # mixed-size data


def _loaded(model: nn.Module, classes: int) -> LoadedModel:
    return LoadedModel(model, "user-net", "pickle:Sequential", classes, (1, 224, 224), "test")


def _npz(tmp_path, x: np.ndarray, y: np.ndarray) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return f"npz:{path}"


def test_prepare_uses_the_data_whole_at_its_own_size(tmp_path):
    rng = np.random.default_rng(0)
    spec = _npz(tmp_path, rng.standard_normal((40, 1, 12, 12)), np.arange(40) % 3)
    prepared = workflows.prepare(_loaded(_pooling_net(2), 3), spec, dense_check=False)
    assert prepared.input_shape == (1, 12, 12) and prepared.notes == ()
    assert len(prepared.data.calibration) == 40 and prepared.evaluation.test is prepared.data.calibration
    assert "calibration data" in prepared.evaluation_label


def test_near_chance_dense_accuracy_is_a_warning(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = _npz(tmp_path, rng.standard_normal((60, 1, 8, 8)), np.zeros(60, np.int64) + np.arange(60) % 3)
    net = _pooling_net(1)
    with torch.no_grad():  # always predicts class 2, so scores 1/3 = chance on balanced labels
        net[-1].weight.zero_()
        net[-1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    prepared = workflows.prepare(_loaded(net, 3), spec)
    assert prepared.dense is not None and prepared.dense.near_chance
    assert prepared.dense.top1 == pytest.approx(100 / 3, abs=0.01) and prepared.dense.samples == 60
    assert any("chance" in w for w in prepared.warnings)


def test_class_counts_are_checked_up_front(tmp_path):
    rng = np.random.default_rng(0)
    spec = _npz(tmp_path, rng.standard_normal((20, 1, 8, 8)), np.arange(20) % 5)
    with pytest.raises(SnpError, match=r"labels 0\.\.4 but the model predicts 3 classes"):
        workflows.prepare(_loaded(_pooling_net(1), 3), spec, require_labels=True)
    warned = workflows.prepare(_loaded(_pooling_net(1, classes=50), 50), spec, dense_check=False)
    assert any("predicts 50 classes" in w for w in warned.warnings)


def test_plan_targets_and_compensation_choices():
    assert PlanTarget.parse("flops", 0.5).to_dict() == {"flops_reduction": 0.5}
    assert PlanTarget.parse("keep", {"a": 3}).to_dict() == {"keep": {"a": 3}}
    with pytest.raises(SnpError, match="unknown plan target"):
        PlanTarget.parse("latency", 0.5)
    assert [c.value for c in Compensation] == ["none", "one-shot", "sequential"]


def test_the_whole_pipeline_on_the_demo():
    prepared = workflows.prepare("demo-vgg", "digits")
    analysis = workflows.analyse(prepared, AnalysisOptions(samples=128))
    plan = workflows.make_plan(analysis, PlanTarget.parse("flops", 0.5))
    pruned = workflows.prune(prepared, analysis, plan, compensation="one-shot")
    result = workflows.compare(prepared, pruned)
    assert result.before.samples == 497 and result.evaluation == "the test split of digits"
    assert result.flops_after <= 0.5 * result.flops_before + 1
    assert result.after.top1 > 80 and result.before.top1 == pytest.approx(prepared.dense.top1, abs=2)


def test_every_choice_has_its_help_text():
    from snp_engine.analysis import CURVE_HELP, CURVES
    from snp_engine.datasources import DATA_SOURCES
    from snp_engine.modelsources import MODEL_SOURCES
    from snp_engine.workflows import COMPENSATION_HELP

    assert set(COMPENSATION_HELP) == set(Compensation) and tuple(CURVE_HELP) == CURVES
    for source in [*DATA_SOURCES.values(), *MODEL_SOURCES.values()]:
        assert source.label and source.summary and source.syntax


def test_every_rebuildable_model_source_names_a_registered_family():
    from snp_engine.architectures import ARCHITECTURE_FAMILIES, check_exportable
    from snp_engine.modelsources import MODEL_SOURCES

    families = {source.rebuilds for source in MODEL_SOURCES.values()} - {None}
    assert families == {"demo", "torchvision", "timm"} and families <= set(ARCHITECTURE_FAMILIES)
    check_exportable("demo-vgg")
    check_exportable("torchvision:resnet18")
    with pytest.raises(SnpError, match="cannot export"):
        check_exportable("pickle:Sequential")
