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
count; it is pruned in place. MaxViT's partition attention (projections ``to_qkv`` and ``merge``,
a bias-table column per head) becomes :class:`~snp_engine.partition_attention.PartitionHeadAttention`
when it loses heads.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snp_engine.partition_attention import PartitionHeadAttention, is_partition_attention
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


def _window_class() -> type | None:
    """torchvision's Swin (V1) window attention class, if torchvision is there."""
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return ShiftedWindowAttention


def _is_window_attention(module: nn.Module) -> bool:
    cls = _window_class()
    return cls is not None and isinstance(module, cls)


def _cosine(module: nn.Module) -> bool:
    """Swin V2's window attention: cosine attention with a learned scale and a position-bias MLP."""
    return isinstance(getattr(module, "logit_scale", None), nn.Parameter) and hasattr(module, "cpb_mlp")


def _window_form(module: nn.Module) -> type[WindowHeadAttention]:
    """The explicit form of a Swin window attention: V2 (cosine) or V1."""
    return WindowHeadAttentionV2 if _cosine(module) else WindowHeadAttention


def _shift_mask(height: int, width: int, window: Sequence[int], shift: Sequence[int], like: torch.Tensor):
    """The additive mask of shifted windows: tokens that came from different regions of the map
    before the cyclic shift do not attend to each other (−100 between them, 0 within a region)."""
    regions = like.new_zeros((height, width))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(height // window[0], window[0], width // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowHeadAttention(nn.Module):
    """Swin's shifted-window multi-head attention (torchvision's ``ShiftedWindowAttention``, V1)
    with ``num_heads`` heads of ``head_dim`` channels, its projections ``qkv`` and ``proj`` called as
    modules and its relative position bias table holding one column per head. Same parameter and
    buffer names as torchvision's, so state dicts are interchangeable.

    On a (B, H, W, C) map: pad to whole windows, roll by the shift, split into windows of
    N = wₕ·w_w tokens, attend within each window with the relative position bias (and, when
    shifted, the mask between regions), merge, roll back, crop."""

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        num_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention_dropout, self.dropout = attention_dropout, dropout
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * head_dim, dim, bias=proj_bias)
        cells = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(cells, num_heads))
        rows, columns = torch.meshgrid(
            torch.arange(self.window_size[0]), torch.arange(self.window_size[1]), indexing="ij"
        )
        coords = torch.stack([rows.flatten(), columns.flatten()])
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (relative[..., 0] + self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        index = index + relative[..., 1] + self.window_size[1] - 1
        self.register_buffer("relative_position_index", index.flatten())

    @classmethod
    def sharing(cls, attention: nn.Module) -> WindowHeadAttention:
        """A :class:`WindowHeadAttention` (of this class) that uses ``attention``'s own layers and
        position-bias parameters and buffers (no copies)."""
        explicit = cls.__new__(cls)
        nn.Module.__init__(explicit)
        explicit.window_size, explicit.shift_size = list(attention.window_size), list(attention.shift_size)
        explicit.num_heads = attention.num_heads
        explicit.head_dim = attention.qkv.out_features // (3 * attention.num_heads)
        explicit.attention_dropout, explicit.dropout = attention.attention_dropout, attention.dropout
        explicit.qkv, explicit.proj = attention.qkv, attention.proj
        explicit.register_buffer("relative_position_index", attention.relative_position_index)
        explicit._share_position_bias(attention)
        explicit.train(attention.training)
        return explicit

    def _share_position_bias(self, attention: nn.Module) -> None:
        self.relative_position_bias_table = attention.relative_position_bias_table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        window, shift = self.window_size, list(self.shift_size)
        x = F.pad(
            x, (0, 0, 0, (window[1] - width % window[1]) % window[1], 0, (window[0] - height % window[0]) % window[0])
        )
        _, padded_h, padded_w, channels = x.shape
        if window[0] >= padded_h:
            shift[0] = 0
        if window[1] >= padded_w:
            shift[1] = 0
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        rows, columns = padded_h // window[0], padded_w // window[1]
        tokens = window[0] * window[1]
        x = x.view(batch, rows, window[0], columns, window[1], channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch * rows * columns, tokens, channels)
        heads, head_dim = self.num_heads, self.head_dim
        qkv = self._qkv(x).reshape(x.shape[0], tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = self._scores(q, k)
        bias = self._position_bias()[self.relative_position_index].view(tokens, tokens, -1)
        attention = attention + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if sum(shift) > 0:
            mask = _shift_mask(padded_h, padded_w, window, shift, x)
            attention = attention.view(batch, rows * columns, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attention = attention.view(-1, heads, tokens, tokens)
        attention = F.dropout(F.softmax(attention, dim=-1), p=self.attention_dropout, training=self.training)
        x = attention.matmul(v).transpose(1, 2).reshape(x.shape[0], tokens, heads * head_dim)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        x = x.view(batch, rows, columns, window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, padded_h, padded_w, -1)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q * self.head_dim**-0.5).matmul(k.transpose(-2, -1))

    def _position_bias(self) -> torch.Tensor:
        """One bias per relative position and head, (cells, heads)."""
        return self.relative_position_bias_table


class WindowHeadAttentionV2(WindowHeadAttention):
    """Swin V2's window attention (torchvision's ``ShiftedWindowAttentionV2``) in the same explicit
    form: cosine attention scaled per head by exp(min(logit_scale, log 100)), keys without bias, and a
    position bias 16·σ(cpb_mlp(relative coordinates)) whose last layer has one output per head."""

    def _share_position_bias(self, attention: nn.Module) -> None:
        self.logit_scale, self.cpb_mlp = attention.logit_scale, attention.cpb_mlp
        self.register_buffer("relative_coords_table", attention.relative_coords_table)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        if self.qkv.bias is None:
            return qkv
        width = self.num_heads * self.head_dim  # the keys carry no bias in Swin V2
        keys = torch.zeros_like(self.qkv.bias)
        keys[width : 2 * width] = 1
        return qkv - self.qkv.bias * keys

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return cosine * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def _position_bias(self) -> torch.Tensor:
        return 16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads))


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


def _is_timm_window_attention(module: nn.Module) -> bool:
    """timm's Swin window attention: fused qkv and ``proj`` linear layers called as modules, a relative
    position bias table with one column per head, any head count."""
    return (
        type(module).__name__ == "WindowAttention"
        and type(module).__module__.startswith("timm.")
        and isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "relative_position_bias_table", None), nn.Parameter)
        and isinstance(getattr(module, "num_heads", None), int)
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
    if _heads(module) < 2:
        return "attention with a single head"
    return None


def _attention_like(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or _is_window_attention(module)


def _attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention | HeadAttention | WindowHeadAttention)
        or _is_timm_attention(m)
        or _is_timm_window_attention(m)
        or _is_window_attention(m)
        or is_partition_attention(m)
    ]


def _heads(module: nn.Module) -> int:
    """The head count of an attention layer (MaxViT's is ``n_heads``)."""
    return int(module.n_heads if is_partition_attention(module) else module.num_heads)


def _qkv_name(module: nn.Module) -> str | None:
    """The name, within the layer, of its fused q/k/v linear layer called as a module (None: bare
    parameters, as torchvision's :class:`nn.MultiheadAttention`)."""
    if is_partition_attention(module):
        return "to_qkv"
    return "qkv" if _fused(module) else None


def _qkv_layer(module: nn.Module) -> nn.Linear:
    return module.to_qkv if is_partition_attention(module) else module.qkv


def _fused(module: nn.Module) -> bool:
    """Whether the layer has a fused q/k/v linear layer ``qkv`` and an output projection ``proj``,
    both called as modules (timm's attention, Swin's window attention)."""
    return (
        _is_timm_attention(module)
        or _is_timm_window_attention(module)
        or _is_window_attention(module)
        or isinstance(module, WindowHeadAttention)
    )


def _head_dim(module: nn.Module) -> int:
    if _is_window_attention(module) or _is_timm_window_attention(module):  # no head width of their own
        return module.qkv.out_features // (3 * module.num_heads)
    return int(module.head_dim)


def output_projection(name: str, module: nn.Module) -> str:
    """The module name of an attention layer's output projection (its heads' reader)."""
    if is_partition_attention(module):
        return f"{name}.merge"
    return f"{name}.proj" if _fused(module) else f"{name}.out_proj"


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
        qkv = _qkv_name(module)
        found.append(
            AttentionLayer(
                name,
                _heads(module),
                _head_dim(module),
                output_projection(name, module),
                _why_not(module),
                f"{name}.{qkv}" if qkv else None,
            )
        )
    return found


@contextlib.contextmanager
def explicit_attention(model: nn.Module, *, multihead: bool = True) -> Iterator[None]:
    """Within the block every :class:`nn.MultiheadAttention` of ``model`` is a :class:`HeadAttention`
    and every Swin window attention a :class:`WindowHeadAttention` that shares its parameters, so
    hooks on the output projection see the heads' outputs and torch-pruning sees the projections as
    layers. ``multihead=False`` leaves :class:`nn.MultiheadAttention` as it is (torch-pruning has a
    rule of its own for it)."""
    swapped = []
    for name, module in list(model.named_modules()):
        if not _attention_like(module) or _why_not(module) is not None:
            continue
        if isinstance(module, nn.MultiheadAttention) and multihead:
            explicit = HeadAttention.sharing(module)
        elif _is_window_attention(module):
            explicit = _window_form(module).sharing(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, explicit)
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


def _keep_per_head(target: nn.Module, source: nn.Module, heads_kept: torch.Tensor) -> None:
    """Give ``target`` the kept heads' own parameters of ``source`` (see :func:`per_head_parameters`):
    Swin's bias-table columns, Swin V2's logit scales and position-bias outputs; none elsewhere."""
    if _cosine(source):
        target.logit_scale = nn.Parameter(source.logit_scale.detach()[heads_kept].clone())
        mlp = copy.deepcopy(source.cpb_mlp)
        mlp[-1] = _smaller_linear(source.cpb_mlp[-1], heads_kept, None)
        target.cpb_mlp = mlp
    elif isinstance(getattr(source, "relative_position_bias_table", None), nn.Parameter):
        table = source.relative_position_bias_table.detach()[:, heads_kept]
        target.relative_position_bias_table = nn.Parameter(table.clone())


def remove_heads(model: nn.Module, name: str, removed: Sequence[int]) -> None:
    """Physically delete the heads ``removed`` of the attention layer ``name`` (in place)."""
    module = model.get_submodule(name)
    heads, width = _heads(module), _head_dim(module)
    kept = [h for h in range(heads) if h not in set(int(i) for i in removed)]
    if not kept:
        raise ValueError(f"{name}: an attention layer keeps at least one head")
    rows, columns = _qkv_rows(kept, heads, width), block_units(torch.tensor(kept), width)
    heads_kept = torch.tensor(kept, device=rows.device)
    if _is_timm_attention(module) or _is_timm_window_attention(module):  # any head count: shrunk in place
        module.qkv = _smaller_linear(module.qkv, rows, None)
        module.proj = _smaller_linear(module.proj, None, columns)
        _keep_per_head(module, module, heads_kept)
        module.num_heads = len(kept)
        if _is_timm_attention(module):
            module.attn_dim = len(kept) * width
        return
    if is_partition_attention(module):  # MaxViT: the explicit form, with its own smaller layers
        smaller = PartitionHeadAttention.sharing(module)
        smaller.to_qkv = _smaller_linear(module.to_qkv, rows, None)
        smaller.merge = _smaller_linear(module.merge, None, columns)
        _keep_per_head(smaller, module, heads_kept)
        smaller.n_heads = len(kept)
        _replace(model, name, smaller)
        return
    if _is_window_attention(module) or isinstance(module, WindowHeadAttention):
        smaller = _window_form(module).sharing(module)  # then its own, smaller layers and per-head parameters
        smaller.qkv = _smaller_linear(module.qkv, rows, None)
        smaller.proj = _smaller_linear(module.proj, None, columns)
        _keep_per_head(smaller, module, heads_kept)
        smaller.num_heads = len(kept)
        _replace(model, name, smaller)
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
    _replace(model, name, smaller)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def value_l1(model: nn.Module, name: str) -> torch.Tensor:
    """L1 norm of each head's value-projection rows (the filters that produce the head's output)."""
    module = model.get_submodule(name)
    heads, width = _heads(module), _head_dim(module)
    weight = _qkv_layer(module).weight if _qkv_name(module) else module.in_proj_weight
    values = weight.detach()[2 * heads * width : 3 * heads * width]
    return values.abs().reshape(heads, -1).sum(1).double()


def product_macs(module: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(q/k/v projection MACs, attention product MACs) of one call on one sample, all heads: the
    projection reads E channels per token and writes 3·H·d; q kᵀ and softmax(·) v cost 2·T·S·H·d for
    T query and S key tokens (Swin: each of the padded map's tokens attends within its window)."""
    inner = _heads(module) * _head_dim(module)
    x = inputs[0]
    if is_partition_attention(module):  # MaxViT: (B, G, P, D), each of the G partitions a sequence
        sequences, tokens = x.shape[0] * x.shape[1], x.shape[2]
        return float(sequences * tokens * x.shape[-1] * 3 * inner), float(2 * sequences * tokens * tokens * inner)
    if _is_window_attention(module) or isinstance(module, WindowHeadAttention):
        window = module.window_size
        height = -(-x.shape[1] // window[0]) * window[0]
        width = -(-x.shape[2] // window[1]) * window[1]
        tokens = height * width
        return float(tokens * x.shape[-1] * 3 * inner), float(2 * tokens * window[0] * window[1] * inner)
    # (sequences, tokens, channels) with timm's windows as sequences; torch's (tokens, 1, channels)
    first = 1 if getattr(module, "batch_first", True) and x.dim() == 3 else 0
    keys = inputs[1] if len(inputs) > 1 else x
    sequences = x.shape[1 - first] if x.dim() == 3 else 1
    queries, sources = x.shape[first], keys.shape[first]
    projecting = sequences * queries * x.shape[-1] * 3 * inner
    return float(projecting), float(2 * sequences * queries * sources * inner)


def per_head_parameters(module: nn.Module) -> tuple[int, str | None]:
    """Parameters an attention layer holds per head besides its projections (Swin's relative position
    bias table, Swin V2's logit scales), and the module name, relative to the layer, of a linear
    layer whose outputs are one per head (Swin V2's position-bias MLP's last layer)."""
    if _cosine(module):
        return module.logit_scale.numel(), f"cpb_mlp.{len(module.cpb_mlp) - 1}"
    table = getattr(module, "relative_position_bias_table", None)
    return (table.numel() if table is not None else 0), None


def projection(model: nn.Module, name: str) -> tuple[str, int, bool]:
    """(name, parameters, called as a module) of an attention layer's q/k/v projection: timm's
    ``qkv`` linear layer (a module that forward hooks see), or torchvision's ``in_proj_weight`` and
    bias (bare parameters: their count is returned)."""
    module = model.get_submodule(name)
    qkv = _qkv_name(module)
    if qkv:
        return f"{name}.{qkv}", 0, True
    params = module.in_proj_weight.numel() + (module.in_proj_bias.numel() if module.in_proj_bias is not None else 0)
    return f"{name}.in_proj", params, False


__all__ = [
    "AttentionLayer",
    "HeadAttention",
    "WindowHeadAttention",
    "WindowHeadAttentionV2",
    "attention_layers",
    "explicit_attention",
    "per_head_parameters",
    "product_macs",
    "projection",
    "remove_heads",
    "value_l1",
]
