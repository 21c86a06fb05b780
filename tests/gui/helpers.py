"""What the app's tests share: running one background task to its end, and a small analysed ViT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TIMEOUT = 60_000  # ms: a task on the demo network on a busy two-core machine


def run(qtbot, target: Any, name: str, start: Callable[[], Any], timeout: int = TIMEOUT) -> tuple[str, str]:
    """Call ``start`` and wait for the one ``ended`` signal of task ``name`` on the runner of
    ``target`` (a Session, or a MainWindow's); returns (outcome, message)."""
    session = getattr(target, "session", target)
    with qtbot.waitSignal(
        session.runner.ended, timeout=timeout, check_params_cb=lambda task, *_: task == name
    ) as blocker:
        start()
    return blocker.args[1], blocker.args[2]


def small_vit_analysis(layers: int = 2):
    """A small torchvision ViT (16x16 inputs, 4 heads of 8 channels, MLPs of 48) and its analysis on
    24 random images: a network with attention heads for the app's tests."""
    import torch
    import torchvision
    from torch.utils.data import TensorDataset

    from snp_engine import api

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=layers, num_heads=4, hidden_dim=32, mlp_dim=48, num_classes=5
    ).eval()
    images = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, api.analyze(model, TensorDataset(images, torch.zeros(24, dtype=torch.long)))
