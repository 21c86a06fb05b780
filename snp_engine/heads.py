"""Attention heads as prunable units.

A multi-head self-attention layer computes, for heads h = 1 … H of width d,

    o_h = softmax(q_h k_hᵀ / √d) v_h,   q_h = W_q,h x, k_h = W_k,h x, v_h = W_v,h x,
    y = W_o [o_1; …; o_H] + b_o,

so the input of the output projection W_o is H blocks of d channels, and head h touches nothing
but its own rows of W_q, W_k, W_v and its own d columns of W_o. A *head group* has the H heads as
its units (``UnitGroup.kind == "heads"``, ``block`` = d channels per unit) and W_o as its one
reader:

- statistics are the moments of [o_1; …; o_H] (H·d channels) at W_o's input;
- an ordering picks heads, i.e. whole blocks of d channels
  (:func:`snp_engine.subspace.order_blocks`), and the curve is the channel curve at multiples of d;
- compensation is the ordinary least-squares fit of W_o's input from the kept heads' channels,
  [o]_all ≈ c + A [o]_K, so W_o ← W_o A on the kept columns and b_o += W_o c (nothing else changes:
  the kept heads' own outputs are not affected by removing others);
- physical removal deletes the removed heads' rows of W_q, W_k, W_v (and their biases) and columns
  of W_o and lowers the head count; the scale 1/√d stays, since d does not change.

torchvision's :class:`nn.MultiheadAttention` calls its output projection through a fused function,
not as a module, and cannot hold fewer heads than its embedding allows; while statistics are
taken, :func:`explicit_attention` swaps in :class:`HeadAttention` (the same computation, written
out, sharing the same parameters), and pruned layers become :class:`HeadAttention` for good. timm's
``Attention`` (ViT, DeiT) calls its projection ``proj`` as a module and already supports any head
count; it is pruned in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snp_engine.subspace import block_units


class HeadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` channels on ``embed_dim``-wide
    tokens, computed as :class:`nn.MultiheadAttention` computes it (same parameter names, so state
    dicts are interchangeable), but with its output projection called as a module and any number of
    heads. Queries, keys and values are ``in_proj_weight``'s three row blocks of ``num_heads·head_dim``
    rows each."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        out_bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def sharing(cls, attention: nn.MultiheadAttention) -> HeadAttention:
        """A :class:`HeadAttention` that uses ``attention``'s own parameters and output projection
        (no copies: writes through either are seen by both)."""
        explicit = cls.__new__(cls)
        nn.Module.__init__(explicit)
        explicit.embed_dim, explicit.num_heads = attention.embed_dim, attention.num_heads
        explicit.head_dim, explicit.batch_first = attention.head_dim, attention.batch_first
        explicit.dropout = attention.dropout
        explicit.in_proj_weight = attention.in_proj_weight
        explicit.in_proj_bias = attention.in_proj_bias
        explicit.out_proj = attention.out_proj
        explicit.train(attention.training)
        return explicit

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("snp's pruned attention supports unmasked attention only")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads, width = self.num_heads, self.head_dim
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(t, w, b).unflatten(-1, (heads, width)).transpose(1, 2)
            for t, w, b in zip((query, key, value), self.in_proj_weight.chunk(3), biases, strict=True)
        )
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.softmax((q * width**-0.5) @ k.transpose(-2, -1), dim=-1)
            weights = scores.mean(1) if average_attn_weights else scores
            out = F.dropout(scores, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _is_timm_attention(module: nn.Module) -> bool:
    """timm's standard ``Attention`` (ViT, DeiT, …): fused qkv linear, ``proj`` linear, per-head
    widths in ``head_dim``."""
    return (
        type(module).__name__ == "Attention"
        and type(module).__module__.startswith("timm.")
        and isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "head_dim", None), int)
    )


def _why_not(module: nn.Module) -> str | None:
    """Why the heads of an attention layer cannot be pruned (None: they can)."""
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            return "attention with separate key/value widths"
        if module.bias_k is not None or module.add_zero_attn:
            return "attention with learned key/value biases"
    elif _is_timm_attention(module):
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            return "attention whose heads share a normalisation"
        if getattr(module, "gate", None) is not None:
            return "gated attention"
    if module.num_heads < 2:
        return "attention with a single head"
    return None


def _attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention | HeadAttention) or _is_timm_attention(m)
    ]


def output_projection(name: str, module: nn.Module) -> str:
    """The module name of an attention layer's output projection (its heads' reader)."""
    return f"{name}.proj" if _is_timm_attention(module) else f"{name}.out_proj"


@dataclass(frozen=True)
class AttentionLayer:
    """A multi-head attention layer: its module name, heads and head width, the module name of its
    output projection (the heads' reader), and why its heads cannot be pruned (None: they can)."""

    name: str
    heads: int
    head_dim: int
    reader: str
    refused: str | None = None
    qkv: str | None = None  # timm's fused q/k/v linear layer (its channels are the heads' channels)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every multi-head attention layer of ``model`` (torchvision, timm, or already pruned by snp)."""
    found = []
    for name, module in _attention_layers(model):
        timm = _is_timm_attention(module)
        found.append(
            AttentionLayer(
                name,
                int(module.num_heads),
                int(module.head_dim),
                output_projection(name, module),
                _why_not(module),
                f"{name}.qkv" if timm else None,
            )
        )
    return found


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """Within the block every :class:`nn.MultiheadAttention` of ``model`` is a :class:`HeadAttention`
    that shares its parameters, so hooks on its output projection see the heads' outputs."""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and _why_not(module) is None:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, HeadAttention.sharing(module))
            swapped.append((owner, child, module))
    try:
        yield
    finally:
        for owner, child, module in swapped:
            setattr(owner, child, module)


def _qkv_rows(kept: Sequence[int], heads: int, width: int) -> torch.Tensor:
    """Rows of a fused [q; k; v] weight (3 blocks of ``heads`` heads of ``width``) for the kept heads."""
    channels = block_units(torch.tensor(list(kept)), width)
    return torch.cat([channels + part * heads * width for part in range(3)])


def _smaller_linear(linear: nn.Linear, rows: torch.Tensor | None, columns: torch.Tensor | None) -> nn.Linear:
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
    if columns is not None:
        weight = weight[:, columns.to(weight.device)]
    smaller = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    smaller = smaller.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            smaller.bias.copy_(bias[rows.to(bias.device)] if rows is not None else bias)
    return smaller


def remove_heads(model: nn.Module, name: str, removed: Sequence[int]) -> None:
    """Physically delete the heads ``removed`` of the attention layer ``name`` (in place)."""
    module = model.get_submodule(name)
    heads, width = int(module.num_heads), int(module.head_dim)
    kept = [h for h in range(heads) if h not in set(int(i) for i in removed)]
    if not kept:
        raise ValueError(f"{name}: an attention layer keeps at least one head")
    rows, columns = _qkv_rows(kept, heads, width), block_units(torch.tensor(kept), width)
    if _is_timm_attention(module):
        module.qkv = _smaller_linear(module.qkv, rows, None)
        module.proj = _smaller_linear(module.proj, None, columns)
        module.num_heads, module.attn_dim = len(kept), len(kept) * width
        return
    weight = module.in_proj_weight.detach()
    smaller = HeadAttention(
        module.embed_dim,
        len(kept),
        width,
        bias=module.in_proj_bias is not None,
        out_bias=module.out_proj.bias is not None,
        batch_first=module.batch_first,
        dropout=module.dropout,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        smaller.in_proj_weight.copy_(weight[rows.to(weight.device)])
        if module.in_proj_bias is not None:
            smaller.in_proj_bias.copy_(module.in_proj_bias.detach()[rows.to(weight.device)])
    smaller.out_proj = _smaller_linear(module.out_proj, None, columns)
    smaller.train(module.training)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, smaller)


def value_l1(model: nn.Module, name: str) -> torch.Tensor:
    """L1 norm of each head's value-projection rows (the filters that produce the head's output)."""
    module = model.get_submodule(name)
    heads, width = int(module.num_heads), int(module.head_dim)
    weight = module.qkv.weight if _is_timm_attention(module) else module.in_proj_weight
    values = weight.detach()[2 * heads * width : 3 * heads * width]
    return values.abs().reshape(heads, -1).sum(1).double()


def projection(model: nn.Module, name: str) -> tuple[str, int, bool]:
    """(name, parameters, called as a module) of an attention layer's q/k/v projection: timm's
    ``qkv`` linear layer (a module that forward hooks see), or torchvision's ``in_proj_weight`` and
    bias (bare parameters: their count is returned)."""
    module = model.get_submodule(name)
    if _is_timm_attention(module):
        return f"{name}.qkv", 0, True
    params = module.in_proj_weight.numel() + (module.in_proj_bias.numel() if module.in_proj_bias is not None else 0)
    return f"{name}.in_proj", params, False


__all__ = [
    "AttentionLayer",
    "HeadAttention",
    "attention_layers",
    "explicit_attention",
    "projection",
    "remove_heads",
    "value_l1",
]
