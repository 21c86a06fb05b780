"""Grouped convolutions (ResNeXt, RegNet): the channels a grouped conv reads or produces are pruned
in equal numbers per conv group, a grouped reader is compensated within each of its groups (its
weight stays block-diagonal), and the plan keeps multiples of the groups."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from snp_engine import api, io
from snp_engine.compensation import within_groups
from snp_engine.costs import count
from snp_engine.errors import SnpError
from snp_engine.subspace import balanced
from snp_engine.surgery import weight_taps, write_weight_taps
from tests.engine.helpers import logits_of, random_images, randomised_norms, relative_error


class _NeXt(nn.Module):
    """A stem, a 1x1 conv, a grouped 3x3 conv (3 groups of 4 channels), a 1x1 conv, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.a(x)))
        x = torch.relu(self.bn2(self.b(x)))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def _next(seed: int = 0) -> _NeXt:
    torch.manual_seed(seed)
    return randomised_norms(_NeXt(), seed)


def _balanced_prefixes(order: torch.Tensor, parts: int) -> bool:
    size = order.numel() // parts
    return all(torch.bincount(order[: m * parts] // size, minlength=parts).eq(m).all() for m in range(1, size + 1))


def test_balanced_order_keeps_equal_numbers_per_part_and_the_preference_within():
    order = torch.tensor([5, 4, 0, 1, 2, 3, 7, 6])  # parts {0..3} and {4..7}
    out = balanced(order, 2)
    assert out.tolist() == [5, 0, 4, 1, 2, 7, 3, 6]
    assert _balanced_prefixes(out, 2) and sorted(out.tolist()) == list(range(8))
    assert torch.equal(balanced(order, 1), order)


def test_within_groups_zeroes_covariances_across_groups_only():
    cov = torch.arange(36, dtype=torch.float64).reshape(6, 6)
    masked = within_groups(cov, 3)
    assert torch.equal(masked[0:2, 0:2], cov[0:2, 0:2]) and not masked[0:2, 2:].any()
    joint = within_groups(torch.ones(12, 12), 3, copies=2)
    assert joint[0, 6] == 1 and joint[0, 7] == 1 and joint[0, 8] == 0  # x̃_0 with x_0, x_1 (same group)


def test_grouped_conv_weights_as_dense_taps_and_back():
    conv = nn.Conv2d(6, 4, 3, groups=2)
    taps = weight_taps(conv, "conv", 6)
    assert taps.shape == (4, 6, 9) and not taps[:2, 3:].any() and not taps[2:, :3].any()
    torch.testing.assert_close(taps[2:, 3:], conv.weight.detach()[2:].reshape(2, 3, 9))
    write_weight_taps(conv, taps * 2)
    torch.testing.assert_close(weight_taps(conv, "conv", 6), taps * 2)
    leaked = taps.clone()
    leaked[0, 5, 0] = 1.0
    with pytest.raises(ValueError, match="within its 2 groups"):
        write_weight_taps(conv, leaked)


def test_grouped_layers_are_groups_with_parts_and_balanced_orders():
    analysis = api.analyze(_next(), random_images(64))
    groups = {g.name: g for g in analysis.groups}
    assert set(groups) == {"stem", "a", "b", "c"} and not analysis.excluded[1:]
    assert groups["a"].group.parts == 3 and groups["a"].group.readers[0].groups == 3  # read by the grouped conv
    assert groups["b"].group.parts == 3 and groups["b"].group.readers[0].groups == 1  # produced by it
    assert groups["a"].group.coupling == "kept evenly over 3 conv groups" and groups["a"].group.coupled
    for name in ("a", "b"):
        assert _balanced_prefixes(groups[name].order, 3)
    with pytest.raises(SnpError, match="keeps a multiple of 3 units"):
        analysis.plan(keep={"a": 5})
    plan = analysis.plan(flops_reduction=0.4)
    assert plan.keep["a"] % 3 == 0 and plan.keep["b"] % 3 == 0 and plan.flops_reduction >= 0.39


@pytest.mark.parametrize("sequential", [False, True])
def test_keep_all_reproduces_the_dense_network_exactly(sequential):
    model = _next()
    data = random_images(64)
    analysis = api.analyze(model, data)
    run = api.prune(model, analysis, analysis.plan(keep={}), data=data, sequential=sequential)
    assert torch.equal(logits_of(run.model, data), logits_of(model, data))


@pytest.mark.parametrize("sequential", [False, True])
def test_a_duplicated_channel_in_every_conv_group_is_removed_with_no_output_change(sequential):
    model = _next()
    with torch.no_grad():  # in each group of 4 channels that b reads, the last copies the first
        for part in range(3):
            copy, of = 4 * part + 3, 4 * part
            model.a.weight[copy] = model.a.weight[of]
            for tensor in (model.bn1.weight, model.bn1.bias, model.bn1.running_mean, model.bn1.running_var):
                tensor[copy] = tensor[of]
    data = random_images(64)
    analysis = api.analyze(model, data)
    a = analysis.group("a")
    assert a.curve[9] == pytest.approx(1.0, abs=1e-6)
    plan = analysis.plan(keep={"a": 9})
    assert all(len(set(plan.kept["a"]) & {4 * part, 4 * part + 3}) == 1 for part in range(3))
    run = api.prune(model, analysis, plan, data=data, sequential=sequential)
    assert run.model.a.out_channels == 9 and run.model.b.weight.shape == (12, 3, 3, 3)
    assert relative_error(logits_of(run.model, data), logits_of(model, data)) < 1e-5
    dropped = api.prune(model, analysis, plan, compensate=False)
    assert relative_error(logits_of(dropped.model, data), logits_of(model, data)) > 1e-3


@pytest.mark.parametrize("sequential", [False, True])
def test_pruned_grouped_network_is_costed_exactly_and_physical_equals_functional(sequential):
    model = _next()
    data = random_images(64)
    analysis = api.analyze(model, data)
    plan = analysis.plan(keep={"a": 6, "b": 9, "stem": 5})
    run = api.prune(model, analysis, plan, data=data, sequential=sequential)
    assert run.model.b.groups == 3 and run.model.b.weight.shape == (9, 2, 3, 3)
    params, macs = count(run.model, torch.zeros(1, 3, 8, 8))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-12)
    functional = api.prune(model, analysis, plan, data=data, sequential=sequential, physical=False)
    torch.testing.assert_close(logits_of(run.model, data), logits_of(functional.model, data), rtol=1e-5, atol=1e-6)


def test_statistics_files_keep_the_groups_and_parts(tmp_path):
    analysis = api.analyze(_next(), random_images(64))
    path = tmp_path / "next.stats.safetensors"
    analysis.save(path)
    again = io.load_analysis(path)
    assert again.group("a").group == analysis.group("a").group
    assert torch.equal(again.group("a").order, analysis.group("a").order)


def test_regnet_y_prunes_its_grouped_convs_and_reloads_with_equallogits_of(tmp_path):
    torch.manual_seed(0)
    model = randomised_norms(torchvision.models.regnet_y_400mf(num_classes=10), seed=2)
    data = random_images(8, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=8)
    assert sum(g.group.parts > 1 for g in analysis.groups) >= 16
    assert not [e for e in analysis.excluded if "grouped" in e.reason]
    plan = analysis.plan(flops_reduction=0.3)
    run = api.prune(model, analysis, plan, sequential=False)
    params, macs = count(run.model, torch.zeros(1, 3, 32, 32))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-9)
    path = io.export_model(
        run, tmp_path / "regnet.safetensors", arch="torchvision:regnet_y_400mf", num_classes=10, input_shape=(3, 32, 32)
    )
    again = io.load_exported(path)
    assert torch.equal(logits_of(again.model, data), logits_of(run.model, data))


@pytest.mark.slow
def test_resnext50_prunes_with_exact_costs():
    torch.manual_seed(0)
    model = randomised_norms(torchvision.models.resnext50_32x4d(num_classes=10), seed=3)
    data = random_images(8, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=8)
    assert len(analysis.groups) == 37 and len(analysis.excluded) == 1
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
    assert torch.equal(logits_of(exact.model, data), logits_of(model, data))
    plan = analysis.plan(flops_reduction=0.5)
    run = api.prune(model, analysis, plan, sequential=False)
    params, macs = count(run.model, torch.zeros(1, 3, 32, 32))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-9)
