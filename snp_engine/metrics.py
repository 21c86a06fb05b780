"""Top-k accuracy and cross-entropy: the one implementation every report uses.

``topk_hits`` counts, ``scores`` streams a loader through a model. Accuracy is in percent;
``k`` larger than the number of classes counts every sample as correct, as it must.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from snp_engine.distributed import sums
from snp_engine.errors import DataError
from snp_engine.progress import Reporter


@dataclass(frozen=True)
class Scores:
    """Top-1/top-5 accuracy (%), mean cross-entropy and the number of samples they were measured on."""

    top1: float
    top5: float
    loss: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "samples": self.samples}


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int]) -> dict[int, int]:
    """How many labels fall within each top-k of the logits: #{i : yᵢ ∈ top_k(zᵢ)}."""
    kmax = min(max(topk), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    match = top == labels[:, None]
    return {k: int(match[:, : min(k, kmax)].any(dim=1).sum()) for k in topk}


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


def scores(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    *,
    limit: int | None = None,
    reporter: Reporter | None = None,
    total: int | None = None,
    distributed: bool = False,
) -> Scores:
    """Top-1/top-5 (%) and mean cross-entropy of ``model`` over ``(images, labels)`` batches.

    Images are cast to the model's floating dtype; ``limit`` stops after that many samples. The
    model's train/eval mode is restored afterwards. With ``distributed`` the loader holds this
    process's shard and the hits, loss sum and sample count are summed over all processes first.
    """
    reporter = reporter or Reporter()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was_training = model.training
    model.eval()
    hits = {1: 0, 5: 0}
    loss, seen = 0.0, 0
    try:
        with torch.inference_mode():
            for index, (images, labels) in enumerate(loader):
                reporter.check()
                if limit is not None and seen >= limit:
                    break
                logits = model(images.to(device=device, dtype=dtype)).float()
                labels = labels.to(device)
                check_labels(labels, logits.shape[1])
                for k, count in topk_hits(logits, labels, (1, 5)).items():
                    hits[k] += count
                loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                seen += int(labels.shape[0])
                if total:
                    reporter.update((index + 1) / total, "evaluating")
    finally:
        model.train(was_training)
    if distributed:
        hits[1], hits[5], loss, seen = sums([hits[1], hits[5], loss, seen])
    if seen == 0:
        raise DataError("no samples to evaluate on")
    return Scores(100.0 * hits[1] / seen, 100.0 * hits[5] / seen, loss / seen, int(seen))
