"""Coupled groups (residual streams, channels read by several layers): found, ordered over all
their readers, compensated at each reader, physically removed, exported and reloaded."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from snp_engine import api, io
from snp_engine.costs import count
from snp_engine.subspace import OrderingInputs, explained_curve, forward_greedy, order_units, subspace_curve
from tests.engine.helpers import (
    conditional_covariance,
    logits_of,
    random_covariance,
    random_images,
    random_metric,
    randomised_norms,
    relative_error,
)


class _Block(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class _TinyResNet(nn.Module):
    """A stem, two residual blocks on one stream and a linear classifier."""

    def __init__(self, channels: int = 6, hidden: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.block1 = _Block(channels, hidden)
        self.block2 = _Block(channels, hidden)
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


def _with_duplicate_channel(model: _TinyResNet, copy: int, of: int) -> _TinyResNet:
    """Make stream channel ``copy`` an exact copy of channel ``of`` in every tensor of the stream:
    every producer's row and BatchNorm entry, and every block's skip sum."""
    with torch.no_grad():
        for conv, norm in (
            (model.stem, model.bn),
            (model.block1.conv2, model.block1.bn2),
            (model.block2.conv2, model.block2.bn2),
        ):
            conv.weight[copy] = conv.weight[of]
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                tensor[copy] = tensor[of]
    return model


def _stream(analysis):
    (stream,) = [g for g in analysis.groups if g.group.coupled]
    return stream


def test_tiny_resnet_stream_is_one_group_with_all_readers_and_producers():
    model = randomised_norms(_TinyResNet())
    analysis = api.analyze(model, random_images())
    stream = _stream(analysis)
    assert stream.name == "stem" and stream.units == 6
    assert [r.consumer for r in stream.group.readers] == ["block1.conv1", "block2.conv1", "fc"]
    assert set(stream.group.all_producers) == {"stem", "block1.conv2", "block2.conv2"}
    assert [r.moments.units for r in stream.readers] == [6, 6, 6]
    # each reader's statistics are those of its own input: the stream after 0, 1 and 2 blocks
    first, second, third = (r.moments.covariance() for r in stream.readers)
    assert not torch.allclose(first, second) and not torch.allclose(second, third)
    assert stream.readers[2].moments.samples == 48  # fc reads one pooled vector per image


@pytest.mark.parametrize("sequential", [False, True])
def test_keep_all_reproduces_the_dense_network_exactly(sequential):
    model = randomised_norms(_TinyResNet())
    data = random_images()
    analysis = api.analyze(model, data)
    run = api.prune(model, analysis, analysis.plan(keep={}), data=data, sequential=sequential)
    assert torch.equal(logits_of(run.model, data), logits_of(model, data))


@pytest.mark.parametrize("sequential", [False, True])
def test_duplicated_stream_channel_is_removed_with_no_output_change(sequential):
    model = _with_duplicate_channel(randomised_norms(_TinyResNet()), copy=4, of=1)
    data = random_images()
    analysis = api.analyze(model, data)
    stream = _stream(analysis)
    assert stream.order[-1].item() in (1, 4)  # the copy explains nothing the original does not
    assert stream.curve[-2] == pytest.approx(1.0, abs=1e-6)
    drop = int(stream.order[-1])
    kept = [i for i in range(6) if i != drop]
    plan = analysis.plan(keep={"stem": 5})
    assert plan.kept["stem"] == tuple(kept)
    run = api.prune(model, analysis, plan, data=data, sequential=sequential)
    assert run.model.stem.out_channels == 5 and run.model.fc.in_features == 5
    assert run.model.block1.conv1.in_channels == run.model.block2.conv2.out_channels == 5
    assert relative_error(logits_of(run.model, data), logits_of(model, data)) < 1e-5
    # without compensation the readers simply lose the channel: a real change
    dropped = api.prune(model, analysis, plan, compensate=False)
    assert relative_error(logits_of(dropped.model, data), logits_of(model, data)) > 1e-3


def test_streams_can_be_left_alone():
    model = randomised_norms(_TinyResNet())
    analysis = api.analyze(model, random_images(), coupled=False)
    assert not any(g.group.coupled for g in analysis.groups)
    reasons = {e.name: e.reason for e in analysis.excluded}
    assert reasons["stem"].startswith("coupled across 3 layers")


def _brute_force_objective(covs, metrics, kept) -> float:
    """Σ_r tr(M_r S_r|K) / tr(M_r C_r) by explicit Schur complements."""
    total = 0.0
    for cov, metric in zip(covs, metrics, strict=True):
        m = np.eye(cov.shape[0]) if metric is None else metric.numpy()
        c = cov.numpy()
        total += np.trace(m @ conditional_covariance(c, kept)) / np.trace(m @ c)
    return total


@pytest.mark.parametrize("with_metric", [False, True])
def test_multi_reader_greedy_takes_the_best_unit_of_the_summed_objective(with_metric):
    n = 7
    covs = [random_covariance(n, seed=s) * scale for s, scale in ((1, 1.0), (2, 50.0), (3, 0.02))]
    metrics = [random_metric(n, seed=s) if with_metric else None for s in (4, 5, 6)]
    order = forward_greedy(covs[0], metrics[0], block=1, more=list(zip(covs[1:], metrics[1:], strict=True))).tolist()
    assert sorted(order) == list(range(n))
    for k in range(n):
        best = min(
            (j for j in range(n) if j not in order[:k]),
            key=lambda j: _brute_force_objective(covs, metrics, [*order[:k], j]),
        )
        chosen = _brute_force_objective(covs, metrics, order[: k + 1])
        assert chosen <= _brute_force_objective(covs, metrics, [*order[:k], best]) + 1e-9
    # the curve is the mean over readers of the share each keeps
    more = list(zip(covs[1:], metrics[1:], strict=True))
    curve = explained_curve(covs[0], torch.tensor(order), metrics[0], ridge=0.0, more=more).numpy()
    expected = [1 - _brute_force_objective(covs, metrics, order[:k]) / 3 for k in range(n + 1)]
    np.testing.assert_allclose(curve, expected, atol=1e-9)


def test_multi_reader_orderings_are_permutations_and_curves_are_monotone():
    n = 6
    covs = [random_covariance(n, seed=s) for s in (7, 8)]
    inputs = OrderingInputs(
        covs[0], random_metric(n, seed=9), torch.rand(n, dtype=torch.float64), 0, ((covs[1], None),)
    )
    for name in ("output", "greedy", "pivoted", "zca", "variance", "l1", "identity", "random"):
        order = order_units(name, inputs)
        assert sorted(order.tolist()) == list(range(n)), name
        for curve in (
            explained_curve(covs[0], order, more=[(covs[1], None)]),
            subspace_curve(covs[0], order, more=[covs[1]]),
        ):
            values = curve.numpy()
            assert values[0] == 0 and values[-1] == pytest.approx(1.0) and np.all(np.diff(values) >= -1e-12)


def test_brute_force_best_pair_is_found_by_the_summed_objective_on_two_readers():
    """Two readers that disagree: the best pair for their sum is what greedy's first two steps give
    when one step dominates, and never worse than any pair by more than greedy's known gap."""
    n = 5
    covs = [random_covariance(n, seed=21), random_covariance(n, seed=22)]
    order = forward_greedy(covs[0], more=[(covs[1], None)], block=1).tolist()
    first = _brute_force_objective(covs, [None, None], order[:1])
    assert first == pytest.approx(min(_brute_force_objective(covs, [None, None], [j]) for j in range(n)))
    best_pair = min(_brute_force_objective(covs, [None, None], list(p)) for p in itertools.combinations(range(n), 2))
    assert _brute_force_objective(covs, [None, None], order[:2]) >= best_pair - 1e-12


def _torchvision_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomised_norms(torchvision.models.resnet18(num_classes=10), seed=3)


def test_resnet18_deep_reduction_is_reachable_and_costed_exactly():
    model = _torchvision_resnet18()
    data = random_images(16, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=16)
    assert sum(g.group.coupled for g in analysis.groups) == 4
    plan = analysis.plan(flops_reduction=0.8)
    assert plan.flops_reduction >= 0.79
    assert plan.keep["conv1"] < 64  # the first stage's stream loses channels too
    run = api.prune(model, analysis, plan, sequential=False)
    params, macs = count(run.model, torch.zeros(1, 3, 32, 32))
    assert params == plan.params_after
    assert macs == pytest.approx(plan.flops_after, rel=1e-9)
    functional = api.prune(model, analysis, plan, sequential=False, physical=False)
    torch.testing.assert_close(logits_of(run.model, data), logits_of(functional.model, data), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resnet18_with_pruned_streams_exports_and_reloads_with_equallogits_of(tmp_path):
    model = _torchvision_resnet18()
    data = random_images(16, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=16)
    run = api.prune(model, analysis, analysis.plan(flops_reduction=0.6), data=data)
    path = io.export_model(
        run, tmp_path / "r18.safetensors", arch="torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)
    )
    again = io.load_exported(path)
    assert again.model.conv1.out_channels == run.model.conv1.out_channels < 64
    assert torch.equal(logits_of(again.model, data), logits_of(run.model, data))


def test_mobilenet_v2_streams_prune_and_keep_all_is_exact():
    torch.manual_seed(0)
    model = randomised_norms(torchvision.models.mobilenet_v2(num_classes=10), seed=4)
    data = random_images(8, (3, 32, 32))
    analysis = api.analyze(model, data, max_positions=8)
    assert sum(g.group.coupled for g in analysis.groups) == 5
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
    assert torch.equal(logits_of(exact.model, data), logits_of(model, data))
    run = api.prune(model, analysis, analysis.plan(flops_reduction=0.4), data=data)
    assert torch.isfinite(logits_of(run.model, data)).all()
    assert count(run.model, torch.zeros(1, 3, 32, 32))[0] == analysis.plan(flops_reduction=0.4).params_after
