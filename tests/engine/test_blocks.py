"""Residual blocks as units: found without naming architectures, scored, removed with compensation,
exported and reloaded."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models.resnet import BasicBlock

from snp_engine import api, io
from snp_engine.architectures import DemoResNet
from snp_engine.blocks import least_important, remove_blocks, score_blocks, unexplained_share
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.residual import find_blocks, replace_blocks
from snp_engine.results import PruningRecord
from snp_engine.statistics import Moments


class LinearBlock(nn.Module):
    """y = x + B x + β: a residual block whose branch is an exactly affine function of its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Tiny(nn.Module):
    """stem conv/BN/ReLU -> block -> average pool -> linear classifier."""

    def __init__(self, block: nn.Module, channels: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = block
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def _data(images: int = 64, size: int = 6, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    images_ = torch.randn(images, 3, size, size, generator=gen)
    return TensorDataset(images_, torch.randint(0, 5, (images,), generator=gen))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so the probes see more than a fresh network."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _logits(model: nn.Module, data: TensorDataset) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(data.tensors[0])


def test_a_zero_branch_is_removed_without_any_output_change():
    block = BasicBlock(6, 6)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    model = _randomised(Tiny(block))
    data = _data()
    (score,) = score_blocks(model, data)
    assert score.name == "block" and score.branch < 1e-12 and score.unexplained < 1e-9
    removal = remove_blocks(model, ["block"], data)
    assert isinstance(removal.model.block, nn.Identity) and removal.removed == ("block",)
    assert removal.refitted == ("fc",)
    torch.testing.assert_close(_logits(removal.model, data), _logits(model, data), rtol=1e-5, atol=1e-5)
    assert isinstance(model.block, BasicBlock)  # the original is untouched


def test_a_linear_branch_is_removed_and_compensated_exactly():
    torch.manual_seed(1)
    model = _randomised(Tiny(LinearBlock(6)))
    with torch.no_grad():
        model.block.branch.weight.mul_(3)
    data, test = _data(), _data(seed=1)
    (score,) = score_blocks(model, data)
    assert score.unexplained < 1e-6 < 0.1 < score.branch  # all it adds is linear in its input
    dense = _logits(model, test)
    dropped = _logits(remove_blocks(model, ["block"], data, compensate=False).model, test)
    compensated = _logits(remove_blocks(model, ["block"], data).model, test)
    assert (dropped - dense).norm() / dense.norm() > 0.1
    assert (compensated - dense).norm() / dense.norm() < 1e-4


def test_unexplained_share_is_the_schur_complement_share():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(3, 3, generator=gen, dtype=torch.float64) + 0.5 * noise
    moments = Moments.zeros(6)
    moments.update(torch.cat([x, y], 1))
    cov = moments.covariance()
    schur = cov[3:, 3:] - cov[3:, :3] @ torch.linalg.solve(cov[:3, :3], cov[:3, 3:])
    expected = float(torch.trace(schur) / torch.trace(cov[3:, 3:]))
    share, _ = unexplained_share([moments], relative_ridges=(1e-9,))
    assert share == pytest.approx(expected, rel=1e-6)


def test_resnet18_has_five_identity_blocks_and_not_the_downsampling_ones():
    model = torchvision.models.resnet18(num_classes=10).eval()
    names = [b.name for b in find_blocks(model, torch.randn(1, 3, 32, 32))]
    assert names == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_blocks_of_other_families_are_found_without_naming_them():
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10).eval()
    found = {b.name for b in find_blocks(mobilenet, torch.randn(1, 3, 32, 32))}
    assert found == {f"features.{i}" for i, m in enumerate(mobilenet.features) if getattr(m, "use_res_connect", False)}
    vit = torchvision.models.VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    blocks = find_blocks(vit, torch.randn(1, 3, 32, 32))
    assert [b.name for b in blocks] == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert blocks[0].layout == "tokens" and blocks[0].units == 16
    demo = find_blocks(DemoResNet().eval(), torch.randn(1, 1, 8, 8))
    assert [(b.name, b.layout, b.units) for b in demo] == [("layer1.0", "conv", 32)]


def test_removing_blocks_of_a_resnet_refits_the_later_layers_towards_the_dense_network():
    model = _randomised(torchvision.models.resnet18(num_classes=5))
    data, test = _data(48, 16), _data(32, 16, seed=1)
    scores = score_blocks(model, data)
    assert [s.name for s in scores] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    names = least_important(scores, 2)
    removal = remove_blocks(model, names, data)
    assert set(removal.refitted) >= {"fc"} and removal.fits
    dense = _logits(model, test)
    dropped = _logits(replace_blocks(copy.deepcopy(model), names), test)
    compensated = _logits(removal.model, test)
    assert (compensated - dense).norm() < (dropped - dense).norm()


def test_bad_counts_and_names_are_one_line_errors():
    model = _randomised(Tiny(BasicBlock(6, 6)))
    data = _data(16)
    scores = score_blocks(model, data)
    assert least_important(scores, 0) == ()
    with pytest.raises(SnpError, match="0 or more"):
        least_important(scores, -1)
    with pytest.raises(SnpError, match=r"cannot remove 2 blocks: the network has 1 removable blocks \(block\)"):
        least_important(scores, 2)
    with pytest.raises(SnpError, match="'fc' is not a removable block; removable blocks: block"):
        remove_blocks(model, ["fc"], data)


def test_an_export_with_removed_blocks_reloads_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    model = _randomised(DemoResNet())
    data = TensorDataset(torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,)))
    removal = remove_blocks(model, ["layer1.0"], data)
    analysis = api.analyze(removal.model, data)
    plan = analysis.plan(flops_reduction=0.3)
    pruned = api.prune(removal.model, analysis, plan, data=data)
    record = dataclasses.replace(pruned.record, blocks=removal.removed)
    path = io.export_model(
        pruned.model,
        tmp_path / "small.safetensors",
        arch="demo-resnet",
        num_classes=10,
        input_shape=(1, 8, 8),
        pruning=record,
    )
    loaded = io.load_exported(path)
    assert isinstance(loaded.model.layer1[0], nn.Identity)
    assert loaded.pruning.blocks == ("layer1.0",)
    assert io.read_metadata(path)["pruning"]["blocks"] == ["layer1.0"]
    images = TensorDataset(data.tensors[0][:8])
    torch.testing.assert_close(_logits(loaded.model, images), _logits(pruned.model, images))


def test_removed_blocks_survive_a_second_export_and_crafted_names_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = _randomised(DemoResNet())
    data = TensorDataset(torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,)))
    removal = remove_blocks(model, ["layer1.0"], data)
    record = PruningRecord(kept={}, units={}, groups=(), blocks=removal.removed)
    first = io.export_model(
        removal.model,
        tmp_path / "a.safetensors",
        arch="demo-resnet",
        num_classes=10,
        input_shape=(1, 8, 8),
        pruning=record,
    )
    loaded = io.load_exported(first)
    second = io.export_model(
        loaded.model,
        tmp_path / "b.safetensors",
        arch="demo-resnet",
        num_classes=10,
        input_shape=(1, 8, 8),
        base=loaded.metadata,
    )
    assert io.read_metadata(second)["pruning"]["blocks"] == ["layer1.0"]
    for name in ("layer9.0", ""):
        meta = io.read_metadata(first)
        meta["pruning"]["blocks"] = [name]
        crafted = tmp_path / "crafted.safetensors"
        raw = {"snp_format": "2", "snp": json.dumps(meta), "format": "pt"}
        save_file(load_file(str(first)), str(crafted), metadata=raw)
        with pytest.raises(ModelLoadError, match=r"removed block .* is not a module of the base architecture"):
            io.load_exported(crafted)
