"""Measuring a model on labelled data: top-k accuracy, and how far a pruned model's logits moved."""

from __future__ import annotations

import torch
from torch import nn

from snp_engine.activations import images_of, model_dtype
from snp_engine.errors import DataError
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
    """Top-k accuracy (percent) of ``model`` on a labelled dataset or DataBundle (its test split)."""
    data = getattr(data, "test", data)
    loader = batches_of(data, batch_size=batch_size)
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = model_dtype(model)
    correct = {k: 0 for k in topk}
    seen = 0
    reporter = reporter or Reporter()
    with out_of_memory_as_error("the evaluation", device, batch_size), torch.inference_mode():
        check_forward(model, first_example(loader, device, dtype))
        for index, (images, labels) in enumerate(loader):
            reporter.check()
            logits = model(images.to(device=device, dtype=dtype)).float()
            labels = labels.to(device)
            check_labels(labels, logits.shape[1])
            top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
            for k in topk:
                correct[k] += int((top[:, :k] == labels[:, None]).any(1).sum())
            seen += labels.shape[0]
            reporter.update((index + 1) / len(loader), "evaluating")
    return {f"top{k}": 100.0 * correct[k] / max(seen, 1) for k in topk}


def check_labels(labels: torch.Tensor, classes: int) -> None:
    """A label the model cannot predict makes accuracy meaningless (and training crash): refuse it."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise DataError(
            f"the data has labels {low}..{high} but the model predicts {classes} classes "
            f"(labels 0..{classes - 1}); evaluate it on data with matching classes"
        )


def fidelity(
    reference: nn.Module,
    candidate: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
) -> float:
    """Relative logit error ‖f̃(x) − f(x)‖ / ‖f(x)‖ over a dataset (0 = identical outputs)."""
    data = getattr(data, "test", data)
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
    return (error / norm) ** 0.5 if norm > 0 else 0.0


__all__ = ["check_labels", "evaluate", "fidelity"]
