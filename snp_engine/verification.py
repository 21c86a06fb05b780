"""Checking a written file against the model it came from, before the file is kept.

Every writer of a model (snp export, TorchScript, ONNX) reloads what it wrote and compares the
outputs on a fixed random batch with :func:`check_close`; a difference means nothing is written.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from snp_engine.errors import SnpError

# Outputs of a reloaded model must match the written one to this relative tolerance.
EXPORT_TOLERANCE = 1e-5
# ONNX runtimes fuse and reorder operations, so their outputs get a looser tolerance.
ONNX_TOLERANCE = 1e-4


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode, for exact comparisons; the caller's model keeps its device and mode."""
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    if on_cpu and not model.training:
        return model
    return copy.deepcopy(model).cpu().eval()


def random_batch(input_shape: Sequence[int], dtype: torch.dtype = torch.float32, batch: int = 2) -> torch.Tensor:
    """The same random ``batch`` of inputs every time (seeded generator)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape), generator=generator).to(dtype)


def first_output(output: Any) -> torch.Tensor:
    """The logits of models that return a tuple or named tuple (e.g. with auxiliary heads)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return first_output(next(iter(output.values())))
    if isinstance(output, Sequence) and output:
        return first_output(output[0])
    raise SnpError(f"cannot compare model outputs of type {type(output).__name__}")


def check_close(expected: torch.Tensor, actual: torch.Tensor, tolerance: float, what: str) -> None:
    """Refuse ``actual`` (the outputs of ``what``) unless it matches ``expected`` to ``tolerance``,
    relative to the largest expected magnitude (at least 1)."""
    expected, actual = expected.detach().double().cpu(), torch.as_tensor(actual).detach().double().cpu()
    if expected.shape != actual.shape:
        raise SnpError(
            f"verification failed: {what} gives outputs of shape {tuple(actual.shape)}, "
            f"expected {tuple(expected.shape)}; nothing was written"
        )
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    diff = float((expected - actual).abs().max()) if expected.numel() else 0.0
    if not diff <= tolerance * scale:
        raise SnpError(
            f"verification failed: {what} differs from the model by {diff:.3g} "
            f"(allowed {tolerance * scale:.3g}); nothing was written"
        )


__all__ = ["EXPORT_TOLERANCE", "ONNX_TOLERANCE", "check_close", "cpu_eval_copy", "first_output", "random_batch"]
