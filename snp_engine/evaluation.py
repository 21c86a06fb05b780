"""Measuring a model on labelled data: top-k accuracy, and how far a pruned model's logits moved."""

from __future__ import annotations

import torch
from torch import nn

from snp_engine.activations import images_of, model_dtype
from snp_engine.distributed import own_shard, sums
from snp_engine.metrics import check_labels, scores
from snp_engine.progress import Reporter
from snp_engine.runtime import batches_of, check_forward, first_example, out_of_memory_as_error, resolve_device


def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
    topk: tuple[int, ...] = (1, 5),
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Top-k accuracy (percent, ``k`` in 1 and 5) of ``model`` on a labelled dataset or DataBundle
    (its test split); computed by :func:`snp_engine.metrics.scores`."""
    unknown = set(topk) - {1, 5}
    if unknown:
        raise ValueError(f"evaluate reports top-1 and top-5 only, not top-{min(unknown)}")
    data = getattr(data, "test", data)
    loader = batches_of(data, batch_size=batch_size)
    device = resolve_device(device)
    model = model.to(device).eval()
    with out_of_memory_as_error("the evaluation", device, batch_size):
        check_forward(model, first_example(loader, device, model_dtype(model)))
        found = scores(model, loader, device, reporter=reporter, total=len(loader))
    values = {"top1": found.top1, "top5": found.top5}
    return {f"top{k}": values[f"top{k}"] for k in topk}


def fidelity(
    reference: nn.Module,
    candidate: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
    distributed: bool = False,
    sharded: bool = False,
) -> float:
    """Relative logit error ‖f̃(x) − f(x)‖ / ‖f(x)‖ over a dataset (0 = identical outputs).

    With ``distributed`` each ``torch.distributed`` process measures its shard of the dataset (image
    i on process i mod N; ``sharded`` when ``data`` already is this process's shard) and both sums
    of squares are added over the processes."""
    data = getattr(data, "test", data)
    if distributed and not sharded:
        data = own_shard(data)
    loader = batches_of(data, batch_size=batch_size)
    device = resolve_device(device)
    reference, candidate = reference.to(device).eval(), candidate.to(device).eval()
    error = norm = 0.0
    with torch.inference_mode():
        for batch in loader:
            images = images_of(batch).to(device)
            a = reference(images.to(model_dtype(reference))).double()
            b = candidate(images.to(model_dtype(candidate))).double()
            error += float(((a - b) ** 2).sum())
            norm += float((a**2).sum())
    if distributed:
        error, norm = sums([error, norm])
    return (error / norm) ** 0.5 if norm > 0 else 0.0


__all__ = ["check_labels", "evaluate", "fidelity"]
