"""MACs of a forward pass are right for conv, linear and attention layers (ViT, Swin, ResNet).

Each model is checked against a per-module count written here from the layers' shapes (not from
torch's FLOP counter) and, for the torchvision models at 224x224, against torchvision's documented
GFLOPS (which are MACs).
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from snp_engine import costs, flops
from snp_engine.groups import find_groups
from snp_engine.heads import HeadAttention
from snp_engine.surgery import remove_units

# torchvision's documented GFLOPS at 224x224 (model docs / weights' meta "_ops")
DOCUMENTED = {"vit_b_16": 17.56e9, "swin_t": 4.49e9, "resnet18": 1.81e9}


def _mha_macs(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> float:
    """Input projections Lq·E² + Lk·kdim·E + Lk·vdim·E, the two products Q Kᵀ and A V (2·Lq·Lk·E
    over all heads) and the output projection Lq·E², for one sample."""
    seq_dim = 1 if module.batch_first and query.dim() == 3 else 0
    lq, lk, e = query.shape[seq_dim], key.shape[seq_dim], module.embed_dim
    return lq * e * e + lk * module.kdim * e + lk * module.vdim * e + 2 * lq * lk * e + lq * e * e


def _window_attention_macs(module: ShiftedWindowAttention, x: torch.Tensor) -> float:
    """On the input padded to whole windows (Hp·Wp tokens of C channels, N tokens a window): qkv
    projection Hp·Wp·C·3C, Q Kᵀ and A V 2·Hp·Wp·N·C, output projection Hp·Wp·C², for one sample."""
    _, h, w, c = x.shape
    wh, ww = module.window_size
    tokens = math.ceil(h / wh) * wh * math.ceil(w / ww) * ww
    return tokens * c * 3 * c + 2 * tokens * (wh * ww) * c + tokens * c * c


def reference_macs(model: nn.Module, example: torch.Tensor) -> float:
    """Σ over modules of their MACs for one sample, from shapes seen by forward hooks:
    Conv2d out_elems·(C_in/groups)·kh·kw, Linear out_elems·in_features, nn.MultiheadAttention and
    Swin's window attention by the formulas above (their projections run as F.linear, so no
    Linear hook fires for them), snp's pruned HeadAttention likewise but for its output
    projection (a Linear called as a module), BatchNorm / LayerNorm / activations / pooling 0.

    The pass runs in training mode, where no module takes a fused inference path that would skip
    the hooks of its submodules."""
    total = 0.0
    attention = (nn.MultiheadAttention, ShiftedWindowAttention)

    def hook(module, args, kwargs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features
        elif isinstance(module, nn.MultiheadAttention):
            query = kwargs.get("query", args[0] if args else None)
            key = kwargs.get("key", args[1] if len(args) > 1 else None)
            total += _mha_macs(module, query, key)
        elif isinstance(module, HeadAttention):  # a pruned layer: its output projection is a Linear hooked above
            query = args[0]
            tokens, inner = query.shape[1], module.num_heads * module.head_dim
            total += tokens * 3 * inner * module.embed_dim + 2 * tokens * tokens * inner
        elif isinstance(module, ShiftedWindowAttention):
            assert not isinstance(module, ShiftedWindowAttentionV2)  # V2 adds cosine attention
            total += _window_attention_macs(module, args[0])

    handles = [
        m.register_forward_hook(hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, HeadAttention, *attention))
    ]
    was_training = model.training
    try:
        model.train()
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def plain_counter_macs(model: nn.Module, example: torch.Tensor) -> float:
    """What torch's FlopCounterMode alone reports under inference_mode (the count before the fix)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(example[:1])
    return counter.get_total_flops() / 2


@functools.cache
def _torchvision(name: str) -> nn.Module:
    """A randomly initialised torchvision model (built once: vit_b_16 takes a second to initialise)."""
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _image(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_torchvision_models_at_224_match_the_documented_number_and_the_formula(name):
    model = _torchvision(name)
    example = _image(224)
    macs = flops.total_macs(model, example)
    assert macs == pytest.approx(DOCUMENTED[name], rel=0.01)
    assert macs == pytest.approx(reference_macs(model, example), rel=1e-9)
    assert costs.total_macs(model, example) == macs
    assert (
        costs.count(model, example)
        == flops.count(model, example)
        == (
            sum(p.numel() for p in model.parameters()),
            macs,
        )
    )


def test_vit_b_16_was_undercounted_by_the_plain_counter():
    """The fused attention path hid the projections and attention products from the counter."""
    model = _torchvision("vit_b_16")
    example = _image(224, batch=1)
    assert plain_counter_macs(model, example) < 0.7 * flops.total_macs(model, example)


def _small_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()


def test_small_vit_matches_the_formula():
    model = _small_vit()
    example = _image(32)
    macs = flops.total_macs(model, example)
    expected = reference_macs(model, example)
    assert macs == pytest.approx(expected, rel=1e-9)
    # by hand: 65 tokens (64 patches + class token) of width 32, 2 blocks, head 32 -> 10
    tokens, width = 65, 32
    patch = 64 * width * 3 * 4 * 4
    block = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * 64
    assert expected == patch + 2 * block + width * 10


def test_swin_t_at_a_small_input_with_padded_windows_matches_the_formula():
    """At 64x64 the stages are 16, 8, 4 and 2 tokens wide: padded to whole 7x7 windows."""
    model = _torchvision("swin_t")
    example = _image(64)
    assert flops.total_macs(model, example) == pytest.approx(reference_macs(model, example), rel=1e-9)


class _SelfAttention(nn.Module):
    """A Linear, an nn.MultiheadAttention in the form its fused fast path accepts, a Linear."""

    def __init__(self, dim: int = 16, heads: int = 4, need_weights: bool = False):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 3)
        self.need_weights = need_weights

    def forward(self, x):
        x = self.embed(x)
        x, _ = self.attn(x, x, x, need_weights=self.need_weights)
        return self.head(x)


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "attention-weights"])
def test_multihead_attention_on_its_fast_path_is_counted(need_weights):
    model = _SelfAttention(need_weights=need_weights).eval()
    example = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0))
    expected = 10 * 8 * 16 + (4 * 10 * 16 * 16 + 2 * 10 * 10 * 16) + 10 * 16 * 3
    assert reference_macs(model, example) == expected
    assert torch.backends.mha.get_fastpath_enabled()
    assert plain_counter_macs(model, example) < expected  # the fast path would be taken
    assert flops.total_macs(model, example) == expected


def test_transformer_encoder_on_its_fast_path_is_counted():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2).eval()
    example = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(0))
    per_layer = 4 * 10 * 16 * 16 + 2 * 10 * 10 * 16 + 2 * 10 * 16 * 32
    assert reference_macs(model, example) == 2 * per_layer
    assert plain_counter_macs(model, example) < 2 * per_layer
    assert flops.total_macs(model, example) == 2 * per_layer


class _ScaledDotProduct(nn.Module):
    """Attention of L = 9 queries over S = 7 keys, query / key width 6 and value width ``ev``."""

    def __init__(self, ev: int):
        super().__init__()
        self.ev = ev

    def forward(self, x):
        q, k, v = x[:, :, :, :6], x[:, :, :7, 6:12], x[:, :, :7, 12 : 12 + self.ev]
        return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())


@pytest.mark.parametrize("ev", [6, 4], ids=["fused-kernel", "math-path"])
def test_scaled_dot_product_attention_is_counted(ev):
    """N·L·S·(E + Ev) with N = 3 heads per sample. On the CPU equal widths run a fused kernel the
    plain counter has no formula for; unequal widths run as two counted matmuls."""
    example = torch.randn(2, 3, 9, 18, generator=torch.Generator().manual_seed(0))
    expected = 3 * 9 * 7 * (6 + ev)
    assert flops.total_macs(_ScaledDotProduct(ev), example) == expected
    assert flops.attention_macs((3, 9, 6), (3, 7, 6), (3, 7, ev)) == expected
    if ev == 6:
        assert plain_counter_macs(_ScaledDotProduct(ev), example) == 0


def test_batchnorm_costs_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2))
    example = torch.randn(2, 3, 8, 8)
    expected = 4 * 6 * 6 * 3 * 9 + 4 * 4 * 4 * 2 * 9
    assert reference_macs(model, example) == expected
    assert flops.total_macs(model, example) == expected


@pytest.mark.parametrize("setting", [True, False])
def test_fast_path_setting_and_training_flags_are_restored(setting):
    model = _SelfAttention()
    model.train()
    model.head.eval()
    example = torch.randn(1, 10, 8)
    previous = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(setting)
        flops.total_macs(model, example)
        assert torch.backends.mha.get_fastpath_enabled() is setting
        assert model.training and model.attn.training and not model.head.training

        def fail(*_args):
            assert not torch.backends.mha.get_fastpath_enabled()  # off while counting
            raise RuntimeError("boom")

        model.head.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="boom"):
            flops.total_macs(model, example)
        assert torch.backends.mha.get_fastpath_enabled() is setting
        assert model.training and model.attn.training and not model.head.training
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def test_cost_model_counts_attention_by_heads_and_costs_a_pruned_vit_right():
    """For a ViT every attention MAC belongs to a head group's layers: the q/k/v projection (run as
    F.linear on a bare parameter), the attention products and the output projection, each scaling
    with the kept heads; nothing is left as a constant, and the totals are right for the dense
    network and for the physically pruned one (heads and MLP units removed)."""
    model = _small_vit()
    example = _image(32)
    groups, _ = find_groups(model, example[:1])
    assert {g.kind for g in groups} == {"heads", "channels"}  # the heads and the MLP hidden units
    cost = costs.build_cost_model(model, groups, example)
    tokens = torch.empty(1, 65, 32)
    attention = sum(_mha_macs(m, tokens, tokens) for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    heads = {g.name for g in groups if g.kind == "heads"}
    by_heads = sum(layer.macs for layer in cost.layers if heads & layer.groups())
    assert by_heads == pytest.approx(attention, rel=1e-9)
    assert cost.other_macs == pytest.approx(0.0, abs=1e-6)
    assert cost.evaluate() == pytest.approx(flops.count(model, example), rel=1e-9)

    keep = {g.name: g.units // 2 for g in groups}
    removed = {g.name: list(range(g.units - keep[g.name])) for g in groups}
    pruned = remove_units(copy.deepcopy(model), groups, removed, example[:1])
    assert cost.evaluate(keep) == pytest.approx(flops.count(pruned, example), rel=1e-9)
    assert flops.total_macs(pruned, example) == pytest.approx(reference_macs(pruned, example), rel=1e-9)
