"""The ``snp`` command on whatever people have on disk: every problem is one ``snp: error:`` line naming
the file or layer, exit code 2, and nothing half-written; warnings go to stderr and the JSON."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from snp_engine import api, cli, io
from snp_engine.errors import OutOfMemoryError
from snp_engine.models import DemoVGG, load_model
from tests.engine.helpers import rewrite_safetensors


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> tuple[dict, str]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out), err


def assert_error(code: int, out: str, err: str, pattern: str) -> str:
    """Exit 2 and exactly one ``snp: error:`` line (after any warnings) that matches ``pattern``."""
    assert code == 2, err
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.strip().splitlines() if line.startswith("snp: error: ")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ----------------------------------------------------------------------------------------------
# Model files


def test_missing_model_file(capsys, tmp_path):
    path = tmp_path / "gone.safetensors"
    assert_error(*run(capsys, "info", "--model", str(path)), re.escape(str(path)) + ".*does not exist")
    assert_error(*run(capsys, "info", "--model", f"torchvision:resnet18@{path}"), "does not exist")


@pytest.mark.parametrize(
    ("content", "expected"), [(b"", "empty"), (np.random.default_rng(0).bytes(3000), "neither safetensors")]
)
def test_empty_or_random_model_file(capsys, tmp_path, content, expected):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    for spec in (str(path), f"torchvision:resnet18@{path}"):
        line = assert_error(*run(capsys, "eval", "--model", spec, "--data", "digits"), expected)
        assert str(path) in line and "--trust" not in line


def test_truncated_export(capsys, vgg_export, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(vgg_export.read_bytes()[:-5000])
    assert_error(*run(capsys, "eval", "--model", str(cut), "--data", "digits"), re.escape(str(cut)))


def test_weights_of_another_architecture_name_keys_and_shapes(capsys, tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(DemoVGG().state_dict(), path)
    line = assert_error(*run(capsys, "info", "--model", f"torchvision:alexnet@{path}"), "does not fit")
    assert re.search(r"features\.\d+\.weight has shape \(\d+(, \d+)*\), model wants", line) or "missing" in line


def test_export_from_a_newer_snp(capsys, vgg_export, tmp_path):
    future = rewrite_safetensors(vgg_export, tmp_path / "future.safetensors", snp_format="7")
    assert_error(*run(capsys, "info", "--model", str(future)), "newer snp.*upgrade")


def test_foreign_safetensors_as_model_and_as_statistics(capsys, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(DemoVGG().state_dict(), str(path))
    assert_error(*run(capsys, "info", "--model", str(path)), "bare weights.*torchvision:ARCH@")
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--stats",
        str(path),
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "p.safetensors"),
    )
    assert_error(code, out, err, re.escape(str(path)) + ".*not an snp statistics file")
    assert leftovers(tmp_path) == ["weights.safetensors"]


class _WritesMarker:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_without_trust_runs_no_code(capsys, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save(_WritesMarker(str(marker)), path)
    assert_error(*run(capsys, "info", "--model", str(path)), "--trust")
    assert not marker.exists()


def test_torchscript_needs_trust(capsys, tmp_path):
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(DemoVGG().eval(), torch.zeros(1, 1, 8, 8)), str(path))
    assert_error(*run(capsys, "info", "--model", str(path)), "TorchScript.*--trust")
    result, _ = run_json(
        capsys, "eval", "--model", str(path), "--data", "digits", "--input-size", "8", "--trust", "--quiet"
    )
    assert result["samples"] == 497


def test_renamed_export_loads_by_content(capsys, vgg_export, tmp_path):
    renamed = tmp_path / "vgg.pth"
    renamed.write_bytes(vgg_export.read_bytes())
    result, _ = run_json(capsys, "eval", "--model", str(renamed), "--data", "digits", "--quiet")
    assert result["top1"] > 95


# ----------------------------------------------------------------------------------------------
# Data


def _folder(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    assert_error(*run(capsys, "eval", "--model", "demo-vgg", "--data", str(tmp_path / "images")), "no class subfolders")


def test_unreadable_images_are_skipped_and_counted(capsys, tmp_path):
    root = _folder(tmp_path / "pets")
    (root / "a" / "junk.jpg").write_bytes(b"not an image")
    (root / "b" / "empty.png").write_bytes(b"")
    result, err = run_json(capsys, "eval", "--model", "demo-vgg", "--data", str(root))
    assert result["warnings"][0] == f"skipped 2 unreadable image file(s) in {root}"
    assert f"snp: warning: skipped 2 unreadable image file(s) in {root}" in err


def test_image_damaged_inside_names_the_file(capsys, tmp_path):
    root = _folder(tmp_path / "pets")
    broken = root / "b" / "broken.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:2000])
    out = tmp_path / "p.safetensors"
    # prune reads both splits (calibration and test), wherever the broken image landed
    assert_error(
        *run(
            capsys,
            "prune",
            "--model",
            "demo-vgg",
            "--data",
            str(root),
            "--one-shot",
            "--variance",
            "0.9",
            "--out",
            str(out),
            "--quiet",
        ),
        re.escape(str(broken)) + ".*cannot be decoded",
    )
    assert not out.exists()


def test_colour_data_for_a_grayscale_model(capsys, tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((6, 3, 8, 8), np.float32), y=np.arange(6) % 2)
    assert_error(
        *run(capsys, "eval", "--model", "demo-vgg", "--data", f"npz:{tmp_path / 'rgb.npz'}"),
        "3-channel images but the model expects 1 channel",
    )


def test_npz_with_missing_keys(capsys, tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((6, 1, 8, 8), np.float32))
    assert_error(
        *run(capsys, "eval", "--model", "demo-vgg", "--data", f"npz:{tmp_path / 'd.npz'}"),
        r"d\.npz.*missing key x, y \(found: images\)",
    )


def test_wrong_input_size(capsys):
    assert_error(
        *run(capsys, "info", "--model", "demo-vgg", "--input-size", "16"),
        r"cannot run on inputs of shape \(1, 16, 16\)",
    )
    assert_error(
        *run(capsys, "eval", "--model", "demo-vgg", "--data", "digits", "--input-size", "12"),
        r"cannot run on inputs of shape \(1, 12, 12\)",
    )


@pytest.mark.slow
def test_fixed_size_model_refuses_another_input_size(capsys):
    assert_error(
        *run(capsys, "info", "--model", "torchvision:vit_b_16", "--input-size", "32"),
        "vit_b_16 only takes 224x224 inputs",
    )


def test_labels_outside_the_model_classes(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.standard_normal((24, 1, 8, 8)).astype(np.float32), y=np.arange(24) % 12)
    spec = f"npz:{tmp_path / 'wide.npz'}"
    message = r"labels 0\.\.11 but the model predicts 10 classes \(labels 0\.\.9\)"
    assert_error(*run(capsys, "eval", "--model", "demo-vgg", "--data", spec), message)
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--eval-data",
        spec,
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "p.safetensors"),
    )
    assert_error(code, out, err, message)
    assert "finding prunable layers" not in err  # refused before the analysis
    assert leftovers(tmp_path) == ["wide.npz"]


def test_fewer_samples_than_units_is_a_warning_naming_the_layer(capsys, tmp_path):
    result, err = run_json(
        capsys,
        "analyze",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "40",
        "--out",
        str(tmp_path / "s.stats"),
    )
    assert [w.split(":")[0] for w in result["warnings"]] == ["classifier.1"]
    assert "40 calibration samples for 128 units" in result["warnings"][0]
    assert "snp: warning: classifier.1: singular statistics" in err
    assert [g["name"] for g in result["groups"] if g["regularised"]] == ["classifier.1"]
    pruned, _ = run_json(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "40",
        "--one-shot",
        "--variance",
        "0.95",
        "--out",
        str(tmp_path / "p.safetensors"),
        "--quiet",
    )
    assert any(w.startswith("classifier.1:") for w in pruned["warnings"])
    assert 0 <= pruned["fidelity"] < 1


# ----------------------------------------------------------------------------------------------
# Numerics


def test_nan_weights_name_the_layer(capsys, vgg_export, tmp_path):
    with safe_open(str(vgg_export), framework="pt") as handle:
        weight = handle.get_tensor("features.7.weight").clone()
    weight[0, 0, 0, 0] = float("nan")
    broken = rewrite_safetensors(vgg_export, tmp_path / "nan.safetensors", tensors={"features.7.weight": weight})
    code, out, err = run(
        capsys, "analyze", "--model", str(broken), "--data", "digits", "--out", str(tmp_path / "s.stats")
    )
    assert_error(code, out, err, r"non-finite activations \(NaN or Inf\) at the input of features\.10")
    assert leftovers(tmp_path) == ["nan.safetensors"]


# ----------------------------------------------------------------------------------------------
# Devices and memory


def _pretend_cuda(monkeypatch, failing: str) -> list[tuple[str, str]]:
    """The CLI believes it runs on CUDA; ``failing`` (analyze/prune) runs out of memory there, and
    everything else runs on the CPU. Returns the (step, device) calls."""
    calls: list[tuple[str, str]] = []
    from snp_engine.cli import plumbing

    real_prepare = plumbing.prepare
    monkeypatch.setattr(plumbing, "prepare", lambda args, **kw: (real_prepare(args, **kw)[0], torch.device("cuda")))
    for name in ("analyze", "prune"):
        real = getattr(api, name)

        def step(*args, device, real=real, name=name, **kwargs):
            kind = torch.device(device).type
            calls.append((name, kind))
            if kind == "cuda" and name == failing:
                raise OutOfMemoryError(
                    f"{name} ran out of memory on cuda with batches of 64; "
                    "try a smaller batch size (--batch-size) or the CPU (--device cpu)"
                )
            return real(*args, device="cpu", **kwargs)

        monkeypatch.setattr(api, name, step)
    return calls


@pytest.mark.parametrize("failing", ["analyze", "prune"])
def test_out_of_memory_without_fallback_suggests_a_smaller_batch(capsys, monkeypatch, tmp_path, failing):
    _pretend_cuda(monkeypatch, failing)
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--one-shot",
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "p.safetensors"),
        "--quiet",
    )
    assert_error(code, out, err, r"ran out of memory.*--batch-size")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["analyze", "prune"])
def test_cpu_fallback_retries_on_the_cpu(capsys, monkeypatch, tmp_path, failing):
    calls = _pretend_cuda(monkeypatch, failing)
    result, err = run_json(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--one-shot",
        "--variance",
        "0.9",
        "--cpu-fallback",
        "--out",
        str(tmp_path / "p.safetensors"),
    )
    assert (failing, "cuda") in calls and (failing, "cpu") in calls
    assert calls[-1] == ("prune", "cpu")
    assert any("retrying on the CPU" in w for w in result["warnings"])
    assert "snp: warning:" in err and "retrying on the CPU" in err
    assert load_model(result["out"]).num_classes == 10


def test_cpu_fallback_for_the_analysis_command(capsys, monkeypatch, tmp_path):
    calls = _pretend_cuda(monkeypatch, "analyze")
    result, _ = run_json(
        capsys,
        "analyze",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--cpu-fallback",
        "--out",
        str(tmp_path / "s.stats"),
        "--quiet",
    )
    assert calls == [("analyze", "cuda"), ("analyze", "cpu")]
    assert io.load_analysis(result["out"]).names == [g["name"] for g in result["groups"]]


# ----------------------------------------------------------------------------------------------
# Writing


def _fill_disk(monkeypatch, error: BaseException) -> None:
    import safetensors.torch

    def write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", write)


def test_full_disk_keeps_the_earlier_export(capsys, monkeypatch, tmp_path):
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"earlier")
    _fill_disk(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    code, stdout, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--one-shot",
        "--variance",
        "0.9",
        "--out",
        str(out),
        "--quiet",
    )
    assert_error(code, stdout, err, re.escape(str(out)) + ": no space left on the disk")
    assert out.read_bytes() == b"earlier" and leftovers(tmp_path, out.name) == []
    code, stdout, err = run(
        capsys,
        "analyze",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--out",
        str(tmp_path / "s.stats"),
        "--quiet",
    )
    assert_error(code, stdout, err, "no space left")
    assert leftovers(tmp_path, out.name) == []


def test_ctrl_c_during_the_export_leaves_nothing(capsys, monkeypatch, tmp_path):
    _fill_disk(monkeypatch, KeyboardInterrupt())
    code, _, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--samples",
        "64",
        "--one-shot",
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "p.safetensors"),
        "--quiet",
    )
    assert code == 130 and err.strip() == "snp: cancelled"
    assert leftovers(tmp_path) == []


def test_output_folder_without_permission(capsys, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", forbidden)
    assert_error(
        *run(
            capsys,
            "analyze",
            "--model",
            "demo-vgg",
            "--data",
            "digits",
            "--samples",
            "64",
            "--out",
            str(tmp_path / "s.stats"),
            "--quiet",
        ),
        "no permission to write in",
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_read_only_output_folder(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        code, out, err = run(
            capsys,
            "analyze",
            "--model",
            "demo-vgg",
            "--data",
            "digits",
            "--samples",
            "64",
            "--out",
            str(folder / "s.stats"),
            "--quiet",
        )
        assert_error(code, out, err, "no permission to write in")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_missing_output_folder_is_refused_before_the_work(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "p.safetensors"
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--one-shot",
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "p.safetensors"),
        "--torchscript",
        str(target),
    )
    assert_error(code, out, err, re.escape(str(target)) + ": the folder .* does not exist")
    assert "finding prunable layers" not in err
    assert_error(
        *run(capsys, "analyze", "--model", "demo-vgg", "--data", "digits", "--out", str(tmp_path)), "it is a folder"
    )
    assert leftovers(tmp_path) == []
