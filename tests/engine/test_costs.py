"""The cost model predicts the parameters and MACs of the physically pruned network exactly."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from snp_engine.costs import build_cost_model, count
from snp_engine.groups import find_groups
from snp_engine.surgery import remove_units
from tests.engine.helpers import demo_model


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval()


MODELS = {
    "demo-vgg": (functools.partial(demo_model, "demo-vgg"), (1, 8, 8)),
    "demo-resnet": (functools.partial(demo_model, "demo-resnet"), (1, 8, 8)),
    "resnet18": (functools.partial(_torchvision, "resnet18"), (3, 32, 32)),
    "mobilenet_v2": (functools.partial(_torchvision, "mobilenet_v2"), (3, 32, 32)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_cost_model_matches_the_physically_pruned_model(name):
    build, shape = MODELS[name]
    model = build()
    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    groups, _ = find_groups(model, example)
    costs = build_cost_model(model, groups, example)

    # the dense network first
    assert costs.evaluate() == pytest.approx(count(model, example), rel=0, abs=1e-6)
    assert costs.params == sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(2)
    for trial in range(2):
        keep = {g.name: int(rng.integers(1, g.units + 1)) for g in groups}
        if trial == 1:  # extremes: one unit in some groups, all in others
            keep = {g.name: (1 if i % 2 else g.units) for i, g in enumerate(groups)}
        removed = {g.name: sorted(rng.choice(g.units, g.units - keep[g.name], replace=False).tolist()) for g in groups}
        pruned = remove_units(copy.deepcopy(model), groups, removed, example)
        params, macs = count(pruned, example)
        predicted_params, predicted_macs = costs.evaluate(keep)
        assert predicted_params == params
        assert predicted_macs == pytest.approx(macs, rel=1e-9)
        assert pruned(example).shape == model(example).shape


def test_cost_scales_as_documented_for_a_linear_stack():
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    example = torch.randn(1, 6)
    groups, _ = find_groups(model, example)
    assert sorted(g.name for g in groups) == ["0", "2"]
    costs = build_cost_model(model, groups, example)
    params, macs = costs.evaluate({"0": 5, "2": 2})
    # Linear(6,5) + Linear(5,2) + Linear(2,3), weights and biases
    assert params == (6 * 5 + 5) + (5 * 2 + 2) + (2 * 3 + 3)
    assert macs == pytest.approx(6 * 5 + 5 * 2 + 2 * 3)
