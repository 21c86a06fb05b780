"""MaxViT's partition attention (torchvision's ``RelativePositionalMultiHeadAttention``) with
prunable heads.

MaxViT attends within windows (and within grid cells) of the feature map: a (B, C, H, W) map is
cut into G partitions of P tokens, x ∈ ℝ^{B×G×P×D}, and each partition is one attention sequence.
For heads h = 1 … H of width d (D = H·d before pruning) the layer computes

    [q; k; v] = W_qkv x + b_qkv        (``to_qkv``: three row blocks of H·d rows, head h owns rows
                                         h·d … h·d + d − 1 of each block)
    s_h = q_h (c · k_h)ᵀ + β_h,        c = D^{-1/2} (torchvision scales by the layer's input width
                                         D, not by d), β_h[i, j] = T[index(i, j), h]
    o_h = softmax(s_h) v_h,            y = W_m [o_1; …; o_H] + b_m      (``merge``)

so head h touches nothing but its own rows of W_qkv and b_qkv, its own column of the relative
position bias table T and its own d columns of W_m: the heads are units exactly as in
:mod:`snp_engine.heads` (a head group with ``merge`` as its one reader). Removing a set of heads
deletes those rows and columns and lowers H; c stays D^{-1/2}, because D is the width of the
layer's input (the residual stream), which removing heads does not change, so every kept head's
o_h is unchanged.

The residual stream x itself is a layer-norm stream (:mod:`snp_engine.layernorm_streams`): the
layer reads LN(x) through ``to_qkv`` (a reader, refitted towards the dense W_qkv LN(x)) and writes
through ``merge`` (a producer). When the stream keeps D' < D channels, W_qkv becomes 3·H·d × D' and
W_m D' × H·d, and c stays the dense D^{-1/2}: the refitted W_qkv reproduces the dense q, k and v,
which the dense scores scale by D^{-1/2}.

torchvision's forward cannot run with fewer heads (it reshapes the heads' output back to the
input width D), and torch-pruning cannot trace it: its ``chunk`` and ``einsum`` over 4-D token
tensors make torch-pruning's reshape index mapping expand channel indices on every pass around
the residual stream, so finding the groups never ends. :class:`PartitionHeadAttention` computes
the same outputs with the same parameter and buffer names (state dicts are interchangeable): the
partitions are folded into the batch, q, k and v come from one reshape of 3-D tensors, and the
heads' output is H·d wide. It stands in for the original while the dependency graph is built
(:func:`traceable_partition_attention`) and replaces for good every layer that loses heads or
whose stream loses channels (:func:`explicit_where_narrowed`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _torchvision_class() -> type | None:
    try:
        from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return RelativePositionalMultiHeadAttention


def is_partition_attention(module: nn.Module) -> bool:
    """Whether ``module`` is MaxViT's attention, torchvision's or the explicit form below."""
    cls = _torchvision_class()
    return isinstance(module, PartitionHeadAttention) or (cls is not None and isinstance(module, cls))


class PartitionHeadAttention(nn.Module):
    """MaxViT's relative-position multi-head attention on (B, G, P, D) tokens with ``n_heads``
    heads of ``head_dim`` channels, any head count; same parameters, buffers and results as
    torchvision's ``RelativePositionalMultiHeadAttention`` (see the module docstring)."""

    def __init__(self, feat_dim: int, head_dim: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.max_seq_len = n_heads, head_dim, max_seq_len
        self.size = math.isqrt(max_seq_len)
        self.scale_factor = feat_dim**-0.5
        self.to_qkv = nn.Linear(feat_dim, 3 * n_heads * head_dim)
        self.merge = nn.Linear(n_heads * head_dim, feat_dim)
        cells = (2 * self.size - 1) ** 2
        self.relative_position_bias_table = nn.Parameter(torch.zeros(cells, n_heads))
        rows, columns = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        coords = torch.stack([rows.flatten(), columns.flatten()])
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (self.size - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * self.size - 1) + relative[..., 1])

    @classmethod
    def sharing(cls, attention: nn.Module) -> PartitionHeadAttention:
        """A :class:`PartitionHeadAttention` that uses ``attention``'s own layers, bias table and
        index buffer (no copies: writes through either are seen by both)."""
        explicit = cls.__new__(cls)
        nn.Module.__init__(explicit)
        explicit.n_heads, explicit.head_dim = int(attention.n_heads), int(attention.head_dim)
        explicit.max_seq_len, explicit.size = int(attention.max_seq_len), int(attention.size)
        explicit.scale_factor = float(attention.scale_factor)
        explicit.to_qkv, explicit.merge = attention.to_qkv, attention.merge
        explicit.relative_position_bias_table = attention.relative_position_bias_table
        explicit.register_buffer("relative_position_index", attention.relative_position_index)
        explicit.train(attention.training)
        return explicit

    def get_relative_positional_bias(self) -> torch.Tensor:
        """β of every head, (1, H, P, P)."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(self.max_seq_len, self.max_seq_len, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, partitions, tokens, _ = x.shape
        heads, width = self.n_heads, self.head_dim
        x = x.flatten(0, 1)  # the partitions are independent sequences
        qkv = self.to_qkv(x).reshape(-1, tokens, 3, heads, width).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1] * self.scale_factor, qkv[2]
        scores = F.softmax(q @ k.transpose(-2, -1) + self.get_relative_positional_bias(), dim=-1)
        out = (scores @ v).transpose(1, 2).reshape(batch, partitions, tokens, heads * width)
        return self.merge(out)


def explicit_where_narrowed(model: nn.Module) -> None:
    """Make every torchvision MaxViT attention of ``model`` whose input width is no longer its
    heads' width H·d (its residual stream lost channels) a :class:`PartitionHeadAttention`, which
    runs at any width; c = D^{-1/2} stays the dense layer's constant (the readers were fitted with
    it). Layers of the full width are left as they are."""
    cls = _torchvision_class()
    for name, module in list(model.named_modules()):
        if cls is None or not isinstance(module, cls):
            continue
        if module.merge.out_features != module.n_heads * module.head_dim:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, PartitionHeadAttention.sharing(module))


@contextlib.contextmanager
def traceable_partition_attention(model: nn.Module) -> Iterator[None]:
    """Within the block every torchvision MaxViT attention of ``model`` is a
    :class:`PartitionHeadAttention` sharing its parameters (so torch-pruning can trace it)."""
    cls = _torchvision_class()
    swapped = []
    for name, module in list(model.named_modules()):
        if cls is None or not isinstance(module, cls):
            continue
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, PartitionHeadAttention.sharing(module))
        swapped.append((owner, child, module))
    try:
        yield
    finally:
        for owner, child, module in swapped:
            setattr(owner, child, module)


__all__ = [
    "PartitionHeadAttention",
    "explicit_where_narrowed",
    "is_partition_attention",
    "traceable_partition_attention",
]
