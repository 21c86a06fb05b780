"""Multiply–accumulates (MACs) of one forward pass, right for attention as well as conv and linear.

torch's ``FlopCounterMode`` counts the matrix products of a forward pass (convolutions, ``mm``,
``addmm``, ``bmm``, the CUDA attention kernels). Two kinds of attention escape it as it stands:

* ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` in eval mode without grad take a
  fused inference fast path (``torch._native_multi_head_attention``,
  ``torch._transformer_encoder_layer_fwd``) whose projections and attention products the counter
  does not see at all (a torchvision ViT-B/16 loses a third of its MACs);
* ``scaled_dot_product_attention`` on the CPU (and on MPS or an out-of-tree backend) runs kernels
  the counter has no formula for, so the two attention products count as zero.

:func:`total_macs` therefore turns the fast path off while it counts (and restores the setting
afterwards, also on errors) and gives the counter the attention formula of
:func:`attention_macs` for those kernels. Swin's window attention is written as plain matmuls and
is counted by the counter as it is. Normalisation layers, activations and other elementwise work
count as zero (BatchNorm folds into the preceding layer at inference).

MACs are FLOPs / 2 of the counter (a multiply–add is two FLOPs), the convention of most pruning
papers, of torchvision's documented "GFLOPS" and of torch-pruning's counter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Attention kernels the counter has no formula for; their first three arguments are query, key and
# value of shape (..., L, E). Looked up by name: not every build of torch has every backend's op.
_UNCOUNTED_ATTENTION = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_fused_attention_overrideable",
)


def attention_macs(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """MACs of scaled dot-product attention softmax(Q Kᵀ) V.

    With Q of shape (…, L, E), K of shape (…, S, E) and V of shape (…, S, Ev), and N the product of
    Q's leading (batch, head) dimensions: N·L·S·E for the scores Q Kᵀ plus N·L·S·Ev for the weighted
    sum with V, i.e. ``N·L·S·(E + Ev)``. Scaling, masking and the softmax are elementwise (0).
    Key and value heads shared by several query heads (grouped-query attention) are counted once
    per query head, as the kernels broadcast them.
    """
    *leading, length, embed = query_shape
    source = key_shape[-2]
    return math.prod(leading) * length * source * (embed + value_shape[-1])


def _attention_flops(query_shape, key_shape, value_shape, *_args: Any, out_shape=None, **_kwargs: Any) -> int:
    """The counter's formula signature (shapes in, FLOPs out) around :func:`attention_macs`."""
    return 2 * attention_macs(query_shape, key_shape, value_shape)


def _custom_formulas() -> dict[Any, Callable[..., int]]:
    return {
        getattr(torch.ops.aten, name): _attention_flops
        for name in _UNCOUNTED_ATTENTION
        if hasattr(torch.ops.aten, name)
    }


@contextmanager
def attention_fast_path_disabled() -> Iterator[None]:
    """Turn off the fused inference path of ``nn.MultiheadAttention`` / ``nn.TransformerEncoder``
    (``torch.backends.mha.set_fastpath_enabled``) for the block; the previous setting comes back
    on leaving it, also after an exception. The setting is process-wide while the block runs."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def total_macs(model: nn.Module, example_input: torch.Tensor) -> float:
    """MACs of one forward pass of ``model`` in eval mode on one sample, ``example_input[:1]``.

    ``FlopCounterMode``'s FLOPs / 2 with the attention fast path off and :func:`attention_macs` for
    the attention kernels the counter misses. Per layer this is: Conv2d ``out_elems·(C_in/groups)·kh·kw``,
    Linear ``out_elems·in_features``, attention ``N·L·S·(E + Ev)`` (plus its projections, which are
    linear layers), BatchNorm and other elementwise layers 0. The model is put in eval mode while it
    is counted; its modules' training flags are restored afterwards.
    """
    training = {module: module.training for module in model.modules()}
    counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
    model.eval()
    try:
        with attention_fast_path_disabled(), counter, torch.inference_mode():
            model(example_input[:1])
    finally:
        for module, mode in training.items():
            module.training = mode
    return counter.get_total_flops() / 2


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, float]:
    """(parameters, MACs per sample) of a model as it is: ``Σ p.numel()`` over its parameters and
    :func:`total_macs` on ``example_input[:1]``."""
    return sum(p.numel() for p in model.parameters()), total_macs(model, example_input)
