"""Concatenations (DenseNet, SqueezeNet's fire modules, GoogLeNet/Inception): each branch is a
group whose units are a slice of its readers' input, analysed at that slice, compensated in the
slice's weight columns, costed and removed physically with the other slices intact."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from snp_engine import api, io
from snp_engine.costs import count
from snp_engine.groups import find_groups
from snp_engine.statistics import to_samples
from snp_engine.surgery import weight_taps, write_weight_taps
from tests.engine.helpers import logits_of, random_images, randomised_norms, relative_error


class _Fire(nn.Module):
    """A stem read by two branches whose outputs are concatenated (behind the stem's own channels,
    as in a dense block), normalised together and read by one conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.left = nn.Conv2d(5, 4, 1, bias=False)
        self.left_bn = nn.BatchNorm2d(4)
        self.right = nn.Conv2d(5, 3, 3, padding=1, bias=False)
        self.right_bn = nn.BatchNorm2d(3)
        self.joint_bn = nn.BatchNorm2d(12)
        self.mix = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        left = torch.relu(self.left_bn(self.left(x)))
        right = torch.relu(self.right_bn(self.right(x)))
        joint = torch.relu(self.joint_bn(torch.cat([x, left, right], 1)))
        return self.fc(torch.relu(self.mix(joint)).mean((2, 3)))


def _fire(seed: int = 0) -> _Fire:
    torch.manual_seed(seed)
    return randomised_norms(_Fire(), seed)


def test_branches_are_groups_reading_their_slice_of_the_concatenation():
    groups, excluded = find_groups(_fire(), torch.randn(1, 3, 8, 8))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"stem", "left", "right", "mix"} and not excluded[1:]
    spans = {name: [(r.consumer, r.start, r.width) for r in by_name[name].readers] for name in ("left", "right")}
    assert spans == {"left": [("mix", 5, 12)], "right": [("mix", 9, 12)]}
    # the stem is read by both branches (whole inputs) and by the mix conv (its first 5 channels)
    stem = [(r.consumer, r.start, r.width) for r in by_name["stem"].readers]
    assert stem == [("left", 0, 0), ("right", 0, 0), ("mix", 0, 12)]
    assert "joint_bn" in by_name["left"].channelwise and "joint_bn" in by_name["stem"].channelwise
    assert by_name["left"].coupling == "a slice of a concatenation"
    assert by_name["stem"].coupling == "read by 3 layers, a slice of a concatenation"


def test_slices_of_samples_and_weights():
    x = torch.arange(2 * 12 * 3 * 3, dtype=torch.float64).reshape(2, 12, 3, 3)
    torch.testing.assert_close(to_samples(x, "conv", 3, 9, 12), to_samples(x[:, 9:], "conv", 3))
    flat = x.reshape(2, -1)
    expected = to_samples(x[:, 5:9].reshape(2, -1), "flatten", 4)
    torch.testing.assert_close(to_samples(flat, "flatten", 4, 5, 12), expected)
    conv = nn.Conv2d(12, 2, 3)
    taps = weight_taps(conv, "conv", 3, 9, 12)
    torch.testing.assert_close(taps, conv.weight.detach()[:, 9:].reshape(2, 3, 9))
    before = conv.weight.detach().clone()
    write_weight_taps(conv, torch.zeros_like(taps), "conv", 9, 12)
    assert torch.equal(conv.weight.detach()[:, :9], before[:, :9]) and not conv.weight.detach()[:, 9:].any()
    linear = nn.Linear(12 * 4, 2)
    taps = weight_taps(linear, "flatten", 4, 5, 12)
    torch.testing.assert_close(taps, linear.weight.detach().reshape(2, 12, 4)[:, 5:9])


@pytest.mark.parametrize("sequential", [False, True])
def test_keep_all_reproduces_the_dense_network_exactly(sequential):
    model = _fire()
    data = random_images()
    analysis = api.analyze(model, data)
    run = api.prune(model, analysis, analysis.plan(keep={}), data=data, sequential=sequential)
    assert torch.equal(logits_of(run.model, data), logits_of(model, data))


@pytest.mark.parametrize("sequential", [False, True])
def test_duplicated_branch_channel_is_removed_with_no_output_change(sequential):
    model = _fire()
    with torch.no_grad():  # channel 2 of the right branch copies its channel 0, in every tensor it passes
        model.right.weight[2] = model.right.weight[0]
        for norm, index in ((model.right_bn, 0), (model.joint_bn, 9)):
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                tensor[index + 2] = tensor[index]
    data = random_images()
    analysis = api.analyze(model, data)
    right = next(g for g in analysis.groups if g.name == "right")
    assert right.order[-1].item() in (0, 2) and right.curve[-2] == pytest.approx(1.0, abs=1e-6)
    plan = analysis.plan(keep={"right": 2})
    run = api.prune(model, analysis, plan, data=data, sequential=sequential)
    assert run.model.right.out_channels == 2 and run.model.joint_bn.num_features == 11
    assert run.model.mix.in_channels == 11 and run.model.left.out_channels == 4
    assert relative_error(logits_of(run.model, data), logits_of(model, data)) < 1e-5
    dropped = api.prune(model, analysis, plan, compensate=False)
    assert relative_error(logits_of(dropped.model, data), logits_of(model, data)) > 1e-3


def test_every_slice_pruned_is_costed_exactly_and_removed_as_planned():
    model = _fire()
    data = random_images()
    analysis = api.analyze(model, data)
    plan = analysis.plan(keep={"stem": 3, "left": 2, "right": 1, "mix": 4})
    run = api.prune(model, analysis, plan, data=data, sequential=False)
    assert run.model.joint_bn.num_features == 6 and run.model.mix.weight.shape[:2] == (4, 6)
    params, macs = count(run.model, torch.zeros(1, 3, 8, 8))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-12)
    functional = api.prune(model, analysis, plan, sequential=False, physical=False)
    torch.testing.assert_close(logits_of(run.model, data), logits_of(functional.model, data), rtol=1e-5, atol=1e-6)


def test_squeezenet_prunes_its_fire_modules_and_reloads_with_equallogits_of(tmp_path):
    torch.manual_seed(0)
    model = randomised_norms(torchvision.models.squeezenet1_1(num_classes=10), seed=2)
    data = random_images(16, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=16)
    assert len(analysis.groups) == 25  # the stem and 8 fire modules of 3 convs; the classifier is the output
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
    assert torch.equal(logits_of(exact.model, data), logits_of(model, data))
    plan = analysis.plan(flops_reduction=0.4)
    run = api.prune(model, analysis, plan, data=data)
    params, macs = count(run.model, torch.zeros(1, 3, 32, 32))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-9)
    path = io.export_model(
        run, tmp_path / "squeeze.safetensors", arch="torchvision:squeezenet1_1", num_classes=10, input_shape=(3, 32, 32)
    )
    again = io.load_exported(path)
    assert torch.equal(logits_of(again.model, data), logits_of(run.model, data))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["densenet121", "googlenet"])
def test_densenet_and_googlenet_prune_exactly_costed(arch):
    torch.manual_seed(0)
    extra = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = randomised_norms(getattr(torchvision.models, arch)(num_classes=10, **extra), seed=5)
    data = random_images(8, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=8)
    assert not [e for e in analysis.excluded if "concatenation" in e.reason]
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
    assert torch.equal(logits_of(exact.model, data), logits_of(model, data))
    plan = analysis.plan(flops_reduction=0.3)
    run = api.prune(model, analysis, plan, sequential=False)
    params, macs = count(run.model, torch.zeros(1, 3, 32, 32))
    assert params == plan.params_after and macs == pytest.approx(plan.flops_after, rel=1e-9)
