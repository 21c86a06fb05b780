"""The next-reader energy share of a residual block: the unexplained part of its output as the layers that
read it see it (snp_engine.blocks.reader_energy_share)."""

from __future__ import annotations

import pytest
import torch

from snp_engine.blocks import reader_energy_share, unexplained_share
from snp_engine.statistics import Moments


def _folds(x: torch.Tensor, y: torch.Tensor, count: int = 4) -> list[Moments]:
    """Moments of z = [x; y], sample i in fold i mod ``count``."""
    folds = []
    for fold in range(count):
        moments = Moments.zeros(2 * x.shape[1])
        moments.update(torch.cat([x, y], 1)[fold::count])
        folds.append(moments)
    return folds


@pytest.fixture(scope="module")
def stream() -> tuple[torch.Tensor, torch.Tensor]:
    """x and y = x + f(x): f is linear in coordinate 0 and new information (x₀², noise) in coordinate 1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    branch = torch.zeros_like(x)
    branch[:, 0] = 2 * x[:, 2]
    branch[:, 1] = x[:, 0] ** 2 + 0.5 * torch.randn(4000, generator=gen, dtype=torch.float64)
    return x, x + branch


def test_without_a_metric_it_is_the_unexplained_share(stream):
    folds = _folds(*stream)
    assert reader_energy_share(folds, None) == unexplained_share(folds)
    assert reader_energy_share(folds, torch.eye(3))[0] == pytest.approx(unexplained_share(folds)[0])


def test_readers_that_ignore_the_new_direction_lose_nothing(stream):
    folds = _folds(*stream)
    u, _ = unexplained_share(folds)
    reads_0_and_2 = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.0, 2.0]])  # W: two outputs, no weight on y₁
    v, _ = reader_energy_share(folds, reads_0_and_2.T @ reads_0_and_2)
    assert u > 0.2 and v < 1e-3


def test_readers_of_the_new_direction_lose_its_energy_share(stream):
    x, y = stream
    folds = _folds(x, y)
    reads_1 = torch.tensor([[0.0, 3.0, 0.0]])  # W reads only y₁ = x₁ + x₀² + noise
    v, _ = reader_energy_share(folds, reads_1.T @ reads_1, relative_ridges=(1e-9,))
    # y₁'s best linear map from x is x₁ + mean(x₀²): it leaves Var(x₀²) + 0.25 = 2.25 of Var(y₁) = 3.25
    assert v == pytest.approx(2.25 / 3.25, rel=0.05)
    u, _ = unexplained_share(folds, relative_ridges=(1e-9,))
    assert u < v  # the identity metric dilutes it with the well-explained coordinates


def test_the_readers_are_the_layers_that_take_the_blocks_output_itself():
    from snp_engine.architectures import DemoResNet
    from snp_engine.blocks import reader_metrics, score_blocks
    from snp_engine.compensation import consumer_metric, tap_coverage
    from snp_engine.residual import find_blocks
    from snp_engine.surgery import weight_taps

    torch.manual_seed(0)
    model = DemoResNet().eval()
    example = torch.randn(1, 1, 8, 8)
    blocks = find_blocks(model, example)
    assert [b.name for b in blocks] == ["layer1.0"]
    expected = torch.zeros(32, 32, dtype=torch.float64)
    for layer in (model.layer2[0].conv1, model.layer2[0].downsample[0]):  # both read layer1.0's output
        coverage = tap_coverage(layer.kernel_size, (8, 8), layer.stride, layer.padding, layer.dilation)
        expected += consumer_metric(weight_taps(layer, "conv", 32), coverage)
    torch.testing.assert_close(reader_metrics(model, blocks, example)["layer1.0"], expected)

    class Pooled(torch.nn.Module):  # the block's output is pooled before the classifier reads it
        def __init__(self) -> None:
            super().__init__()
            self.block = model.layer1[0]
            self.fc = torch.nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(x).mean((2, 3)))

    pooled = Pooled().eval()
    images = torch.randn(16, 32, 4, 4)
    assert reader_metrics(pooled, find_blocks(pooled, images[:1]), images[:1]) == {}
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 8, 8), torch.zeros(32, dtype=torch.long))
    (score,) = score_blocks(model, data, batch_size=8)
    assert score.reader_energy is not None and 0 <= score.reader_energy <= 1
    (alone,) = score_blocks(pooled, torch.utils.data.TensorDataset(images, torch.zeros(16, dtype=torch.long)))
    assert alone.reader_energy is None and alone.to_dict()["reader_energy"] is None
