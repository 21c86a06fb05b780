"""``snp prune --out f.safetensors`` then ``snp eval --model f.safetensors`` for every torchvision
architecture the README lists, with user weights (random, 10 classes) on a small npz dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from snp_engine import cli

ARCHITECTURES = {
    "vgg11_bn": {},
    "vgg16": {},
    "resnet18": {},
    "resnet50": {},
    "mobilenet_v2": {},
    "vit_b_16": {"image_size": 32},  # the loader reads the image size back from pos_embedding
}


def _run_json(capsys, *argv: str) -> dict:
    code = cli.main([*argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """32 random 3x32x32 images (16 calibration, 16 test): evaluating big networks on the 497 digits
    test images would dominate the run without testing anything more."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(path, x=rng.standard_normal((32, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 32))
    return f"npz:{path}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_prune_export_and_eval_round_trip(arch, images, tmp_path, capsys):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **ARCHITECTURES[arch])
    weights = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "pruned.safetensors"

    # cheap settings: this checks groups, surgery and export on each architecture; orderings and the
    # sequential calibration are tested on the demo models and resnet18
    pruned = _run_json(
        capsys,
        "prune",
        "--model",
        f"torchvision:{arch}@{weights}",
        "--data",
        images,
        "--samples",
        "16",
        "--flops-reduction",
        "0.3",
        "--ordering",
        "variance",
        "--one-shot",
        "--out",
        str(out),
    )
    assert pruned["flops_after"] <= 0.72 * pruned["flops_before"]
    assert pruned["params_after"] < pruned["params_before"]

    evaluated = _run_json(capsys, "eval", "--model", str(out), "--data", images)
    assert evaluated["params"] == pruned["params_after"]
    assert evaluated["top1"] == pytest.approx(pruned["top1_after"])
