"""Wall-clock inference latency of a model, measured the same way for the dense and the pruned net.

Kept free of Qt so the CLI, the GUI and benchmarks report comparable numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from snp_engine.activations import model_dtype
from snp_engine.errors import SnpError


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, float]:
    """Mean and standard deviation (ms) of one forward pass on a random batch, plus images per second.

    ``input_shape`` is (C, H, W) without the batch dimension. Runs under ``torch.inference_mode``;
    on CUDA the device is synchronised around every pass because kernel launches are asynchronous
    and would otherwise be timed instead of the work itself.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise SnpError("latency needs batch_size >= 1, repeats >= 1 and warmup >= 0")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnpError("CUDA was requested for the latency measurement but no CUDA device is available")
    dtype = model_dtype(model)
    was_training = model.training
    model = model.to(device).eval()
    example = torch.randn((batch_size, *tuple(input_shape)), device=device, dtype=dtype)
    times = []
    try:
        with torch.inference_mode():
            for index in range(warmup + repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(example)
                _synchronize(device)
                if index >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    mean = statistics.fmean(times)
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    return {"ms_mean": mean, "ms_std": std, "throughput": batch_size * 1000.0 / mean if mean > 0 else 0.0}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
