"""The command line on a user's own model and data, the way a new user would try it.

* A torchvision ResNet-18 trained here at 3x32x32 and given as ``torchvision:resnet18@weights.pth``
  with its own images as ``npz:calib.npz`` runs at 32x32 (nothing resized), and every accuracy
  snp reports equals a count made independently with plain torch.
* Wrong preprocessing (channels in the wrong order) is flagged as near-chance; ``--input-size``
  overrides the size and says so.
* Every registered data source and every kind of model source works end to end (a source
  registered without a case here fails the test).

To make the reported accuracies telling numbers rather than 100 %, a known share of the labels
in the calibration and held-out files is deliberately wrong; the independent count sees the same
files, so both must agree exactly.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from snp_engine import cli
from snp_engine.datasources import DATA_SOURCES

SIZE = 32
CLASSES = 4
CHANCE = 100.0 / CLASSES
TRAIN_SAMPLES, CALIB_SAMPLES, HELD_OUT_SAMPLES = 256, 256, 96


# ----------------------------------------------------------------------------------------------
# Helpers


def run(*argv: str) -> tuple[int, str, str]:
    """``snp ARGV`` in-process; usable from module-scoped fixtures (capsys is per test)."""
    out, err = StringIO(), StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def run_json(*argv: str) -> dict:
    code, out, err = run(*argv, "--json", "--quiet")
    assert code == 0, err + out
    return json.loads(out)


def patterns(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clearly separable 3x32x32 classes plus noise: a bright red, green or blue channel, or
    horizontal stripes. Balanced classes in a shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator) * 0.5
    for channel in range(3):
        images[labels == channel, channel] += 1.5
    stripes = torch.zeros(SIZE, SIZE)
    stripes[::4] = 2.0
    images[labels == 3] += stripes
    order = torch.randperm(n, generator=generator)
    return images[order].numpy().astype(np.float32), labels[order].numpy().astype(np.int64)


def mislabel(labels: np.ndarray, every: int) -> np.ndarray:
    """Every ``every``-th label moved to the next class, so accuracy is a telling number."""
    labels = labels.copy()
    labels[::every] = (labels[::every] + 1) % CLASSES
    return labels


def top1_of(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) over the whole array, computed with plain torch, independently of snp."""
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    return 100.0 * float((predicted == labels).mean())


def image_folder(root: Path, *, size: tuple[int, int], mode: str, classes: int, per_class: int, seed: int) -> Path:
    """``root/<class>/<n>.png`` with random pixels."""
    rng = np.random.default_rng(seed)
    depth = 3 if mode == "RGB" else 1
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = (rng.random((*size, depth)) * 255).astype(np.uint8)
            Image.fromarray(pixels if depth == 3 else pixels[..., 0], mode).save(folder / f"{index}.png")
    return root


# ----------------------------------------------------------------------------------------------
# (a) + (b): a user's own torchvision model, trained at 3x32x32


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """ResNet-18 (4 classes) trained here on 32x32 images, saved as a state dict, with an x/y
    calibration npz (1 in 8 labels wrong) and a separate held-out npz (1 in 4 labels wrong)."""
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    images, labels = (torch.from_numpy(a) for a in patterns(TRAIN_SAMPLES, seed=1))
    model = torchvision.models.resnet18(num_classes=CLASSES)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        for start in range(0, TRAIN_SAMPLES, 32):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[start : start + 32]), labels[start : start + 32])
            loss.backward()
            optimiser.step()
    model.eval()
    weights = root / "weights.pth"
    torch.save(model.state_dict(), weights)

    calib_x, calib_y = patterns(CALIB_SAMPLES, seed=2)
    calib_y = mislabel(calib_y, 8)
    calib = root / "calib.npz"
    np.savez(calib, x=calib_x, y=calib_y)
    held_x, held_y = patterns(HELD_OUT_SAMPLES, seed=3)
    held_y = mislabel(held_y, 4)
    held_out = root / "heldout.npz"
    np.savez(held_out, x=held_x, y=held_y)

    fresh = torchvision.models.resnet18(num_classes=CLASSES)  # the saved file, not the trained object
    fresh.load_state_dict(torch.load(weights, weights_only=True))
    return {
        "root": root,
        "spec": f"torchvision:resnet18@{weights}",
        "model": fresh,
        "calib": calib,
        "calib_xy": (calib_x, calib_y),
        "held_out": held_out,
        "held_out_xy": (held_x, held_y),
    }


def test_trained_model_is_well_above_chance_on_its_own_data(user_model):
    """The premise of the tests below: the model really learned the task."""
    images, labels = user_model["calib_xy"]
    assert top1_of(user_model["model"], images, labels) > 80


def test_prune_user_model_on_its_own_calibration_npz(user_model, tmp_path):
    """The reported case: a 32x32 torchvision model with its own x/y npz must run at 32x32 and
    report the accuracy it really has there."""
    code, out, err = run(
        "prune",
        "--model",
        user_model["spec"],
        "--data",
        f"npz:{user_model['calib']}",
        "--flops-reduction",
        "0.5",
        "--out",
        str(tmp_path / "small.safetensors"),
        "--json",
        "--quiet",
    )
    assert code == 0, err
    result = json.loads(out)
    expected = top1_of(user_model["model"], *user_model["calib_xy"])
    assert result["input_shape"] == [3, SIZE, SIZE]
    assert not any("resized" in note for note in result["notes"]), result["notes"]
    assert result["top1_before"] == pytest.approx(expected, abs=1e-6)
    assert result["eval_samples"] == CALIB_SAMPLES
    assert "calibration data" in result["eval_data"] and "calib.npz" in result["eval_data"]
    dense = result["dense_check"]
    assert dense["near_chance"] is False and dense["chance"] == pytest.approx(CHANCE)
    assert dense["samples"] == CALIB_SAMPLES and dense["top1"] == pytest.approx(expected, abs=1e-6)
    assert not any("chance" in warning for warning in result["warnings"])
    assert result["top1_after"] > 2.4 * CHANCE
    assert result["flops_after"] < 0.55 * result["flops_before"]


def test_eval_with_eval_data_scores_the_held_out_file(user_model):
    result = run_json(
        "eval",
        "--model",
        user_model["spec"],
        "--data",
        f"npz:{user_model['calib']}",
        "--eval-data",
        f"npz:{user_model['held_out']}",
    )
    assert result["samples"] == HELD_OUT_SAMPLES
    assert result["top1"] == pytest.approx(top1_of(user_model["model"], *user_model["held_out_xy"]), abs=1e-6)


def test_eval_on_the_held_out_npz_as_data(user_model):
    """What works today instead of ``eval --eval-data``: the held-out file as ``--data``."""
    result = run_json("eval", "--model", user_model["spec"], "--data", f"npz:{user_model['held_out']}")
    expected = top1_of(user_model["model"], *user_model["held_out_xy"])
    assert result["samples"] == HELD_OUT_SAMPLES and result["input_shape"] == [3, SIZE, SIZE]
    assert result["top1"] == pytest.approx(expected, abs=1e-6)
    assert "heldout.npz" in result["eval_data"]


@pytest.fixture(scope="module")
def pruned_with_eval_data(user_model):
    """``snp prune`` calibrating on calib.npz and reporting on heldout.npz (one-shot: faster)."""
    return run_json(
        "prune",
        "--model",
        user_model["spec"],
        "--data",
        f"npz:{user_model['calib']}",
        "--eval-data",
        f"npz:{user_model['held_out']}",
        "--flops-reduction",
        "0.5",
        "--one-shot",
        "--out",
        str(user_model["root"] / "held.safetensors"),
    )


def test_prune_eval_data_accuracies_are_on_the_held_out_file(user_model, pruned_with_eval_data):
    result = pruned_with_eval_data
    assert result["eval_samples"] == HELD_OUT_SAMPLES
    assert result["top1_before"] == pytest.approx(top1_of(user_model["model"], *user_model["held_out_xy"]), abs=1e-6)
    assert "heldout.npz" in result["eval_data"]
    assert result["dense_check"]["samples"] == CALIB_SAMPLES  # the dense check stays on the calibration data


def test_prune_eval_data_is_not_labelled_as_calibration_data(pruned_with_eval_data):
    assert "calibration" not in pruned_with_eval_data["eval_data"]


def test_wrong_channel_order_is_flagged_near_chance(user_model, tmp_path):
    """Channels in the wrong order (a preprocessing mistake): still exit 0, but said loudly."""
    images, labels = user_model["calib_xy"]
    shuffled = np.ascontiguousarray(images[:, [1, 2, 0]])
    assert top1_of(user_model["model"], shuffled, labels) < 1.5 * CHANCE  # the premise
    path = tmp_path / "bgr.npz"
    np.savez(path, x=shuffled, y=labels)
    code, out, err = run("eval", "--model", user_model["spec"], "--data", f"npz:{path}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["dense_check"]["near_chance"] is True
    assert any("chance" in warning for warning in result["warnings"]), result["warnings"]
    assert "snp: warning:" in err and "chance" in err


def test_input_size_override_is_noted(user_model):
    result = run_json(
        "eval", "--model", user_model["spec"], "--data", f"npz:{user_model['calib']}", "--input-size", "64"
    )
    assert result["input_shape"] == [3, 64, 64]
    assert any("resized 32x32 -> 64x64" in note for note in result["notes"]), result["notes"]
    assert result["samples"] == CALIB_SAMPLES


# ----------------------------------------------------------------------------------------------
# (c) every data source into demo-vgg (recorded input size 1x8x8)


def _digits_case(tmp_path: Path) -> tuple[str, int, bool]:
    return "digits", 497, False  # the fixed test split


def _npz_case(tmp_path: Path) -> tuple[str, int, bool]:
    rng = np.random.default_rng(0)
    path = tmp_path / "gray8.npz"
    np.savez(path, x=rng.standard_normal((30, 1, 8, 8)).astype(np.float32), y=np.arange(30) % 10)
    return f"npz:{path}", 30, False


def _folder_case(tmp_path: Path) -> tuple[str, int, bool]:
    root = image_folder(tmp_path / "rgb12", size=(12, 12), mode="RGB", classes=3, per_class=4, seed=0)
    return str(root), 12, True


# source name -> how to make a small example: (spec, samples expected, whether a note must say it was adapted)
DATA_SOURCE_CASES = {"digits": _digits_case, "npz": _npz_case, "folder": _folder_case}


def test_every_registered_data_source_has_a_case():
    assert set(DATA_SOURCE_CASES) == set(DATA_SOURCES)


@pytest.mark.parametrize("source", list(DATA_SOURCES))
def test_eval_demo_vgg_on_every_data_source(source, tmp_path):
    spec, samples, adapted = DATA_SOURCE_CASES[source](tmp_path)
    result = run_json("eval", "--model", "demo-vgg", "--data", spec)
    assert result["input_shape"] == [1, 8, 8]
    assert result["samples"] == samples
    assert 0 <= result["top1"] <= 100
    if adapted:
        assert any("-> 8x8" in note for note in result["notes"]), result["notes"]
    else:
        assert result["notes"] == []


def test_rgb_folder_into_grey_model_note_says_greyscale(tmp_path):
    root = image_folder(tmp_path / "rgb12", size=(12, 12), mode="RGB", classes=3, per_class=2, seed=1)
    notes = run_json("eval", "--model", "demo-vgg", "--data", str(root))["notes"]
    assert len(notes) == 1 and "repeated" not in notes[0] and ("grey" in notes[0] or "gray" in notes[0])


# ----------------------------------------------------------------------------------------------
# (d) every kind of model source


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Random-init torchvision models (7 classes) as a state dict (.pth and .safetensors), a
    pickled nn.Module and a TorchScript file."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(resnet.state_dict(), root / "resnet18.pth")
    save_file(resnet.state_dict(), str(root / "resnet18.safetensors"))
    mobilenet = torchvision.models.mobilenet_v2(num_classes=7).eval()
    torch.save(mobilenet, root / "mobilenet.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated
        torch.jit.trace(mobilenet, torch.zeros(1, 3, 64, 64)).save(str(root / "mobilenet.ts"))
    return root


# id -> (spec with {root} / {export} placeholders, extra arguments, expected input_shape, expected classes)
MODEL_CASES = {
    "demo-vgg": ("demo-vgg", (), [1, 8, 8], 10),
    "demo-resnet": ("demo-resnet", (), [1, 8, 8], 10),
    "torchvision-resnet18": ("torchvision:resnet18", (), [3, 224, 224], 1000),
    "torchvision-mobilenet_v2": ("torchvision:mobilenet_v2", (), [3, 224, 224], 1000),
    "timm-resnet18": ("timm:resnet18", (), [3, 224, 224], 1000),
    "state-dict-pth": ("torchvision:resnet18@{root}/resnet18.pth", (), [3, 224, 224], 7),
    "state-dict-safetensors": ("torchvision:resnet18@{root}/resnet18.safetensors", (), [3, 224, 224], 7),
    "snp-export": ("{export}", (), [1, 8, 8], 10),
    "pickle": ("{root}/mobilenet.pt", ("--trust",), [3, 224, 224], 7),
    "torchscript": ("{root}/mobilenet.ts", ("--trust",), [3, 224, 224], 7),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_info_on_every_model_source(case, model_files, vgg_export):
    spec, extra, shape, classes = MODEL_CASES[case]
    spec = spec.format(root=model_files, export=vgg_export)
    result = run_json("info", "--model", spec, *extra)
    assert result["input_shape"] == shape
    assert result["num_classes"] == classes
    assert result["params"] > 0 and result["flops"] > 0
    if case == "torchscript":  # compiled: no layers to trace, and the reason is said
        assert result["groups"] == [] and any("TorchScript" in w for w in result["warnings"])
    else:
        assert len(result["groups"]) >= 1


def test_every_registered_model_source_has_a_case(model_files, vgg_export):
    from snp_engine.modelsources import MODEL_SOURCES, find_source

    specs = [spec.format(root=model_files, export=vgg_export) for spec, *_ in MODEL_CASES.values()]
    assert {find_source(spec).name for spec in specs} == set(MODEL_SOURCES)


@pytest.mark.parametrize("name", ["mobilenet.pt", "mobilenet.ts"], ids=["pickle", "torchscript"])
def test_code_carrying_model_files_need_trust(name, model_files):
    code, out, err = run("info", "--model", str(model_files / name), "--json", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert "--trust" in json.loads(out)["error"]


def test_fixed_size_pickled_model_on_other_sized_data_is_resized_and_said(tmp_path):
    """A plain nn.Sequential (flatten into a linear layer: 28x28 only) on 32x32 data runs at 28x28, in one note."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 3)
    ).eval()
    torch.save(net, tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((12, 1, 32, 32)).astype(np.float32), y=np.arange(12) % 3)
    for command in ("info", "eval"):
        data = () if command == "info" else ("--data", f"npz:{tmp_path / 'd.npz'}")
        result = run_json(command, "--model", str(tmp_path / "net.pt"), "--trust", *data)
        assert result["input_shape"] == [1, 28, 28]
    assert len(result["notes"]) == 1 and "resized 32x32 -> 28x28" in result["notes"][0], result["notes"]
    assert result["samples"] == 12


def test_uint8_channels_last_npz_reads_as_the_same_images_in_a_folder(tmp_path):
    """The same pixels as a uint8 (N, H, W, C) npz and as PNG files give the same accuracy; the npz says in
    one note what it converted."""
    rng = np.random.default_rng(4)
    pixels = (rng.random((24, 8, 8, 3)) * 255).astype(np.uint8)
    labels = np.arange(24) % 10
    np.savez(tmp_path / "pixels.npz", x=pixels, y=labels)
    root = tmp_path / "pixels"
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (root / f"{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"{label}" / f"{index}.png")
    spec = f"torchvision:resnet18@{tmp_path / 'r.pth'}"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r.pth")
    from_npz = run_json("eval", "--model", spec, "--data", f"npz:{tmp_path / 'pixels.npz'}")
    from_folder = run_json("eval", "--model", spec, "--data", str(root))
    assert from_npz["input_shape"] == from_folder["input_shape"] == [3, 8, 8]
    assert from_npz["top1"] == from_folder["top1"] and from_npz["samples"] == 24
    assert from_folder["notes"] == [] and len(from_npz["notes"]) == 1
    assert "channels-last" in from_npz["notes"][0] and "uint8" in from_npz["notes"][0]


def test_a_network_of_ones_own_class_prunes_to_torchscript_or_onnx(tmp_path):
    """A pickled nn.Sequential has no architecture an snp file could rebuild: .safetensors is refused
    before any work with the way out, and --out .pt (TorchScript) / .onnx writes the pruned network,
    which loads without its code and computes what the pruning computed."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).eval()
    torch.save(net, tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=images, y=np.arange(48) % 3)
    common = ("prune", "--model", str(tmp_path / "net.pt"), "--trust", "--data", f"npz:{tmp_path / 'd.npz'}")
    common += ("--flops-reduction", "0.5", "--one-shot")
    code, _, err = run(*common, "--out", str(tmp_path / "pruned.safetensors"), "--quiet")
    assert code != 0 and "--out pruned.pt" in err and "--out pruned.onnx" in err
    assert not (tmp_path / "pruned.safetensors").exists()
    result = run_json(*common, "--out", str(tmp_path / "pruned.pt"))
    assert result["out"] == str(tmp_path / "pruned.pt") and sum(result["keep"].values()) < 32
    scripted = torch.jit.load(str(tmp_path / "pruned.pt"))
    widths = [p.shape[0] for name, p in scripted.named_parameters() if name.endswith("weight") and p.dim() == 4]
    assert widths and widths[0] < 16  # physically smaller
    again = run_json("eval", "--model", str(tmp_path / "pruned.pt"), "--trust", "--data", f"npz:{tmp_path / 'd.npz'}")
    assert again["top1"] == pytest.approx(result["top1_after"])
    pytest.importorskip("onnxruntime")
    onnx = run_json(*common, "--out", str(tmp_path / "pruned.onnx"))
    assert onnx["out"] == str(tmp_path / "pruned.onnx") and (tmp_path / "pruned.onnx").stat().st_size > 0


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [(((32, 32), (32, 32), (40, 36)), [3, 32, 32]), (((300, 260), (260, 300), (300, 260)), [3, 224, 224])],
    ids=["small", "photos"],
)
def test_a_folder_of_mixed_sizes_runs_at_its_most_common_size_unless_larger_than_the_models(tmp_path, sizes, expected):
    """Small images of a few sizes are not blown up to torchvision's 224x224: a model that takes any
    size runs at their most common size; photos larger than that are brought down to it."""
    rng = np.random.default_rng(0)
    for label in range(2):
        (tmp_path / "images" / f"c{label}").mkdir(parents=True)
        for index, (height, width) in enumerate(sizes):
            pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(tmp_path / "images" / f"c{label}" / f"{index}.png")
    result = run_json("eval", "--model", "torchvision:resnet18", "--data", str(tmp_path / "images"))
    assert result["input_shape"] == expected
    note = next(line for line in result["notes"] if "resized mixed sizes" in line)
    assert f"-> {expected[1]}x{expected[2]}" in note
    assert ("most common size" in note) == (expected[1] == 32)
