"""Measuring networks: accuracy, cost, latency, and the dense and pruned network side by side.

With ``distributed=True`` (inside a ``torch.distributed`` job) each process scores its shard of the
evaluation set (image i on process i mod N) and the counts and sums are added over the processes,
so every process gets the numbers of the whole set, each image measured once."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from snp_engine import api
from snp_engine.activations import model_dtype
from snp_engine.costs import count
from snp_engine.data import DataBundle, make_loader
from snp_engine.distributed import own_shard
from snp_engine.latency import measure_latency
from snp_engine.metrics import Scores, scores
from snp_engine.progress import Reporter, Scaled
from snp_engine.results import Pruned
from snp_engine.runtime import check_forward, first_example, out_of_memory_as_error, resolve_device
from snp_engine.workflows.preparation import Prepared

LATENCY_ROUNDS = 3


def score(
    model: nn.Module,
    bundle: DataBundle,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> Scores:
    """Top-1/top-5 and loss of ``model`` on the bundle's evaluation part (its test split); with
    ``distributed``, this process's shard of it, summed over the processes."""
    device = resolve_device(device)
    loader = make_loader(own_shard(bundle.test) if distributed else bundle.test, batch_size)
    model = model.to(device)
    with out_of_memory_as_error("the evaluation", device, batch_size):
        check_forward(model, first_example(loader, device, model_dtype(model)))
        return scores(model, loader, device, reporter=reporter, total=len(loader), distributed=distributed)


def cost(model: nn.Module, shape: Sequence[int], device: str | torch.device = "cpu") -> tuple[int, float]:
    """(parameters, MACs per image) of ``model`` at ``shape``."""
    device = resolve_device(device)
    model = model.to(device)
    return count(model, torch.zeros((1, *shape), device=device, dtype=model_dtype(model)))


def latencies(
    dense: nn.Module,
    pruned: nn.Module,
    shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    repeats: int = 30,
    reporter: Reporter | None = None,
) -> tuple[float, float]:
    """Median per-pass time (ms) of both networks, timed in alternating rounds so that whatever else
    the machine is doing affects both alike."""
    reporter = reporter or Reporter()
    device = resolve_device(device)
    times: tuple[list[float], list[float]] = ([], [])
    per_round = max(1, repeats // LATENCY_ROUNDS)
    for round_index in range(LATENCY_ROUNDS):
        for net, found in zip((dense, pruned), times, strict=True):
            reporter.check()
            result = measure_latency(
                net, shape, device, batch_size=batch_size, warmup=3 if round_index == 0 else 1, repeats=per_round
            )
            found.append(result["ms_mean"])
        reporter.update((round_index + 1) / LATENCY_ROUNDS, "timing both networks")
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass(frozen=True)
class Comparison:
    """The dense and the pruned network side by side, on one evaluation set."""

    before: Scores
    after: Scores
    fidelity: float | None
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    evaluation: str
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None

    def metrics(self) -> dict[str, Any]:
        """The flat dictionary written to JSON, export headers and the app's summary."""
        values = {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "top1_before": self.before.top1,
            "top1_after": self.after.top1,
            "top5_before": self.before.top5,
            "top5_after": self.after.top5,
            "fidelity": self.fidelity,
            "eval_data": self.evaluation,
            "eval_samples": self.after.samples,
        }
        if self.latency_before_ms is not None:
            values.update(latency_before_ms=self.latency_before_ms, latency_after_ms=self.latency_after_ms)
        return values


def fidelity(
    dense: nn.Module,
    pruned: nn.Module,
    bundle: DataBundle,
    *,
    device: str | torch.device = "cpu",
    distributed: bool = False,
) -> float:
    """Relative logit error of ``pruned`` against ``dense`` on the bundle's evaluation part."""
    return api.fidelity(dense, pruned, bundle.test, device=device, distributed=distributed)


def compare(
    prepared: Prepared,
    pruned: nn.Module | Pruned,
    *,
    device: str | torch.device = "cpu",
    baseline: Scores | None = None,
    with_fidelity: bool = True,
    latency: Mapping[str, int] | None = None,
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> Comparison:
    """Accuracy (dense ``baseline`` reused when given), logit fidelity, parameters, FLOPs and,
    with ``latency={"batch_size": B, "repeats": R}``, measured latency of both networks.
    ``distributed`` shares the evaluation images over the processes (latency is each process's own)."""
    reporter = reporter or Reporter()
    pruned = pruned.model if isinstance(pruned, Pruned) else pruned
    evaluation = prepared.evaluation or prepared.require_data()
    dense = prepared.model.model
    if baseline is None:
        reporter.update(0.0, "scoring the original network")
        baseline = score(dense, evaluation, device=device, reporter=Scaled(reporter, 0.0, 0.3), distributed=distributed)
    reporter.update(0.3, "scoring the pruned network")
    after = score(pruned, evaluation, device=device, reporter=Scaled(reporter, 0.3, 0.6), distributed=distributed)
    reporter.check()
    error = fidelity(dense, pruned, evaluation, device=device, distributed=distributed) if with_fidelity else None
    params_before, flops_before = cost(dense, prepared.input_shape, device)
    params_after, flops_after = cost(pruned, prepared.input_shape, device)
    times: tuple[float | None, float | None] = (None, None)
    if latency is not None:
        times = latencies(
            dense, pruned, prepared.input_shape, device=device, reporter=Scaled(reporter, 0.7, 1.0), **latency
        )
    reporter.update(1.0, "evaluated")
    return Comparison(
        baseline,
        after,
        error,
        params_before,
        params_after,
        flops_before,
        flops_after,
        prepared.evaluation_label,
        *times,
    )
