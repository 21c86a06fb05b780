"""Attention heads as prunable units (snp_engine.heads): the explicit attention equals torch's, heads
are found as groups of whole heads, keep-all is exact, a duplicated head goes with no output change,
physically removed heads equal the functional prune, costs are exact, the head ordering is the
greedy one, statistics files keep heads, and exported ViTs reload with equal logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from snp_engine import api, flops, io
from snp_engine.groups import find_groups
from snp_engine.heads import HeadAttention, explicit_attention
from snp_engine.subspace import OrderingInputs, block_greedy, order_blocks

from .helpers import conditional_covariance, random_covariance, random_metric, relative_error

timm = pytest.importorskip("timm")


def _torchvision_vit(heads: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=heads, hidden_dim=32, mlp_dim=48, num_classes=5
    )
    with torch.no_grad():  # torchvision starts the classifier at zero: every output would be 0
        model.heads.head.weight.normal_(0, 0.2)
    return model.eval()


def _timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, num_heads=4, embed_dim=32, num_classes=5
    ).eval()


BUILDERS = {"torchvision": _torchvision_vit, "timm": _timm_vit}


def _images(count: int = 48, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 3, 16, 16, generator=gen), torch.zeros(count, dtype=torch.long))


def _logits(model: nn.Module, data: TensorDataset) -> torch.Tensor:
    with torch.inference_mode():
        return model(data.tensors[0]).double()


def _head_groups(analysis) -> list:
    return [g for g in analysis.groups if g.group.kind == "heads"]


def _half_pruned(model: nn.Module, analysis, data: TensorDataset):
    """``model`` pruned to half of every group's units (at least one), physically; checked to equal
    the functional prune and to cost exactly what the analysis planned."""
    plan = analysis.plan(keep={g.name: max(1, g.units // 2) for g in analysis.groups})
    physical = api.prune(model, analysis, plan, data=data)
    functional = api.prune(model, analysis, plan, data=data, physical=False)
    assert relative_error(_logits(physical.model, data), _logits(functional.model, data)) < 1e-5
    assert analysis.cost(plan.keep) == flops.count(physical.model, data.tensors[0][:1])
    return physical


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_the_explicit_attention_computes_what_multihead_attention_computes(batch_first, need_weights):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    x = torch.randn(2, 7, 12) if batch_first else torch.randn(7, 2, 12)
    explicit = HeadAttention.sharing(attention)
    with torch.no_grad():
        expected, expected_weights = attention(x, x, x, need_weights=need_weights)
        got, weights = explicit(x, x, x, need_weights=need_weights)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (weights is None) == (expected_weights is None)
    if need_weights:
        assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert explicit.in_proj_weight is attention.in_proj_weight and explicit.out_proj is attention.out_proj
    assert set(HeadAttention(12, 3, 4).state_dict()) == set(attention.state_dict())


def test_explicit_attention_swaps_only_inside_the_block():
    model = _torchvision_vit()
    name = "encoder.layers.encoder_layer_0.self_attention"
    seen = []
    model.get_submodule(name + ".out_proj").register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    x = _images(2).tensors[0]
    with torch.no_grad():
        dense = model(x)
        assert not seen  # torch's attention never calls its output projection as a module
        with explicit_attention(model):
            assert isinstance(model.get_submodule(name), HeadAttention)
            explicit = model(x)
    assert isinstance(model.get_submodule(name), nn.MultiheadAttention)
    assert len(seen) == 1 and seen[0].shape == (2, 17, 32)
    assert torch.allclose(explicit, dense, atol=1e-5)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_heads_are_groups_of_whole_heads_read_by_the_output_projection(family):
    model = BUILDERS[family]()
    groups, excluded = find_groups(model, torch.zeros(1, 3, 16, 16))
    heads = [g for g in groups if g.kind == "heads"]
    assert len(heads) == 2 and len([g for g in groups if g.kind == "channels"]) == 2
    for g in heads:
        attention = model.get_submodule(g.name)
        assert (g.units, g.block, g.channels) == (4, 8, 32)
        assert g.consumer == g.name + (".proj" if family == "timm" else ".out_proj")
        assert attention.num_heads == 4
    # timm's fused q/k/v layers are covered by the heads, no longer listed as excluded
    assert not [e for e in excluded if e.name.endswith(".qkv")]
    # front to back: layer 0's heads come before layer 1's MLP
    names = [g.name for g in groups]
    assert names.index(heads[0].name) < names.index(heads[1].name)


def test_a_single_head_layer_is_excluded_with_the_reason():
    model = _torchvision_vit(heads=1)
    groups, excluded = find_groups(model, torch.zeros(1, 3, 16, 16))
    assert not [g for g in groups if g.kind == "heads"]
    reasons = {e.name: e.reason for e in excluded}
    assert reasons["encoder.layers.encoder_layer_0.self_attention"] == "attention with a single head"


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("sequential", [False, True])
def test_keeping_every_head_is_exact(family, sequential):
    model, data = BUILDERS[family](), _images()
    analysis = api.analyze(model, data)
    run = api.prune(model, analysis, analysis.plan(keep=dict(analysis.units)), data=data, sequential=sequential)
    assert torch.equal(_logits(run.model, data), _logits(model, data))


def _duplicate_head(attention: nn.MultiheadAttention, source: int, copy_to: int) -> None:
    """Make head ``copy_to`` compute exactly what head ``source`` computes (q, k, v rows copied)."""
    width, embed = attention.head_dim, attention.embed_dim
    with torch.no_grad():
        for part in range(3):
            rows = part * embed
            attention.in_proj_weight[rows + copy_to * width : rows + (copy_to + 1) * width] = attention.in_proj_weight[
                rows + source * width : rows + (source + 1) * width
            ]
            attention.in_proj_bias[rows + copy_to * width : rows + (copy_to + 1) * width] = attention.in_proj_bias[
                rows + source * width : rows + (source + 1) * width
            ]


def test_a_duplicated_head_is_removed_with_no_output_change():
    model, data = _torchvision_vit(), _images()
    name = "encoder.layers.encoder_layer_0.self_attention"
    _duplicate_head(model.get_submodule(name), source=1, copy_to=3)
    analysis = api.analyze(model, data)
    group = analysis.group(name)
    assert sorted(group.order[:3].tolist()) in ([0, 1, 2], [0, 2, 3])  # never both copies among 3
    assert group.curve[3] == pytest.approx(1.0, abs=1e-6)
    keep = {**analysis.units, name: 3}
    run = api.prune(model, analysis, analysis.plan(keep=keep), sequential=False)
    assert run.model.get_submodule(name).num_heads == 3
    assert relative_error(_logits(run.model, data), _logits(model, data)) < 1e-5


@pytest.mark.parametrize("family", list(BUILDERS))
def test_removed_heads_equal_the_functional_prune_and_are_costed_exactly(family):
    model, data = BUILDERS[family](), _images()
    analysis = api.analyze(model, data)
    physical = _half_pruned(model, analysis, data)
    plan = analysis.plan(keep={g.name: max(1, g.units // 2) for g in analysis.groups})
    assert (plan.params_after, plan.flops_after) == analysis.cost(plan.keep)
    for g in _head_groups(analysis):
        attention = physical.model.get_submodule(g.name)
        assert attention.num_heads == 2 and attention.head_dim == 8
        assert physical.record.kept[g.name] == plan.kept[g.name]
    # a pruned network is pruned again: its heads are found on the smaller layers
    again = api.analyze(physical.model, data)
    assert {g.name: g.units for g in _head_groups(again)} == {g.name: 2 for g in _head_groups(analysis)}
    smaller = api.prune(physical.model, again, again.plan(keep={g.name: 1 for g in _head_groups(again)}), data=data)
    assert all(smaller.model.get_submodule(g.name).num_heads == 1 for g in _head_groups(again))


def test_compensation_beats_dropping_heads():
    model, data = _torchvision_vit(), _images(96)
    analysis = api.analyze(model, data)
    heads = {g.name: 2 for g in _head_groups(analysis)}
    plan = analysis.plan(keep=heads)
    dense = _logits(model, data)
    errors = {
        how: relative_error(_logits(api.prune(model, analysis, plan, data=data, **kw).model, data), dense)
        for how, kw in {"none": {"compensate": False}, "one-shot": {"sequential": False}, "sequential": {}}.items()
    }
    assert errors["one-shot"] < errors["none"] and errors["sequential"] < errors["none"]


def test_block_greedy_takes_the_head_that_explains_most_at_every_step():
    cov, metric = random_covariance(12, seed=3).double(), random_metric(12, seed=3).double()
    order = block_greedy(cov, metric, 3).tolist()
    assert sorted(order) == [0, 1, 2, 3]

    def lost(blocks) -> float:
        channels = [c for b in blocks for c in range(3 * b, 3 * b + 3)]
        return float(np.trace(metric.numpy() @ conditional_covariance(cov.numpy(), channels)))

    for step in range(4):
        best = min((b for b in range(4) if b not in order[:step]), key=lambda b: lost([*order[:step], b]))
        assert order[step] == best
    # the best pair of heads by brute force explains no less than the greedy pair
    best_pair = min(itertools.combinations(range(4), 2), key=lost)
    assert lost(best_pair) <= lost(order[:2]) + 1e-12


@pytest.mark.parametrize("ordering", ["output", "greedy", "variance", "zca", "l1", "identity", "random"])
def test_every_ordering_ranks_whole_heads(ordering):
    cov = random_covariance(12, seed=1).double()
    inputs = OrderingInputs(cov, random_metric(12, seed=1).double(), torch.arange(4, dtype=torch.double), seed=2)
    order = order_blocks(ordering, inputs, 3)
    assert sorted(order.tolist()) == [0, 1, 2, 3]


def test_a_statistics_file_keeps_the_heads(tmp_path):
    model, data = _timm_vit(), _images()
    analysis = api.analyze(model, data)
    analysis.save(tmp_path / "vit.snpstats")
    loaded = api.Analysis.load(tmp_path / "vit.snpstats")
    for before, after in zip(analysis.groups, loaded.groups, strict=True):
        assert (after.group.kind, after.group.block, after.units) == (
            before.group.kind,
            before.group.block,
            before.units,
        )
        assert torch.equal(after.order, before.order)
        assert np.allclose(after.curve, before.curve)
    plan = loaded.plan(flops_reduction=0.3)
    assert plan.keep == analysis.plan(flops_reduction=0.3).keep


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, kwargs, shape",
    [
        ("timm:vit_tiny_patch16_224", {}, (3, 224, 224)),
        ("torchvision:vit_b_16", {"image_size": 32}, (3, 32, 32)),
    ],
)
def test_an_exported_vit_with_fewer_heads_reloads_with_equal_logits(arch, kwargs, shape, tmp_path):
    from snp_engine.models import load_model

    torch.manual_seed(0)
    if arch.startswith("timm:"):
        model = load_model(arch).model
    else:
        model = torchvision.models.get_model(arch.split(":")[1], weights=None, num_classes=10, **kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, *shape, generator=gen), torch.zeros(8, dtype=torch.long))
    analysis = api.analyze(model, data, max_positions=16)
    keep = {g.name: g.units // 2 for g in _head_groups(analysis)}
    run = api.prune(model, analysis, analysis.plan(keep=keep), sequential=False)
    classes = 1000 if arch.startswith("timm:") else 10
    path = io.export_model(run, tmp_path / "vit.safetensors", arch=arch, num_classes=classes, input_shape=shape)
    loaded = io.load_exported(path).model
    assert torch.equal(_logits(loaded, data), _logits(run.model, data))
    for name, k in keep.items():
        assert loaded.get_submodule(name).num_heads == k


def test_a_global_rounding_leaves_head_counts_free():
    model, data = _torchvision_vit(), _images()
    analysis = api.analyze(model, data)
    plan = analysis.plan(flops_reduction=0.5, round_to=8)
    heads = [plan.keep[g.name] for g in _head_groups(analysis)]
    channels = [plan.keep[g.name] for g in analysis.groups if g.group.kind == "channels"]
    assert all(k % 8 == 0 or k == 48 for k in channels)
    assert min(heads) < 4  # with rounding to 8 a 4-head layer could only keep all its heads
    assert plan.flops_reduction >= 0.5 - 1e-9


def test_a_flops_plan_leaves_no_unit_that_still_fits_in_the_budget():
    model, data = _torchvision_vit(), _images()
    analysis = api.analyze(model, data)
    for target in (0.2, 0.3, 0.4, 0.5):
        plan = analysis.plan(flops_reduction=target)
        budget = analysis.cost()[1] * (1 - target)
        fits = [
            name
            for name, k in plan.keep.items()
            if k < analysis.units[name] and analysis.cost({**plan.keep, name: k + 1})[1] <= budget
        ]
        assert not fits, f"-{target:.0%}: plan at -{plan.flops_reduction:.1%}, {fits} could keep one more unit"


# ------------------------------------------------------------------------------------------ Swin


def _swin() -> nn.Module:
    """A two-stage Swin on 32x32 inputs: 8x8 then 4x4 maps in windows of 4, every second block shifted."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=5
    )
    with torch.no_grad():
        model.head.weight.normal_(0, 0.2)
    return model.eval()


def _swin_images(count: int = 32) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(count, 3, 32, 32, generator=gen), torch.zeros(count, dtype=torch.long))


@pytest.mark.parametrize("size", [8, 6])  # whole windows, and a map padded to whole windows
@pytest.mark.parametrize("shift", [0, 2])
def test_the_explicit_window_attention_computes_what_swin_computes(size, shift):
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    from snp_engine.heads import WindowHeadAttention

    torch.manual_seed(0)
    attention = ShiftedWindowAttention(12, [4, 4], [shift, shift], 3).eval()
    x = torch.randn(2, size, size, 12)
    explicit = WindowHeadAttention.sharing(attention)
    with torch.no_grad():
        assert torch.allclose(explicit(x), attention(x), atol=1e-6)
    fresh = WindowHeadAttention(12, [4, 4], [shift, shift], 3, 4)
    assert set(fresh.state_dict()) == set(attention.state_dict())
    assert torch.equal(fresh.relative_position_index, attention.relative_position_index)


@pytest.mark.parametrize("shift", [0, 2])
def test_the_explicit_window_attention_computes_what_swin_v2_computes(shift):
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    from snp_engine.heads import WindowHeadAttentionV2

    torch.manual_seed(0)
    attention = ShiftedWindowAttentionV2(12, [4, 4], [shift, shift], 3).eval()
    with torch.no_grad():
        attention.qkv.bias.normal_()  # keys ignore their bias in Swin V2: a trained one need not be zero
    x = torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        assert torch.allclose(WindowHeadAttentionV2.sharing(attention)(x), attention(x), atol=1e-5)


def _swin_v2() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=5,
        block=SwinTransformerBlockV2,
    )
    with torch.no_grad():
        model.head.weight.normal_(0, 0.2)
    return model.eval()


def test_swin_v2_heads_are_pruned_and_costed_exactly():
    model, data = _swin_v2(), _swin_images()
    analysis = api.analyze(model, data)
    assert sum(g.group.kind == "heads" for g in analysis.groups) == 4
    assert not [e for e in analysis.excluded if "cpb_mlp.2" in e.name]  # its outputs are the heads' biases
    physical = _half_pruned(model, analysis, data)
    attention = physical.model.get_submodule("features.3.0.attn")
    assert attention.num_heads == 2 and attention.logit_scale.shape[0] == 2 and attention.cpb_mlp[2].out_features == 2


def test_swin_is_traced_and_its_heads_and_mlps_are_groups():
    model = _swin()
    groups, excluded = find_groups(model, torch.zeros(1, 3, 32, 32))
    heads = {g.name: (g.units, g.block) for g in groups if g.kind == "heads"}
    assert heads == {
        "features.1.0.attn": (2, 8),
        "features.1.1.attn": (2, 8),
        "features.3.0.attn": (4, 8),
        "features.3.1.attn": (4, 8),
    }
    assert {g.name for g in groups if g.kind == "channels"} == {
        f"features.{s}.{b}.mlp.0" for s in (1, 3) for b in (0, 1)
    }
    assert not [e for e in excluded if e.name.endswith(".qkv")]


def test_swin_keep_all_is_exact_and_removed_heads_are_costed_exactly():
    model, data = _swin(), _swin_images()
    analysis = api.analyze(model, data)
    run = api.prune(model, analysis, analysis.plan(keep=dict(analysis.units)), data=data)
    assert torch.equal(_logits(run.model, data), _logits(model, data))
    physical = _half_pruned(model, analysis, data)
    attention = physical.model.get_submodule("features.3.0.attn")
    assert attention.num_heads == 2 and attention.relative_position_bias_table.shape[1] == 2


@pytest.mark.slow
def test_an_exported_swin_with_fewer_heads_reloads_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 64, 64, generator=gen), torch.zeros(4, dtype=torch.long))
    analysis = api.analyze(model, data, max_positions=8, ordering="variance")
    keep = {g.name: g.units // 2 for g in _head_groups(analysis)}
    run = api.prune(model, analysis, analysis.plan(keep=keep), sequential=False)
    path = io.export_model(
        run, tmp_path / "swin.safetensors", arch="torchvision:swin_t", num_classes=10, input_shape=(3, 64, 64)
    )
    loaded = io.load_exported(path).model
    assert torch.equal(_logits(loaded, data), _logits(run.model, data))
    assert loaded.get_submodule("features.7.1.attn").num_heads == 12


def _timm_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        num_classes=5,
        img_size=32,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 4),
    ).eval()


def test_timm_swin_heads_are_pruned_in_place_and_costed_exactly():
    model, data = _timm_swin(), _swin_images()
    analysis = api.analyze(model, data)
    heads = {g.name: (g.units, g.group.block) for g in _head_groups(analysis)}
    assert heads == {f"layers.{s}.blocks.{b}.attn": ((2, 8) if s == 0 else (4, 8)) for s in (0, 1) for b in (0, 1)}
    keep_all = api.prune(model, analysis, analysis.plan(keep=dict(analysis.units)), data=data)
    assert torch.equal(_logits(keep_all.model, data), _logits(model, data))
    physical = _half_pruned(model, analysis, data)
    attention = physical.model.get_submodule("layers.1.blocks.0.attn")
    assert type(attention).__name__ == "WindowAttention"  # timm's own module, smaller
    assert attention.num_heads == 2 and attention.relative_position_bias_table.shape[1] == 2


@pytest.mark.slow
def test_an_exported_timm_swin_with_fewer_heads_reloads_with_equal_logits(tmp_path):
    from snp_engine.models import load_model

    loaded = load_model("timm:swin_tiny_patch4_window7_224")
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4, *loaded.input_shape, generator=gen), torch.zeros(4, dtype=torch.long))
    analysis = api.analyze(loaded.model, data, max_positions=8, ordering="variance")
    keep = {g.name: g.units // 2 for g in _head_groups(analysis)}
    run = api.prune(loaded.model, analysis, analysis.plan(keep=keep), sequential=False)
    path = io.export_model(
        run, tmp_path / "swin.safetensors", arch=loaded.arch, num_classes=1000, input_shape=loaded.input_shape
    )
    assert torch.equal(_logits(io.load_exported(path).model, data), _logits(run.model, data))
