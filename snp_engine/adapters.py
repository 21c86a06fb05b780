"""Equivalent forms of layers that torch-pruning cannot trace as they are written.

While the dependency graph is built (and while units are removed through it), :func:`traceable`
swaps such layers for ones that compute exactly the same outputs in operations torch-pruning
follows, and puts the originals back afterwards:

- attention layers that run their projections as bare parameters (Swin's window attention), see
  :func:`snp_engine.heads.explicit_attention`;
- MaxViT's partition attention, whose chunk and einsum over 4-D tokens torch-pruning's index
  mapping cannot follow, see :mod:`snp_engine.partition_attention`;
- ShuffleNetV2's channel shuffle, written as view → transpose → view (a reshape torch-pruning's
  index mapping divides by zero on), becomes the same permutation as one ``index_select``: channel
  c·g + i of the shuffled map is channel i·(C/g) + c of the input, for g groups of C/g channels.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn

from snp_engine.heads import explicit_attention
from snp_engine.partition_attention import traceable_partition_attention


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle of an (N, C, H, W) map as one ``index_select``."""
    channels = x.shape[1]
    order = torch.arange(channels, device=x.device).view(groups, channels // groups).t().reshape(-1)
    return x.index_select(1, order)


def _shuffle_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ShuffleNetV2 block: split (stride 1) or both branches (stride 2), then shuffle."""
    if self.stride == 1:
        kept, changed = x.chunk(2, dim=1)
        out = torch.cat((kept, self.branch2(changed)), dim=1)
    else:
        out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
    return shuffle_channels(out, 2)


def _is_shuffle_block(module: nn.Module) -> bool:
    try:
        from torchvision.models.shufflenetv2 import InvertedResidual
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(module, InvertedResidual)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s layers that torch-pruning cannot trace are in equivalent forms."""
    blocks = [m for m in model.modules() if _is_shuffle_block(m) and "forward" not in vars(m)]
    for block in blocks:
        block.forward = types.MethodType(_shuffle_block_forward, block)
    try:
        with explicit_attention(model, multihead=False), traceable_partition_attention(model):
            yield
    finally:
        for block in blocks:
            del block.forward


__all__ = ["shuffle_channels", "traceable"]
