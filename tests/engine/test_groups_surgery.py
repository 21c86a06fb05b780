"""Unit-group discovery on standard architectures, and the model surgery that prunes them."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from snp_engine import api
from snp_engine.activations import following_norms
from snp_engine.costs import count
from snp_engine.groups import UnitGroup, execution_order, find_groups
from snp_engine.surgery import drop_columns, producer_l1, remove_units, weight_taps, write_weight_taps
from tests.engine.helpers import demo_model, outputs


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
    ).eval()


def _torchvision(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10, **kwargs).eval()


def _resnet_blocks(layers: list[int]) -> list[str]:
    return [f"layer{i + 1}.{j}" for i, n in enumerate(layers) for j in range(n)]


BUILDERS = {
    "demo-vgg": (lambda: demo_model("demo-vgg"), (1, 8, 8)),
    "demo-resnet": (lambda: demo_model("demo-resnet"), (1, 8, 8)),
    "mlp": (_mlp, (1, 8, 8)),
    "resnet18": (lambda: _torchvision("resnet18"), (3, 32, 32)),
    "mobilenet_v2": (lambda: _torchvision("mobilenet_v2"), (3, 32, 32)),
    "vgg11_bn": (lambda: _torchvision("vgg11_bn"), (3, 32, 32)),
    "vgg16": (lambda: _torchvision("vgg16"), (3, 32, 32)),
    "resnet50": (lambda: _torchvision("resnet50"), (3, 32, 32)),
    "vit_b_16": (lambda: _torchvision("vit_b_16", image_size=32), (3, 32, 32)),
}

# name -> (consumer, layout) of every expected group
EXPECTED_GROUPS: dict[str, dict[str, tuple[str, str]]] = {
    "demo-vgg": {
        "features.0": ("features.3", "conv"),
        "features.3": ("features.7", "conv"),
        "features.7": ("features.10", "conv"),
        "features.10": ("classifier.1", "flatten"),
        "classifier.1": ("classifier.4", "linear"),
    },
    "demo-resnet": {f"layer{i}.0.conv1": (f"layer{i}.0.conv2", "conv") for i in (1, 2, 3)},
    "mlp": {"1": ("3", "linear"), "3": ("5", "linear")},
    "resnet18": {f"{b}.conv1": (f"{b}.conv2", "conv") for b in _resnet_blocks([2, 2, 2, 2])},
    "resnet50": {
        **{f"{b}.conv1": (f"{b}.conv2", "conv") for b in _resnet_blocks([3, 4, 6, 3])},
        **{f"{b}.conv2": (f"{b}.conv3", "conv") for b in _resnet_blocks([3, 4, 6, 3])},
    },
    "vgg11_bn": {
        **{
            f"features.{a}": (f"features.{b}", "conv")
            for a, b in [(0, 4), (4, 8), (8, 11), (11, 15), (15, 18), (18, 22), (22, 25)]
        },
        "features.25": ("classifier.0", "flatten"),
        "classifier.0": ("classifier.3", "linear"),
        "classifier.3": ("classifier.6", "linear"),
    },
    "vgg16": {
        **{
            f"features.{a}": (f"features.{b}", "conv")
            for a, b in [
                (0, 2),
                (2, 5),
                (5, 7),
                (7, 10),
                (10, 12),
                (12, 14),
                (14, 17),
                (17, 19),
                (19, 21),
                (21, 24),
                (24, 26),
                (26, 28),
            ]
        },
        "features.28": ("classifier.0", "flatten"),
        "classifier.0": ("classifier.3", "linear"),
        "classifier.3": ("classifier.6", "linear"),
    },
    "mobilenet_v2": {
        "features.0.0": ("features.1.conv.1", "conv"),
        "features.1.conv.1": ("features.2.conv.0.0", "conv"),
        **{f"features.{i}.conv.0.0": (f"features.{i}.conv.2", "conv") for i in range(2, 18)},
        "features.17.conv.2": ("features.18.0", "conv"),
        "features.18.0": ("classifier.1", "linear"),
    },
    "vit_b_16": {
        **{
            f"encoder.layers.encoder_layer_{i}.mlp.0": (f"encoder.layers.encoder_layer_{i}.mlp.3", "linear")
            for i in range(12)
        },
        # attention heads: the units are heads, read by the output projection
        **{
            f"encoder.layers.encoder_layer_{i}.self_attention": (
                f"encoder.layers.encoder_layer_{i}.self_attention.out_proj",
                "linear",
            )
            for i in range(12)
        },
    },
}

# excluded name -> start of the reason, with coupled groups left alone (coupled=False)
EXPECTED_EXCLUDED: dict[str, dict[str, str]] = {
    "demo-vgg": {"classifier.4": "network output"},
    "demo-resnet": {
        "fc": "network output",
        "conv1": "coupled across 2 layers",
        "layer2.0.conv2": "coupled across 2 layers",
        "layer3.0.conv2": "coupled across 2 layers",
    },
    "mlp": {"5": "network output"},
    "resnet18": {
        "fc": "network output",
        "conv1": "coupled across 3 layers",
        **{f"layer{i}.0.conv2": "coupled across 3 layers" for i in (2, 3, 4)},
    },
    "resnet50": {
        "fc": "network output",
        "conv1": "read by several layers",
        **{f"layer{i}.0.conv3": "coupled across" for i in (1, 2, 3, 4)},
    },
    "vgg11_bn": {"classifier.6": "network output"},
    "vgg16": {"classifier.6": "network output"},
    "mobilenet_v2": {
        "classifier.1": "network output",
        "features.2.conv.2": "coupled across 2 layers",
        "features.14.conv.2": "coupled across 3 layers",
    },
    "vit_b_16": {
        "heads.head": "network output",
        "conv_proj": "passes through attention, a layer norm",
    },
}


def _stream(stage: int, blocks: int, next_blocks: bool = True, last: str = "conv2") -> tuple[list[str], set[str]]:
    """Readers and producers of a torchvision ResNet stage's residual stream."""
    readers = [f"layer{stage}.{b}.conv1" for b in range(1, blocks)]
    readers += [f"layer{stage + 1}.0.conv1", f"layer{stage + 1}.0.downsample.0"] if next_blocks else ["fc"]
    producers = {f"layer{stage}.{b}.{last}" for b in range(blocks)}
    return readers, producers


# coupled group name -> (readers in execution order, producers), found by default (coupled=True)
EXPECTED_COUPLED: dict[str, dict[str, tuple[list[str], set[str]]]] = {
    "demo-vgg": {},
    "mlp": {},
    "vgg11_bn": {},
    "vgg16": {},
    "vit_b_16": {},
    "demo-resnet": {
        "conv1": (["layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"], {"conv1", "layer1.0.conv2"}),
        "layer2.0.conv2": (
            ["layer3.0.conv1", "layer3.0.downsample.0"],
            {"layer2.0.downsample.0", "layer2.0.conv2"},
        ),
        "layer3.0.conv2": (["fc"], {"layer3.0.downsample.0", "layer3.0.conv2"}),
    },
    "resnet18": {
        "conv1": (
            ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"],
            {"conv1", "layer1.0.conv2", "layer1.1.conv2"},
        ),
        **{
            f"layer{i}.0.conv2": (
                _stream(i, 2, i < 4)[0],
                _stream(i, 2)[1] | {f"layer{i}.0.downsample.0"},
            )
            for i in (2, 3, 4)
        },
    },
    "resnet50": {
        "conv1": (["layer1.0.conv1", "layer1.0.downsample.0"], {"conv1"}),
        **{
            f"layer{i}.0.conv3": (
                _stream(i, n, i < 4)[0],
                _stream(i, n, last="conv3")[1] | {f"layer{i}.0.downsample.0"},
            )
            for i, n in ((1, 3), (2, 4), (3, 6), (4, 3))
        },
    },
    "mobilenet_v2": {
        "features.2.conv.2": (
            ["features.3.conv.0.0", "features.4.conv.0.0"],
            {"features.2.conv.2", "features.3.conv.2"},
        ),
        "features.4.conv.2": (
            ["features.5.conv.0.0", "features.6.conv.0.0", "features.7.conv.0.0"],
            {f"features.{i}.conv.2" for i in (4, 5, 6)},
        ),
        "features.7.conv.2": (
            [f"features.{i}.conv.0.0" for i in (8, 9, 10, 11)],
            {f"features.{i}.conv.2" for i in (7, 8, 9, 10)},
        ),
        "features.11.conv.2": (
            [f"features.{i}.conv.0.0" for i in (12, 13, 14)],
            {f"features.{i}.conv.2" for i in (11, 12, 13)},
        ),
        "features.14.conv.2": (
            [f"features.{i}.conv.0.0" for i in (15, 16, 17)],
            {f"features.{i}.conv.2" for i in (14, 15, 16)},
        ),
    },
}

SLOW = {"vgg16", "vit_b_16", "vgg11_bn"}


def _param(name: str, slow_models=frozenset()):
    return pytest.param(name, marks=pytest.mark.slow) if name in slow_models else name


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("name", [_param(n, {"vgg16"}) for n in BUILDERS])
def test_find_groups(name, coupled):
    build, shape = BUILDERS[name]
    model = build()
    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    groups, excluded = find_groups(model, example, coupled=coupled)
    simple = {g.name: (g.consumer, g.layout) for g in groups if not g.coupled}
    assert simple == EXPECTED_GROUPS[name]
    found = {g.name: ([r.consumer for r in g.readers], set(g.all_producers)) for g in groups if g.coupled}
    assert found == (EXPECTED_COUPLED[name] if coupled else {})
    for g in groups:
        if g.kind == "heads":
            attention = model.get_submodule(g.name)
            assert (g.units, g.block) == (attention.num_heads, attention.head_dim)
            continue
        for producer_name in g.all_producers:
            producer = model.get_submodule(producer_name)
            assert g.units == (producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features)
        for module in g.channelwise:  # BatchNorms and depthwise convs carried along have the group's width
            sub = model.get_submodule(module)
            assert (sub.num_features if hasattr(sub, "num_features") else sub.out_channels) == g.units
    reasons = {e.name: e.reason for e in excluded}
    for excluded_name, reason in EXPECTED_EXCLUDED[name].items():
        if coupled and excluded_name in EXPECTED_COUPLED[name]:
            continue
        assert reasons[excluded_name].startswith(reason), (excluded_name, reasons.get(excluded_name))
    assert not set(reasons) & {g.name for g in groups}, "a group cannot be both prunable and excluded"


def test_batchnorm_free_net_with_one_image_example():
    """A one-image example traces as a batch, also where the net would accept an unbatched input."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    one = find_groups(model, torch.randn(1, 3, 8, 8))
    two = find_groups(model, torch.randn(2, 3, 8, 8))
    assert one == two
    assert {g.name: g.consumer for g in one[0]} == {"0": "1", "1": "3"}


def test_execution_order_is_front_to_back():
    model = demo_model("demo-vgg")
    example = torch.zeros(1, 1, 8, 8)
    groups, _ = find_groups(model, example)
    ordered = execution_order(model, list(reversed(groups)), example)
    assert [g.name for g in ordered] == ["features.0", "features.3", "features.7", "features.10", "classifier.1"]


# ------------------------------------------------------------------------- pruning end to end


@pytest.mark.parametrize("name", [_param(n, SLOW) for n in BUILDERS])
def test_prune_forty_percent_flops(name):
    build, shape = BUILDERS[name]
    model = build()
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, *shape, generator=gen), torch.zeros(16, dtype=torch.long))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = api.analyze(model, data, ordering="variance")
    plan = analysis.plan(flops_reduction=0.4)
    assert plan.flops_reduction >= 0.4 - 1e-9
    assert plan.flops_after < plan.flops_before and plan.params_after < plan.params_before
    run = api.prune(model, analysis, plan, sequential=False)
    pruned = run.model

    x = torch.randn(2, *shape, generator=gen)
    y = outputs(pruned, x)
    assert y.shape == outputs(model, x).shape and torch.isfinite(y).all()
    params, macs = count(pruned, x)
    assert params == pytest.approx(plan.params_after, rel=0.01)
    assert macs == pytest.approx(plan.flops_after, rel=0.01)
    for g in analysis.groups:
        producer = pruned.get_submodule(g.name)
        if g.group.kind == "heads":
            width = producer.num_heads
        else:
            width = producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features
        assert width == plan.keep[g.name] == len(run.record.kept[g.name])
    # the original model is left untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------- surgery parts


def test_weight_taps_layouts():
    conv = nn.Conv2d(4, 3, (3, 2))
    taps = weight_taps(conv, "conv", 4)
    assert taps.shape == (3, 4, 6)
    assert torch.equal(taps[2, 1], conv.weight[2, 1].reshape(-1))

    flat = nn.Linear(4 * 6, 5)  # reads a flattened 4-channel map of 6 positions
    taps = weight_taps(flat, "flatten", 4)
    assert taps.shape == (5, 4, 6)
    assert torch.equal(taps[3, 2, 5], flat.weight[3, 2 * 6 + 5])

    linear = nn.Linear(4, 5)
    taps = weight_taps(linear, "linear", 4)
    assert taps.shape == (5, 4, 1)

    write_weight_taps(flat, torch.arange(5 * 24, dtype=torch.float64).reshape(5, 4, 6))
    assert flat.weight.dtype == torch.float32 and float(flat.weight.detach()[1, 0]) == 24.0


def test_drop_columns_equals_zeroing_the_pruned_units():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    group = UnitGroup("0", "2", 6, "conv")
    kept = torch.tensor([0, 2, 5])
    reference = copy.deepcopy(model)
    dropped = copy.deepcopy(model)
    drop_columns(dropped, group.readers[0], group.units, kept)
    hidden = reference[1](reference[0](x))
    hidden[:, [1, 3, 4]] = 0
    torch.testing.assert_close(outputs(dropped, x), reference[2](hidden).double())
    # physically removing the now unread units changes nothing
    removed = remove_units(copy.deepcopy(dropped), [group], {"0": [1, 3, 4]}, x[:1])
    assert removed[0].out_channels == 3 and removed[2].in_channels == 3
    torch.testing.assert_close(outputs(removed, x), outputs(dropped, x), rtol=1e-5, atol=1e-5)


def test_producer_l1():
    conv = nn.Conv2d(2, 3, 3)
    model = nn.Sequential(conv)
    expected = conv.weight.detach().abs().sum((1, 2, 3)).double()
    torch.testing.assert_close(producer_l1(model, UnitGroup("0", "1", 3, "conv")), expected)


class _TanhBetween(nn.Module):
    """conv2's output reaches the BatchNorm only through tanh and a scale (new tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        z = torch.tanh(y)
        del y  # frees conv2's output, so the next tensor may get its id
        return self.head(self.bn(z * 2))


def test_following_norms_only_directly_after_the_consumer():
    example = torch.randn(1, 3, 8, 8)
    assert following_norms(_TanhBetween().eval(), ["conv2", "head"], example) == {}
    inplace = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.Conv2d(6, 5, 3, bias=False), nn.ReLU(inplace=True), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1)
    ).eval()
    assert following_norms(inplace, ["1", "4"], example) == {}
    direct = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.Conv2d(6, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(inplace=True), nn.Conv2d(5, 2, 1)
    ).eval()
    assert following_norms(direct, ["1", "4"], example) == {"1": "2"}
    resnet = demo_model("demo-resnet")
    consumers = [f"layer{i}.0.conv2" for i in (1, 2, 3)]
    assert following_norms(resnet, consumers, torch.zeros(1, 1, 8, 8)) == {c: c[:-5] + "bn2" for c in consumers}


def test_find_groups_returns_them_front_to_back():
    model = _torchvision("resnet18")
    example = torch.zeros(1, 3, 32, 32)
    groups, _ = find_groups(model, example)
    assert [g.name for g in groups] == [g.name for g in execution_order(model, list(reversed(groups)), example)]
