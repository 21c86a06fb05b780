"""Whatever is on the user's disk: damaged and mislabelled files, odd data, hostile numerics, failing
devices and interrupted writes. Each case must end in one :class:`SnpError` that names the file or
layer and the problem, leave nothing half-written, and leave the engine usable afterwards."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from snp_engine import api, io
from snp_engine.data import TensorImageDataset, load_data
from snp_engine.errors import AnalysisError, DataError, ModelLoadError, OutOfMemoryError, SnpError
from snp_engine.models import DemoVGG, load_model, sniff_format
from snp_engine.progress import Cancelled, Reporter
from tests.engine.helpers import demo_model, digits, outputs, rewrite_safetensors, stacked

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def test_images(data) -> torch.Tensor:
    return stacked(data.test)[0][:128]


@pytest.fixture(scope="module")
def vgg_analysis(data):
    return api.analyze(demo_model("demo-vgg"), data, samples=128)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------------
# Files: missing, empty, random, truncated


LOADERS = {
    "load_model": lambda p: load_model(str(p)),
    "torchvision@": lambda p: load_model(f"torchvision:resnet18@{p}"),
    "load_exported": io.load_exported,
    "load_analysis": io.load_analysis,
    "npz": lambda p: load_data(f"npz:{p}"),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_missing_file_names_the_path(loader, tmp_path):
    path = tmp_path / "absent" / "model.pth"
    with pytest.raises(SnpError, match=re.escape(str(path)) + ".*does not exist"):
        LOADERS[loader](path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_empty_file_is_refused(loader, suffix, tmp_path):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    with pytest.raises(SnpError, match=re.escape(str(path)) + ".*empty"):
        LOADERS[loader](path)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_random_bytes_are_not_mistaken_for_a_pickle(suffix, tmp_path):
    """Noise must not be reported as 'a pickled model, pass --trust': that would invite trusting it."""
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    for loader in ("load_model", "torchvision@"):
        with pytest.raises(ModelLoadError) as info:
            LOADERS[loader](path)
        assert str(path) in str(info.value) and "trust" not in str(info.value)
        assert "neither safetensors nor a PyTorch file" in str(info.value)
    with pytest.raises(SnpError, match=re.escape(str(path))):
        io.load_analysis(path)
    path.rename(tmp_path / "noise.npz")
    with pytest.raises(DataError, match=r"not a NumPy \.npz archive"):
        load_data(f"npz:{tmp_path / 'noise.npz'}")


def test_truncated_pth_is_refused(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(DemoVGG().state_dict(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-4000])
    for loader in ("load_model", "torchvision@"):
        with pytest.raises(ModelLoadError, match=re.escape(str(cut)) + ".*damaged or truncated"):
            LOADERS[loader](cut)


def test_truncated_safetensors_weights_are_refused(tmp_path):
    whole = tmp_path / "whole.safetensors"
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=re.escape(str(cut))):
        load_model(f"torchvision:resnet18@{cut}")


def test_truncated_statistics_file_is_refused(vgg_analysis, tmp_path):
    whole = tmp_path / "stats.safetensors"
    vgg_analysis.save(whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 1000])
    with pytest.raises(SnpError, match=re.escape(str(cut)) + ".*damaged"):
        io.load_analysis(cut)


@pytest.mark.parametrize("version", ["3", "two"])
def test_statistics_from_a_newer_snp_are_refused(vgg_analysis, tmp_path, version):
    path = tmp_path / "stats.safetensors"
    vgg_analysis.save(path)
    future = rewrite_safetensors(path, tmp_path / "future.safetensors", snp_analysis=version)
    with pytest.raises(SnpError, match=re.escape(str(future)) + ".*(newer snp|unreadable)"):
        io.load_analysis(future)


def test_foreign_safetensors_is_not_a_statistics_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(SnpError, match=re.escape(str(path)) + ".*not an snp statistics file"):
        io.load_analysis(path)


# ----------------------------------------------------------------------------------------------
# Files: weights that do not fit


def test_checkpoint_with_another_class_count_names_keys_and_shapes(tmp_path):
    """The class count comes from fc.weight; a bias of another head must be named with both shapes."""
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(f"torchvision:resnet18@{path}")
    message = str(info.value)
    assert str(path) in message and "fc.bias has shape (1000,), model wants (10,)" in message


def test_checkpoint_of_a_deeper_architecture_names_unexpected_keys(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_file(torchvision.models.resnet34(num_classes=10).state_dict(), str(path))
    with pytest.raises(ModelLoadError) as info:
        load_model(f"torchvision:resnet18@{path}")
    assert "does not fit torchvision:resnet18" in str(info.value)
    assert re.search(r"unexpected layer\d\.\d\.\w+\.\w+ \(", str(info.value))


def test_export_whose_header_claims_other_classes_names_the_classifier(vgg_export, tmp_path):
    meta = io.read_metadata(vgg_export)
    meta["arch_kwargs"]["num_classes"] = 5
    path = rewrite_safetensors(vgg_export, tmp_path / "five.safetensors", snp=json.dumps(meta))
    with pytest.raises(ModelLoadError) as info:
        io.load_exported(path)
    assert str(path) in str(info.value)
    assert "classifier.4.weight has shape (10, 128), model wants (5, 128)" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Files: code in files, and names that lie about the content


class _WritesMarker:
    """Unpickling this creates a file: stands in for code hidden in a pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_behind_a_safetensors_name_runs_no_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.safetensors"
    torch.save({"model": _WritesMarker(str(marker))}, path)
    for spec in (str(path), f"torchvision:resnet18@{path}"):
        with pytest.raises(ModelLoadError, match="--trust"):
            load_model(spec)
    with pytest.raises(ModelLoadError, match="not an snp export"):
        io.load_exported(path)
    assert not marker.exists()


@pytest.mark.parametrize("header_size", [0x0280, 0x0380, 0x0580])
def test_safetensors_whose_header_length_looks_like_a_pickle_is_still_safetensors(tmp_path, header_size):
    from safetensors.torch import save_file

    # pad the metadata until the JSON header has the given length (low bytes 0x80 0x02..0x05 are
    # also the first bytes of a pickle)
    path = tmp_path / "x.safetensors"
    for pad in range(header_size):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"p": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") >= header_size - 7:
            break
    head = path.read_bytes()[:2]
    assert head[0] == 0x80 and head[1] == header_size >> 8  # the bytes a pickle starts with
    assert sniff_format(path) == "safetensors"
    pickled = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2)}, str(pickled), _use_new_zipfile_serialization=False)
    assert sniff_format(pickled) == "pickle"


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "vgg.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, but such files are still on people's disks
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(DemoVGG().eval(), torch.zeros(1, 1, 8, 8)), str(path))
    return path


def test_torchscript_needs_trust(torchscript_file):
    assert sniff_format(torchscript_file) == "torchscript"
    for spec in (str(torchscript_file), f"torchvision:resnet18@{torchscript_file}"):
        with pytest.raises(ModelLoadError, match=re.escape(str(torchscript_file)) + ".*TorchScript.*--trust"):
            load_model(spec)
    loaded = load_model(str(torchscript_file), trust=True)
    assert loaded.num_classes == 10 and loaded.input_shape[0] == 1
    with torch.inference_mode():
        assert loaded.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("content", ["safetensors", "zip", "legacy-pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_weights_load_by_content_whatever_the_name(content, suffix, tmp_path):
    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / f"weights{suffix}"
    if content == "safetensors":
        save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path, _use_new_zipfile_serialization=content == "zip")
    loaded = load_model(f"torchvision:resnet18@{path}")
    assert loaded.num_classes == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), original(x))
    with pytest.raises(ModelLoadError, match="bare weights without an architecture"):
        load_model(str(path))


def test_renamed_snp_export_still_loads(vgg_export, tmp_path):
    renamed = tmp_path / "vgg.pth"
    renamed.write_bytes(vgg_export.read_bytes())
    model = load_model(str(renamed)).model
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(outputs(model, x), outputs(load_model(str(vgg_export)).model, x))


def test_a_numpy_file_is_not_a_model(tmp_path):
    path = tmp_path / "model.pth"
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(ModelLoadError, match=re.escape(str(path)) + ".*NumPy"):
        load_model(str(path))


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Data


def test_empty_folder_says_what_layout_is_expected(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(DataError, match=re.escape(str(root)) + ".*no class subfolders"):
        load_data(str(root))
    (root / "cats").mkdir()
    (root / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(str(root)) + ".*no readable images"):
        load_data(str(root))


def _image_folder(root: Path, *, rgb: bool = True, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            shape = (12, 12, 3) if rgb else (12, 12)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_image_damaged_after_its_header_names_the_file(tmp_path):
    """The folder scan reads headers only; a file cut further in fails when decoded, naming the file."""
    root = _image_folder(tmp_path / "pets", per_class=1)
    broken = root / "a" / "broken.png"
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(broken)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    bundle = load_data(str(root), input_size=8)
    assert bundle.skipped == 0
    everything = [*bundle.calibration.indices, *bundle.test.indices]
    folder = bundle.calibration.dataset
    with pytest.raises(DataError, match=re.escape(str(broken)) + ".*cannot be decoded"):
        for index in everything:
            folder[index]


def test_grayscale_images_are_repeated_for_an_rgb_model(tmp_path):
    bundle = load_data(str(_image_folder(tmp_path / "gray", rgb=False)), input_size=8, channels=3)
    image, _ = bundle.test[0]
    assert image.shape == (3, 8, 8)


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.array([None] * 4, dtype=object), "y": np.zeros(4, np.int64)}, "without unpickling"),
        ({"x": np.zeros((4, 0, 2, 2), np.float32), "y": np.zeros(4, np.int64)}, "expected (N, C, H, W)"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.zeros(4)}, "expected integer class labels"),
        ({"x": np.full((4, 1, 2, 2), np.inf, np.float32), "y": np.zeros(4, np.int64)}, "NaN or infinite"),
        ({"x": np.zeros((0, 1, 2, 2), np.float32), "y": np.zeros(0, np.int64)}, "holds no samples"),
        (
            {
                "x_train": np.zeros((4, 1, 2, 2), np.float32),
                "y_train": np.zeros(4, np.int64),
                "x_test": np.zeros((4, 1, 3, 3), np.float32),
                "y_test": np.zeros(4, np.int64),
            },
            "differ in shape",
        ),
        ({"x_train": np.zeros((4, 1, 2, 2), np.float32), "y_train": np.zeros(4, np.int64)}, "missing key x_test"),
    ],
)
def test_npz_contents_are_checked(tmp_path, arrays, expected):
    spec = _npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_data(spec)
    assert "mine.npz" in str(info.value) and expected in str(info.value)


def test_npz_that_is_really_npy_or_damaged(tmp_path):
    npy = tmp_path / "arrays.npz"
    with npy.open("wb") as handle:
        np.save(handle, np.zeros((4, 1, 2, 2), np.float32))
    with pytest.raises(DataError, match=r"arrays\.npz.*single \.npy array"):
        load_data(f"npz:{npy}")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((50, 1, 8, 8), np.float32), y=np.zeros(50, np.int64))
    damaged = bytearray(good.read_bytes())
    damaged[300:400] = b"\xff" * 100
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"damaged\.npz.*damaged"):
        load_data(f"npz:{tmp_path / 'damaged.npz'}")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:500])
    with pytest.raises(DataError, match=r"cut\.npz"):
        load_data(f"npz:{tmp_path / 'cut.npz'}")


def test_wrong_input_size_is_one_clear_error(data):
    model = demo_model("demo-vgg")
    bigger = TensorImageDataset(torch.zeros(8, 1, 16, 16), torch.zeros(8, dtype=torch.long))
    with pytest.raises(AnalysisError, match=r"cannot run on inputs of shape \(1, 16, 16\)"):
        api.analyze(model, bigger)
    with pytest.raises(AnalysisError, match=r"cannot run on inputs of shape \(1, 16, 16\)"):
        api.evaluate(model, bigger)
    assert _no_hooks(model)
    assert api.evaluate(model, data)["top1"] > 95  # still usable


def test_a_torchscript_model_at_a_wrong_size_gives_the_reason_not_its_interpreters_traceback():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    scripted = torch.jit.trace(net, torch.zeros(1, 1, 8, 8))
    bigger = TensorImageDataset(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(AnalysisError, match=r"cannot run on inputs of shape \(1, 16, 16\)") as raised:
        api.evaluate(scripted, bigger)
    message = str(raised.value)
    assert "Traceback" not in message and "\n" not in message and "mat1 and mat2" in message


def test_fewer_samples_than_units_is_regularised_and_reported(data, test_images):
    model = demo_model("demo-vgg")
    analysis = api.analyze(model, data, samples=40)
    head = analysis.group("classifier.1")
    assert head.samples == 40 and head.units == 128 and head.regularised
    assert [w.split(":")[0] for w in analysis.warnings()] == ["classifier.1"]
    assert "40 calibration samples for 128 units" in analysis.warnings()[0]
    assert "use at least 256 images (now 40)" in analysis.warnings()[0]  # one sample per image, 2 per unit
    curve = head.curve
    assert np.isfinite(curve).all() and np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(1)
    # 40 centred samples span at most 39 directions, so in-sample 39 units would explain all of them;
    # the curve instead says what such fits predict on new samples and prices the unmeasured tail
    # evenly, so a threshold or budget cannot remove it for free (subspace.trusted_curve)
    assert curve[39] < 0.99
    steps = np.diff(curve[40:])
    assert np.allclose(steps, steps[0]) and steps[0] > 0
    pruned = api.prune(model, analysis, analysis.plan(keep={"classifier.1": 39}), data=data, samples=40).model
    assert torch.isfinite(outputs(pruned, test_images)).all()
    # 39 kept units from 40 samples would interpolate the calibration images and fail on new ones;
    # the compensation ridge grows as k approaches N, so the head still works on held-out images
    assert api.evaluate(pruned, data)["top1"] > 97
    assert api.fidelity(model, pruned, data) < 0.4


def test_labels_outside_the_model_classes_are_refused(data):
    model = demo_model("demo-vgg")
    labels = torch.arange(20) % 12
    wide = TensorImageDataset(stacked(data.test)[0][:20], labels)
    with pytest.raises(DataError, match=r"labels 0\.\.11 but the model predicts 10 classes \(labels 0\.\.9\)"):
        api.evaluate(model, wide, batch_size=32)


# ----------------------------------------------------------------------------------------------
# Numerics


def test_nan_weights_name_the_layer_and_the_engine_stays_usable(data):
    model = demo_model("demo-vgg")
    with torch.no_grad():
        model.features[7].weight[3, 0, 1, 1] = float("nan")
    with pytest.raises(AnalysisError, match=r"non-finite activations.*input of features\.10"):
        api.analyze(model, data, samples=64)
    assert _no_hooks(model)
    assert api.analyze(demo_model("demo-vgg"), data, samples=64).names


def test_dead_units_are_pruned_first_and_exactly(data, test_images):
    model = demo_model("demo-vgg")
    with torch.no_grad():  # zero filter and zero BN scale: a constant (dead) unit
        model.features[0].weight[:4] = 0
        model.features[1].weight[:4] = 0
    analysis = api.analyze(model, data, samples=128)
    group = analysis.group("features.0")
    assert sorted(group.order[-4:].tolist()) == [0, 1, 2, 3]
    assert torch.diagonal(group.moments.covariance())[:4].abs().max() < 1e-12
    assert any(w.startswith("features.0:") and "dead or duplicate" in w for w in analysis.warnings())
    plan = analysis.plan(keep={"features.0": 28})
    reference = outputs(model, test_images)
    for sequential in (False, True):
        pruned = api.prune(model, analysis, plan, data=data, samples=128, sequential=sequential).model
        assert pruned.features[0].out_channels == 28
        assert _relative(reference, outputs(pruned, test_images)) < 1e-5


def test_a_duplicated_unit_is_pruned_first_and_compensated(data, test_images):
    model = demo_model("demo-vgg")
    with torch.no_grad():
        conv, norm = model.features[0], model.features[1]
        conv.weight[7] = conv.weight[5]
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
            tensor[7] = tensor[5]
    analysis = api.analyze(model, data, samples=128)
    assert int(analysis.group("features.0").order[-1]) in (5, 7)
    plan = analysis.plan(keep={"features.0": 31})
    reference = outputs(model, test_images)
    for sequential in (False, True):
        pruned = api.prune(model, analysis, plan, data=data, samples=128, sequential=sequential).model
        assert _relative(reference, outputs(pruned, test_images)) < 1e-5
    uncompensated = api.prune(model, analysis, plan, compensate=False).model
    assert _relative(reference, outputs(uncompensated, test_images)) > 1e-3


def test_huge_float32_activations_give_finite_float64_statistics(test_images):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()
    images = test_images * 1e20  # activations ~1e20: their squares overflow float32, not float64
    huge = TensorImageDataset(images, torch.zeros(len(images), dtype=torch.long))
    assert torch.isfinite(model(images)).all()
    analysis = api.analyze(model, huge)
    largest = 0.0
    for group in analysis.groups:
        cov = group.moments.covariance()
        assert cov.dtype == torch.float64 and torch.isfinite(cov).all()
        largest = max(largest, float(torch.diagonal(cov).max()))
        assert np.isfinite(group.curve).all() and group.curve[-1] == pytest.approx(1)
    assert largest > float(torch.finfo(torch.float32).max)
    pruned = api.prune(model, analysis, analysis.plan(variance=0.999), data=huge).model
    out = outputs(pruned, images)
    assert torch.isfinite(out).all() and _relative(outputs(model, images), out) < 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_analyse_and_prune(data, dtype):
    model = demo_model("demo-vgg").to(dtype)
    analysis = api.analyze(model, data, samples=64)
    assert all(g.moments.total.dtype == torch.float64 for g in analysis.groups)
    plan = analysis.plan(flops_reduction=0.5)
    pruned = api.prune(model, analysis, plan, data=data, samples=64).model
    assert next(pruned.parameters()).dtype == dtype
    assert api.evaluate(pruned, data)["top1"] > 90


# ----------------------------------------------------------------------------------------------
# Devices and memory


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(data):
    with pytest.raises(SnpError, match="no CUDA device"):
        api.resolve_device("cuda")
    with pytest.raises(SnpError, match="no CUDA device"):
        api.analyze(demo_model("demo-vgg"), data, device="cuda")


class _Hungry(DemoVGG):
    """Runs out of memory on batches larger than ``limit``, like a GPU with too little memory."""

    limit = 8
    error: type[Exception] = torch.cuda.OutOfMemoryError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def _hungry(error: type[Exception] = torch.cuda.OutOfMemoryError) -> _Hungry:
    model = _Hungry()
    model.error = error
    model.load_state_dict(demo_model("demo-vgg").state_dict())
    return model.eval()


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_during_analysis_suggests_a_smaller_batch(data, error):
    model = _hungry(error)
    with pytest.raises(OutOfMemoryError, match=r"analysis ran out of memory.*--batch-size") as info:
        api.analyze(model, data, samples=64, batch_size=32)
    assert isinstance(info.value, AnalysisError)
    assert _no_hooks(model)
    analysis = api.analyze(model, data, samples=64, batch_size=8)
    assert analysis.names == api.analyze(demo_model("demo-vgg"), data, samples=64).names


def test_out_of_memory_during_pruning_and_evaluation(data, vgg_analysis):
    model = _hungry()
    before = copy.deepcopy(model.state_dict())
    plan = vgg_analysis.plan(flops_reduction=0.5)
    with pytest.raises(OutOfMemoryError, match=r"pruning ran out of memory.*--batch-size"):
        api.prune(model, vgg_analysis, plan, data=data, samples=64, batch_size=32)
    assert _no_hooks(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruned = api.prune(model, vgg_analysis, plan, data=data, samples=64, batch_size=8).model
    with pytest.raises(OutOfMemoryError, match="evaluation ran out of memory"):
        api.evaluate(pruned, data, batch_size=64)
    assert api.evaluate(pruned, data, batch_size=8)["top1"] > 90


def test_other_runtime_errors_are_not_called_out_of_memory(data):
    class Broken(DemoVGG):
        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("something else broke")
            return super().forward(x)

    with pytest.raises(RuntimeError, match="something else broke"):
        api.analyze(Broken().eval(), data, samples=16)


# ----------------------------------------------------------------------------------------------
# Cancelling


class CancelAfter(Reporter):
    """Asks to cancel after ``calls`` more checks, counted from the first progress message that
    contains ``stage`` (from the start when ``stage`` is empty)."""

    def __init__(self, stage: str = "", calls: int = 0) -> None:
        self.stage, self.calls = stage, calls
        self.armed = not stage
        self.checks = 0

    def update(self, fraction: float, message: str = "") -> None:
        if self.stage and self.stage in message:
            self.armed = True

    def cancel_requested(self) -> bool:
        if not self.armed:
            return False
        self.checks += 1
        return self.checks > self.calls


@pytest.mark.parametrize(("stage", "calls"), [("", 0), ("statistics", 0), ("statistics", 2), ("ordering", 1)])
def test_cancelling_the_analysis_leaves_the_model_untouched(data, stage, calls):
    model = demo_model("demo-vgg")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(Cancelled):
        api.analyze(model, data, samples=128, batch_size=32, reporter=CancelAfter(stage, calls))
    assert _no_hooks(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("stage", "calls"), [("pruning features.0", 0), ("pruning features.7", 1)])
def test_cancelling_sequential_pruning(data, vgg_analysis, stage, calls):
    model = demo_model("demo-vgg")
    before = copy.deepcopy(model.state_dict())
    plan = vgg_analysis.plan(flops_reduction=0.5)
    with pytest.raises(Cancelled):
        api.prune(model, vgg_analysis, plan, data=data, samples=64, reporter=CancelAfter(stage, calls))
    assert _no_hooks(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert api.prune(model, vgg_analysis, plan, data=data, samples=64).record.kept


def test_cancelling_the_reordering(vgg_analysis):
    with pytest.raises(Cancelled):
        vgg_analysis.reorder("greedy", reporter=CancelAfter("ordering", 1))
    assert vgg_analysis.ordering == "output" and vgg_analysis.group("features.0").order is not None


@pytest.mark.parametrize("stage", ["", "writing", "verifying"])
def test_cancelling_an_export_leaves_nothing_behind(tmp_path, stage):
    model = demo_model("demo-vgg")
    fresh, earlier = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    earlier.write_bytes(b"an earlier export")
    for target in (fresh, earlier):
        with pytest.raises(Cancelled):
            io.export_model(
                model, target, arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8), reporter=CancelAfter(stage)
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors"]
    assert earlier.read_bytes() == b"an earlier export"
    io.export_model(model, fresh, arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8))
    assert load_model(str(fresh)).num_classes == 10


# ----------------------------------------------------------------------------------------------
# Writing: full disks, forbidden folders, killed processes


def test_full_disk_during_export_keeps_the_earlier_file(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "m.safetensors"
    target.write_bytes(b"earlier")

    def fills_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    with pytest.raises(SnpError, match=re.escape(str(target)) + ".*no space left"):
        io.export_model(demo_model("demo-vgg"), target, arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"] and target.read_bytes() == b"earlier"


def test_full_disk_while_saving_statistics(vgg_analysis, tmp_path, monkeypatch):
    import safetensors.torch

    def fills_the_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    with pytest.raises(SnpError, match="no space left"):
        vgg_analysis.save(tmp_path / "stats.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_no_permission_to_create_the_temporary_file(tmp_path, monkeypatch):
    """What a read-only folder looks like, also when the tests run as root."""

    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", forbidden)
    with pytest.raises(SnpError, match="no permission to write in"):
        io.export_model(
            demo_model("demo-vgg"), tmp_path / "m.safetensors", arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8)
        )


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import safetensors.torch
    from snp_engine import io
    from snp_engine.models import load_model

    real = safetensors.torch.save_file

    def slow(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # half of it is on the disk
        print("WRITING", flush=True)
        time.sleep(120)

    safetensors.torch.save_file = slow
    loaded = load_model("torchvision:resnet18")
    io.export_model(loaded.model, sys.argv[1], arch=loaded.arch, num_classes=1000, input_shape=(3, 32, 32))
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_export_leaves_the_earlier_file_intact(tmp_path):
    target = tmp_path / "model.safetensors"
    earlier = b"an earlier, complete export" * 1000
    target.write_bytes(earlier)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "WRITING"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert target.read_bytes() == earlier
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    # The temporary file cannot be removed by a process that is killed; it is named so it is recognisable.
    assert all(re.fullmatch(r"\.model\.safetensors\..+\.tmp", name) for name in leftovers), leftovers
