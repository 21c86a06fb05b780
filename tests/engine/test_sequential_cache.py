"""The segment cache of sequential calibration (snp_engine.segments): the same fits as without it.

Every comparison is exact (``torch.equal`` on every tensor of the pruned state dict, the kept units
and the held-out choices): the cache computes the same operations on the same tensors as the
forward passes it replaces, so on CPU not even round-off may differ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snp_engine import api
from snp_engine.activations import collect_joint_folds
from snp_engine.analysis import Analysis
from snp_engine.heads import explicit_attention
from snp_engine.models import load_model
from snp_engine.pruning import _reader_steps
from snp_engine.segments import SegmentCache


class _Block(nn.Module):
    """torchvision's basic block: in-place ReLUs and an in-place sum with the skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(_Block(12), _Block(12))
        self.head = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class _Fire(nn.Module):
    """Two branches concatenated and read by one layer: two groups with the same reader."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(8, 10, 1)
        self.right = nn.Conv2d(8, 6, 3, padding=1)
        self.read = nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        x = torch.cat([torch.relu(self.left(s)), torch.relu(self.right(s))], 1)
        return self.fc(torch.relu(self.read(x)).mean((2, 3)))


class _Branchy(_ResNet):
    """Control flow on the data: torch.fx cannot trace it, so the passes run as before."""

    def forward(self, x):
        x = self.stem(x)
        if float(x.mean()) > -1e9:
            x = self.blocks(x)
        return self.fc(self.head(x).mean((2, 3)))


class _Defaults(_ResNet):
    """A forward with a further argument that keeps its default (a traced graph input of its own)."""

    def forward(self, x, scale: float = 0.5):
        return self.fc(self.head(self.blocks(self.stem(x)) * scale).mean((2, 3)))


class _Specialised(_ResNet):
    """Traced with ``scale`` a graph input, ``scale is not None`` holds; run with its default None it
    does not: the graph differs from the forward, which the check before the first use finds."""

    def forward(self, x, scale: float | None = None):
        x = self.blocks(self.stem(x))
        if scale is not None:
            x = x * scale
        return self.fc(self.head(x).mean((2, 3)))


def _model(cls) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _data(shape=(3, 8, 8), images: int = 96) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(images, *shape, generator=gen)
    if shape[0] > 1:
        x[:, 1] = 0.6 * x[:, 0] + 0.2 * x[:, 1]  # correlated input channels
    return TensorDataset(x, torch.zeros(images, dtype=torch.long))


def _prune(model, data, analysis, plan, **options):
    return api.prune(model, analysis, plan, data=data, batch_size=32, **options)


def _assert_identical(a, b) -> None:
    assert a.record.kept == b.record.kept
    assert a.record.fits == b.record.fits
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _analysed(cls, data):
    model = _model(cls)
    analysis = api.analyze(model, data, batch_size=32)
    return model, analysis, analysis.plan(flops_reduction=0.4)


def _segments(model: nn.Module, analysis: Analysis, budget_mb: float | None = None):
    import copy

    pruned = copy.deepcopy(model)
    steps = _reader_steps(model, analysis, "cpu")
    consumers = list(dict.fromkeys(r.consumer for _, r in steps))
    example = torch.randn(2, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
    return pruned, steps, SegmentCache.build(pruned, model, consumers, example, budget_mb=budget_mb)


def _eager_input(model: nn.Module, consumer: str, images: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(consumer).register_forward_pre_hook(lambda _m, i: seen.append(i[0].clone()))
    try:
        with torch.inference_mode(), explicit_attention(model):
            model(images)
    finally:
        handle.remove()
    return seen[0]


def test_cache_on_off_and_over_budget_prune_identically():
    data = _data()
    for cls in (_ResNet, _Fire):
        model, analysis, plan = _analysed(cls, data)
        without = _prune(model, data, analysis, plan, cache_mb=0)
        assert any(k < analysis.units[name] for name, k in plan.keep.items())
        for budget in (None, 0.02):  # no bound; room for the cuts of about one batch of three
            _assert_identical(_prune(model, data, analysis, plan, cache_mb=budget), without)
        one_fold = _prune(model, data, analysis, plan, cache_mb=0, heldout_folds=1)
        _assert_identical(_prune(model, data, analysis, plan, heldout_folds=1), one_fold)


def test_demo_networks_prune_identically_with_the_cache():
    for name in ("demo-vgg", "demo-resnet"):
        model = load_model(name).model
        data = _data((1, 8, 8), 80)
        analysis = api.analyze(model, data, batch_size=32)
        plan = analysis.plan(flops_reduction=0.5)
        _assert_identical(_prune(model, data, analysis, plan), _prune(model, data, analysis, plan, cache_mb=0))
        reselected = _prune(model, data, analysis, plan, reselect=True, refit_unpruned=True)
        _assert_identical(
            reselected, _prune(model, data, analysis, plan, reselect=True, refit_unpruned=True, cache_mb=0)
        )


def test_a_shuffling_loader_gets_the_images_of_each_pass():
    data = _data()
    model, analysis, plan = _analysed(_ResNet, data)

    def loader():
        return DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))

    with_cache = api.prune(model, analysis, plan, data=loader(), cache_mb=None)
    _assert_identical(with_cache, api.prune(model, analysis, plan, data=loader(), cache_mb=0))
    # the same images in a fixed order fit otherwise: the shuffled passes were really used
    fixed = api.prune(model, analysis, plan, data=data, batch_size=32)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fixed.model.state_dict().values(), with_cache.model.state_dict().values(), strict=True)
    )


def test_untraceable_networks_prune_as_before():
    data = _data()
    for cls in (_Branchy, _Specialised):
        model, analysis, plan = _analysed(cls, data)
        assert _segments(model, analysis)[2] is None
        _assert_identical(_prune(model, data, analysis, plan), _prune(model, data, analysis, plan, cache_mb=0))


def test_cached_inputs_are_the_forward_passes_and_follow_upstream_changes():
    data = _data()
    model, analysis, _ = _analysed(_ResNet, data)
    pruned, steps, segments = _segments(model, analysis)
    batches = [x for x, _ in DataLoader(data, batch_size=32)]
    consumers = list(dict.fromkeys(r.consumer for _, r in steps))
    assert consumers[:3] == ["blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1"]
    with torch.inference_mode(), explicit_attention(pruned), explicit_attention(model):
        for consumer in consumers[:2]:
            segments.begin()
            for index, images in enumerate(batches):
                got = segments.inputs(index, images, consumer)
                assert torch.equal(got[0], _eager_input(pruned, consumer, images))
                assert torch.equal(got[1], _eager_input(model, consumer, images))
    assert len(segments.entries) == len(batches)
    # a change before the cut (here the stem) invalidates it; one at the cut's reader does not
    with torch.no_grad():
        pruned.get_submodule("blocks.0.conv2").weight.mul_(0.5)
        pruned.get_submodule("stem.0").weight.mul_(1.5)
    with torch.inference_mode(), explicit_attention(pruned), explicit_attention(model):
        segments.begin()
        assert not segments.entries
        for index, images in enumerate(batches):
            got = segments.inputs(index, images, consumers[2])
            assert torch.equal(got[0], _eager_input(pruned, consumers[2], images))
            assert not torch.equal(got[0], got[1])


def test_the_budget_bounds_the_cached_batches():
    data = _data()
    model, analysis, _ = _analysed(_ResNet, data)
    consumer = "blocks.0.conv2"
    batches = [x for x, _ in DataLoader(data, batch_size=32)]
    _, _, unbounded = _segments(model, analysis)
    with torch.inference_mode():
        unbounded.begin()
        for index, images in enumerate(batches):
            unbounded.inputs(index, images, consumer)
    per_batch = max(e.nbytes for e in unbounded.entries.values())
    _, _, bounded = _segments(model, analysis, budget_mb=1.5 * per_batch / 2**20)
    with torch.inference_mode():
        bounded.begin()
        for index, images in enumerate(batches):
            got = bounded.inputs(index, images, consumer)
            assert torch.equal(got[1], _eager_input(model, consumer, images))
    assert len(bounded.entries) == 1 and bounded.used <= bounded.budget


def test_collect_joint_folds_with_and_without_the_cache():
    data = _data()
    model, analysis, _ = _analysed(_Fire, data)
    pruned, steps, segments = _segments(model, analysis)
    with torch.no_grad():  # the partly pruned network differs from the start
        pruned.squeeze.weight.mul_(0.7)
    batches = [x for x, _ in DataLoader(data, batch_size=32)]
    for g, reader in steps:
        expected = collect_joint_folds(pruned, model, reader.reader, g.channels, batches, folds=3)
        got = collect_joint_folds(pruned, model, reader.reader, g.channels, batches, folds=3, segments=segments)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a.shifted_outer, b.shifted_outer) and torch.equal(a.shift, b.shift)
            assert torch.equal(a.count, b.count)


def test_attention_layers_and_default_arguments_use_the_cache():
    from torchvision.models.vision_transformer import VisionTransformer

    data = _data((3, 16, 16), 64)
    torch.manual_seed(0)
    vit = VisionTransformer(16, 4, 2, 2, 16, 32, num_classes=4).eval()
    for model in (vit, _model(_Defaults)):
        analysis = api.analyze(model, data, batch_size=32)
        plan = analysis.plan(flops_reduction=0.3)
        assert any(k < analysis.units[name] for name, k in plan.keep.items())
        assert _segments(model, analysis)[2] is not None
        _assert_identical(_prune(model, data, analysis, plan), _prune(model, data, analysis, plan, cache_mb=0))
    # the heads group's reader (the output projection) sits inside the attention layer
    assert any(g.group.kind == "heads" for g in analysis_of(vit, data).groups)


def analysis_of(model, data):
    return api.analyze(model, data, batch_size=32)


def test_reselection_orders_with_the_consumers_rows_where_the_analysis_did(monkeypatch):
    """A reader with fewer (output, tap) rows than inputs (the classifier here: 5 outputs of 16
    inputs) hands its rows F to the re-selection's ordering, as the analysis did, not M = FᵀF only."""
    import snp_engine.pruning as pruning

    data = _data()
    model, analysis, _ = _analysed(_ResNet, data)
    factored = {g.name for g in analysis.groups if g.metric_factor is not None}
    plan = analysis.plan(keep={"head.0": 9})
    assert factored == {"head.0"} and plan.keep["head.0"] < 16  # the 16 channels read by fc, pruned
    seen: list[bool] = []
    order = pruning.order_units

    def recording(name, inputs):
        seen.append(inputs.factor is not None)
        return order(name, inputs)

    monkeypatch.setattr(pruning, "order_units", recording)
    _prune(model, data, analysis, plan, reselect=True)
    assert sum(seen) == len(factored) and len(seen) >= len(factored)
