"""MaxViT (torchvision's ``MaxVit``) on a small configuration: its groups are found in bounded
time (the partition attention in its explicit form), its heads are pruned with the maths of
:mod:`snp_engine.partition_attention`, its residual streams as layer-norm streams
(:mod:`snp_engine.layernorm_streams`), keep-all is exact and an export reloads with equal logits.
The full ``maxvit_t`` (224x224, the smallest input its partition size 7 allows) is in
test_zoo.py (slow) and docs/benchmarks.md §9."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision.models.maxvit import MaxVit, RelativePositionalMultiHeadAttention

from snp_engine import api, architectures, io
from snp_engine.groups import find_groups
from snp_engine.heads import attention_layers, remove_heads
from snp_engine.partition_attention import PartitionHeadAttention, traceable_partition_attention

SIDE = 32  # stem /2, two blocks /2 each: 8x8 and 4x4 maps, both divisible by the partition size 2
ARCH = "test-maxvit"


def small_maxvit(num_classes: int = 5) -> MaxVit:
    torch.manual_seed(0)
    model = MaxVit(
        input_size=(SIDE, SIDE),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 2],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=num_classes,
    )
    with torch.no_grad():  # torchvision starts the bias tables near zero: make the heads' positions matter
        for module in model.modules():
            if isinstance(module, RelativePositionalMultiHeadAttention):
                module.relative_position_bias_table.normal_()
    return model.eval()


@pytest.fixture
def family(monkeypatch):
    """A family that rebuilds :func:`small_maxvit`, so that its exports can be reloaded."""

    def builder(arch, path):
        return lambda num_classes=5: small_maxvit(num_classes)

    family = architectures.ArchitectureFamily(ARCH, lambda arch: arch == ARCH, builder)
    monkeypatch.setitem(architectures.ARCHITECTURE_FAMILIES, ARCH, family)
    return family


def _attention(model: MaxVit) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RelativePositionalMultiHeadAttention)]


def test_explicit_form_computes_torchvision_attention():
    model = small_maxvit()
    tokens = torch.randn(2, 3, 4, 16)
    for _, module in _attention(model)[-1:]:
        explicit = PartitionHeadAttention.sharing(module)
        with torch.no_grad():
            assert torch.allclose(explicit(tokens), module(tokens), atol=1e-6)
        built = PartitionHeadAttention(16, module.head_dim, module.n_heads, module.max_seq_len)
        assert torch.equal(built.relative_position_index, module.relative_position_index)
        built.load_state_dict(module.state_dict())  # the same names, so state dicts are interchangeable
        with torch.no_grad():
            assert torch.allclose(built(tokens), module(tokens), atol=1e-6)


def test_the_swap_is_undone():
    model = small_maxvit()
    before = dict(model.named_modules())
    with traceable_partition_attention(model):
        assert all(
            isinstance(m, PartitionHeadAttention) for n, m in model.named_modules() if n.endswith("attn_layer.1")
        )
    assert dict(model.named_modules()) == before


def test_groups_are_found_quickly():
    model = small_maxvit()
    start = time.perf_counter()
    groups, excluded = find_groups(model, torch.randn(1, 3, SIDE, SIDE))
    assert time.perf_counter() - start < 10  # torchvision's own form never finished (> 120 s)
    heads = {g.name: g for g in groups if g.kind == "heads"}
    assert sorted(heads) == sorted(name for name, _ in _attention(model))
    for name, group in heads.items():
        assert group.consumer == f"{name}.merge"
        assert group.block == 4
        assert group.units == model.get_submodule(name).n_heads
    names = {g.name for g in groups}
    assert "stem.1.0" in names  # the stem's output, read by the first block's projection and MBConv
    for block in ("blocks.0.layers.0", "blocks.1.layers.0", "blocks.1.layers.1"):
        assert f"{block}.layers.MBconv.layers.conv_a.0" in names
        assert f"{block}.layers.MBconv.layers.squeeze_excitation.fc1" in names
        assert f"{block}.layers.window_attention.mlp_layer.1" in names
        assert f"{block}.layers.grid_attention.mlp_layer.1" in names
    assert [(e.name, e.reason) for e in excluded] == [("classifier.5", "network output")]
    # each stage's residual stream: produced by the MBConvs, the attention's merge and the MLPs, read
    # through layer norms by to_qkv and the MLPs (and by the next stage's MBConv, the classifier)
    stream = next(g for g in groups if g.name == "blocks.1.layers.0.layers.MBconv.proj.1")
    assert stream.units == 16
    for layer in ("blocks.1.layers.0", "blocks.1.layers.1"):
        for part in ("window_attention", "grid_attention"):
            assert f"{layer}.layers.{part}.attn_layer.1.merge" in stream.all_producers
            assert f"{layer}.layers.{part}.mlp_layer.3" in stream.all_producers
            assert f"{layer}.layers.{part}.attn_layer.1.to_qkv" in {r.consumer for r in stream.readers}
            assert f"{layer}.layers.{part}.attn_layer.0" in stream.channelwise  # the layer norms
    assert "classifier.3" in {r.consumer for r in stream.readers}


def test_removing_heads_leaves_the_kept_heads_outputs():
    """y = W_m [o_1; …; o_H] + b_m: without head h the output is the dense one with h's columns of
    W_m zeroed, and the pruned layer holds h's rows, table column and columns no more."""
    model = small_maxvit()
    name, module = _attention(model)[-1]
    tokens = torch.randn(2, 3, 4, 16)
    with torch.no_grad():
        zeroed = PartitionHeadAttention.sharing(module)
        saved = module.merge.weight.clone()
        module.merge.weight[:, 4:8] = 0  # head 1 of 4
        expected = zeroed(tokens)
        module.merge.weight.copy_(saved)
    remove_heads(model, name, [1])
    pruned = model.get_submodule(name)
    assert isinstance(pruned, PartitionHeadAttention) and pruned.n_heads == 3
    assert pruned.to_qkv.out_features == 36 and pruned.merge.in_features == 12
    assert pruned.relative_position_bias_table.shape[1] == 3
    with torch.no_grad():
        assert torch.allclose(pruned(tokens), expected, atol=1e-6)
    assert [layer.heads for layer in attention_layers(model) if layer.name == name] == [3]


def _analysis(model):
    images = torch.randn(8, 3, SIDE, SIDE)
    data = TensorDataset(images, torch.zeros(8, dtype=torch.long))
    return images, api.analyze(model, data, batch_size=8, max_positions=64)


def test_keep_all_is_exact_and_a_pruned_export_reloads(family, tmp_path):
    torch.set_num_threads(1)
    model = small_maxvit()
    images, analysis = _analysis(model)
    with torch.no_grad():
        dense = model(images)
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
    with torch.no_grad():
        assert torch.equal(exact.model(images), dense)
    heads = [g.name for g in analysis.groups if g.group.kind == "heads"]
    plan = analysis.plan(keep={heads[0]: 1, heads[-1]: 2})
    run = api.prune(model, analysis, plan, sequential=False)
    assert isinstance(run.model.get_submodule(heads[0]), PartitionHeadAttention)
    assert run.model.get_submodule(heads[-1]).n_heads == 2
    path = io.export_model(run, tmp_path / "m.safetensors", arch=ARCH, num_classes=5, input_shape=(3, SIDE, SIDE))
    again = io.load_exported(path).model
    with torch.no_grad():
        assert torch.equal(again(images), run.model(images))
    assert again.get_submodule(heads[-1]).n_heads == 2


def test_a_flops_plan_prunes_exports_and_reloads(family, tmp_path):
    torch.set_num_threads(1)
    model = small_maxvit()
    images, analysis = _analysis(model)
    plan = analysis.plan(flops_reduction=0.3)
    assert plan.flops_reduction == pytest.approx(0.3, abs=0.02)
    run = api.prune(model, analysis, plan, sequential=False)
    path = io.export_model(run, tmp_path / "m.safetensors", arch=ARCH, num_classes=5, input_shape=(3, SIDE, SIDE))
    again = io.load_exported(path).model
    with torch.no_grad():
        assert torch.equal(again(images), run.model(images))
    assert sum(p.numel() for p in again.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_narrower_stream_runs_its_attention_in_the_explicit_form(family, tmp_path):
    """Stream channels removed: every attention on the stream reads fewer than H·d channels, which
    torchvision's forward cannot reshape; those layers become PartitionHeadAttention (c = D^{-1/2}
    of the dense width kept), sequential calibration refits the readers, and the export reloads."""
    torch.set_num_threads(1)
    model = small_maxvit()
    images = torch.randn(32, 3, SIDE, SIDE)
    data = TensorDataset(images, torch.zeros(32, dtype=torch.long))
    analysis = api.analyze(model, data, batch_size=16, max_positions=64)
    stream = "blocks.1.layers.0.layers.MBconv.proj.1"
    run = api.prune(model, analysis, analysis.plan(keep={stream: 14}), data=data, batch_size=16)
    attention = [m for n, m in run.model.named_modules() if n.startswith("blocks.1.") and n.endswith("attn_layer.1")]
    assert len(attention) == 4 and all(isinstance(m, PartitionHeadAttention) for m in attention)
    assert all(m.to_qkv.in_features == 14 and m.scale_factor == 16**-0.5 for m in attention)
    with torch.no_grad():
        dense, pruned = model(images), run.model(images)
    assert float((pruned - dense).norm() / dense.norm()) < 0.1
    path = io.export_model(run, tmp_path / "m.safetensors", arch=ARCH, num_classes=5, input_shape=(3, SIDE, SIDE))
    again = io.load_exported(path).model
    with torch.no_grad():
        assert torch.equal(again(images), pruned)
