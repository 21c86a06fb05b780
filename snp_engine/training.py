"""A plain supervised training loop and top-k accuracy, shared by the demo training and fine-tuning.

Kept generic on purpose: any classification ``nn.Module`` and any DataLoader yielding
``(images, labels)`` batches. Progress and cancellation go through a :class:`Reporter`, so the same
loop serves the CLI and the GUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from snp_engine.metrics import topk_hits
from snp_engine.progress import Reporter

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def train(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    device: str | torch.device = "cpu",
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    label_smoothing: float = 0.0,
    batch_transform: BatchTransform | None = None,
    reporter: Reporter | None = None,
    eval_loader: DataLoader | None = None,
) -> list[dict]:
    """Train ``model`` in place with SGD+momentum (or AdamW) and a per-step cosine schedule.

    ``batch_transform`` is applied to each image batch on the device (e.g. augmentation).
    Returns one history row per epoch: ``epoch``, ``loss``, ``train_acc`` (%) and ``eval_acc``
    (top-1 % on ``eval_loader``, or ``None``). The model is left in eval mode. Cancelling through
    ``reporter`` raises :class:`~snp_engine.progress.Cancelled` between batches; the weights are then
    partly trained, so callers that must not keep them should train a copy.
    """
    if epochs < 1 or len(train_loader) == 0:
        raise ValueError("training needs at least one epoch and one batch")
    reporter = reporter or Reporter()
    model.to(device)
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    total_steps = epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _cosine(step, total_steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = []
    for epoch in range(epochs):
        loss, train_acc = _train_epoch(
            model, train_loader, opt, schedule, loss_fn, device, batch_transform, reporter, epoch, epochs
        )
        eval_acc = accuracy(model, eval_loader, device, topk=(1,))["top1"] if eval_loader is not None else None
        history.append({"epoch": epoch + 1, "loss": loss, "train_acc": train_acc, "eval_acc": eval_acc})
    model.eval()
    reporter.update(1.0, f"trained {epochs} epoch(s)")
    return history


def accuracy(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracies in percent (keys ``top1``, ``top5``, ...) plus the sample count ``n``.

    ``k`` larger than the number of classes counts every sample as correct, as it must. The
    model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(topk, 0)
    seen = 0
    with torch.inference_mode():
        for images, labels in loader:
            logits = model(images.to(device))
            labels = labels.to(device)
            for k, hits in topk_hits(logits, labels, topk).items():
                correct[k] += hits
            seen += int(labels.shape[0])
    model.train(was_training)
    if seen == 0:
        raise ValueError("accuracy needs at least one sample")
    result: dict[str, float] = {f"top{k}": 100.0 * correct[k] / seen for k in topk}
    result["n"] = seen
    return result


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: str | torch.device,
    batch_transform: BatchTransform | None,
    reporter: Reporter,
    epoch: int,
    epochs: int,
) -> tuple[float, float]:
    """One pass over ``loader``; returns mean loss and train accuracy (%)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    steps = len(loader)
    for step, (images, labels) in enumerate(loader):
        reporter.check()
        images, labels = images.to(device), labels.to(device)
        if batch_transform is not None:
            images = batch_transform(images)
        logits = model(images)
        loss = loss_fn(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        batch = int(labels.shape[0])
        loss_sum += float(loss.detach()) * batch
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += batch
        fraction = (epoch * steps + step + 1) / (epochs * steps)
        reporter.update(fraction, f"epoch {epoch + 1}/{epochs}  loss {loss_sum / seen:.4f}")
    return loss_sum / seen, 100.0 * correct / seen


def _make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay is not applied to biases and norm parameters (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer '{name}' (use 'sgd' or 'adamw')")


def _cosine(step: int, total: int) -> float:
    """Learning-rate factor: cosine decay from 1 to 0 over ``total`` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
