"""A network analysed on too few images: the singular-statistics warnings of many groups print as one
summary line naming how many groups and the images needed; each group's line stays available."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
import torchvision
from torch.utils.data import TensorDataset

from snp_engine import api
from snp_engine.cli import plumbing


@pytest.fixture(scope="module")
def singular_lines() -> list[str]:
    """A small ViT (4 layers: 8 groups) analysed on 2 images of 17 tokens, fewer samples than channels."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=4, num_heads=4, hidden_dim=32, mlp_dim=48, num_classes=5
    ).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    analysis = api.analyze(model, TensorDataset(images, torch.zeros(2, dtype=torch.long)))
    return analysis.warnings()


def args(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"quiet": False, "debug": False, **values})


def test_many_singular_groups_print_one_line_with_the_count_and_the_images_needed(singular_lines, capsys):
    assert len(singular_lines) >= plumbing.SINGULAR_DETAIL_AT
    needed = max(int(m.group(1)) for m in (re.search(r"at least (\d+) images", s) for s in singular_lines) if m)
    plumbing.say_singular(args(), singular_lines)
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == 1
    line = printed[0]
    assert f"{len(singular_lines)} groups" in line and f"use at least {needed} images (now 2)" in line
    assert "--debug" in line


def test_debug_prints_each_group_too(singular_lines, capsys):
    plumbing.say_singular(args(debug=True), singular_lines)
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == len(singular_lines) + 1
    assert all(any(line.endswith(detail) for line in printed) for detail in singular_lines)


def test_a_few_groups_print_as_they_are_and_quiet_prints_nothing(singular_lines, capsys):
    few = singular_lines[: plumbing.SINGULAR_DETAIL_AT - 1]
    plumbing.say_singular(args(), few)
    assert capsys.readouterr().err.splitlines() == [f"snp: warning: {line}" for line in few]
    plumbing.say_singular(argparse.Namespace(quiet=True, debug=False), singular_lines)
    assert capsys.readouterr().err == ""
