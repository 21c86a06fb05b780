"""ShuffleNetV2: its channel shuffle is traced in an equivalent form (snp_engine.adapters), the block
internals are pruned, and the channels through the split and shuffle are excluded with the reason."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.data import TensorDataset
from torchvision.models.shufflenetv2 import channel_shuffle

from snp_engine import api, flops
from snp_engine.adapters import shuffle_channels
from snp_engine.groups import find_groups

from .helpers import relative_error


@pytest.mark.parametrize("groups", [2, 3])
def test_the_index_select_shuffle_is_torchvisions_shuffle(groups):
    x = torch.randn(2, 12, 3, 3)
    assert torch.equal(shuffle_channels(x, groups), channel_shuffle(x, groups))


def _network():
    torch.manual_seed(0)
    return torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()


def test_shufflenet_block_internals_are_groups_and_its_shuffled_channels_are_excluded():
    model = _network()
    groups, excluded = find_groups(model, torch.zeros(1, 3, 64, 64))
    names = {g.name for g in groups}
    # every stride-1 block's branch: 1x1 conv -> BN, ReLU, depthwise 3x3, BN -> 1x1 conv
    assert {f"stage2.{b}.branch2.0" for b in range(1, 4)} <= names
    assert {f"stage3.{b}.branch2.0" for b in range(1, 8)} <= names
    reasons = {e.name: e.reason for e in excluded}
    assert reasons["stage2.0.branch2.5"].startswith("passes through a channel split or shuffle")
    assert not names & set(reasons)
    assert all("forward" not in vars(m) for m in model.modules())  # the traced form is gone again


def test_a_pruned_shufflenet_equals_its_functional_prune_and_costs_what_was_planned():
    model = _network()
    data = TensorDataset(torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.zeros(16).long())
    analysis = api.analyze(model, data)
    keep_all = api.prune(model, analysis, analysis.plan(keep=dict(analysis.units)), data=data)
    with torch.no_grad():
        assert torch.equal(keep_all.model(data.tensors[0]), model(data.tensors[0]))
    plan = analysis.plan(flops_reduction=0.3)
    physical = api.prune(model, analysis, plan, data=data)
    functional = api.prune(model, analysis, plan, data=data, physical=False)
    with torch.no_grad():
        assert relative_error(physical.model(data.tensors[0]), functional.model(data.tensors[0])) < 1e-5
    assert analysis.cost(plan.keep) == flops.count(physical.model, data.tensors[0][:1])
    assert plan.flops_reduction >= 0.3 - 1e-9
