"""Tests for the ``snp`` command line, run in-process (plus one real console-script call)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import torch

from snp_engine import cli, io
from snp_engine.models import load_model

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snp: error: "), err
    assert pattern in lines[0]


class _Capture:
    """stdout/stderr capture usable from a module-scoped fixture (capsys is function-scoped)."""

    def __enter__(self):
        self._out, self._err = StringIO(), StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    """``snp prune`` of demo-resnet to half the FLOPs, run once for several tests."""
    path = tmp_path_factory.mktemp("cli") / "f.safetensors"
    capture = _Capture()
    with capture:
        code = cli.main(
            [
                "prune",
                "--model",
                "demo-resnet",
                "--data",
                "digits",
                "--flops-reduction",
                "0.5",
                "--out",
                str(path),
                "--json",
                "--quiet",
            ]
        )
    assert code == 0, capture.err
    return path, json.loads(capture.out)


# ----------------------------------------------------------------------------------------------
# Subcommands


def test_info_json(capsys):
    result = run_json(capsys, "info", "--model", "demo-vgg")
    assert [g["name"] for g in result["groups"]] == [
        "features.0",
        "features.3",
        "features.7",
        "features.10",
        "classifier.1",
    ]
    assert result["groups"][0] == {"name": "features.0", "consumer": "features.3", "units": 32, "layout": "conv"}
    assert result["excluded"] == [{"name": "classifier.4", "units": 10, "reason": "network output"}]
    assert result["params"] == 99370 and result["flops"] > 0 and result["input_shape"] == [1, 8, 8]


def test_info_text(capsys):
    code, out, err = run(capsys, "info", "--model", "demo-resnet")
    assert code == 0
    assert "prunable layer groups (6)" in out
    assert "layer1.0.conv1 (+2)" in out and "produced by 2 layers, read by 3" in out  # the first stage's stream
    assert "finding prunable layers" in err  # progress goes to stderr


def test_prune_then_eval_reproduces_the_numbers(resnet_export, capsys):
    path, pruned = resnet_export
    assert pruned["out"] == str(path) and path.is_file()
    assert pruned["flops_after"] < 0.6 * pruned["flops_before"]
    assert pruned["params_after"] < pruned["params_before"]
    assert pruned["top1_before"] > 97 and pruned["top1_after"] > 90
    assert 0 <= pruned["fidelity"] < 1
    assert set(pruned["keep"]) == {
        "conv1",
        "layer1.0.conv1",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer3.0.conv1",
        "layer3.0.conv2",
    }
    assert pruned["ordering"] == "output" and pruned["compensation"] == "sequential"
    evaluated = run_json(capsys, "eval", "--model", str(path), "--data", "digits")
    assert evaluated["top1"] == pytest.approx(pruned["top1_after"])
    assert evaluated["params"] == pruned["params_after"] and evaluated["flops"] == pruned["flops_after"]
    assert evaluated["samples"] == 497
    meta = io.read_metadata(path)
    assert meta["metrics"]["top1_after"] == pytest.approx(pruned["top1_after"])
    assert meta["settings"]["target"] == {"flops_reduction": 0.5}


def test_prune_with_explicit_keep_counts(tmp_path, capsys):
    out, script = tmp_path / "k.safetensors", tmp_path / "k.pt"
    result = run_json(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--keep",
        "features.0=8",
        "--keep",
        "features.3=16",
        "--one-shot",
        "--out",
        str(out),
        "--torchscript",
        str(script),
    )
    assert result["keep"]["features.0"] == 8 and result["keep"]["features.3"] == 16
    assert result["keep"]["features.7"] == 64 and result["compensation"] == "one-shot"
    model = load_model(str(out)).model
    assert model.features[0].out_channels == 8 and model.features[3].out_channels == 16
    scripted = torch.jit.load(str(script))
    images = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(scripted(images), model(images), atol=1e-5)


def test_prune_l1_without_compensation(tmp_path, capsys):
    result = run_json(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--method",
        "l1",
        "--no-compensation",
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "l1.safetensors"),
    )
    assert result["ordering"] == "l1" and result["method"] == "l1" and result["compensation"] == "none"
    assert io.read_metadata(tmp_path / "l1.safetensors")["settings"]["compensation"] == "none"


def test_analyze_then_prune_from_statistics(tmp_path, capsys):
    stats = tmp_path / "vgg.stats"
    analysed = run_json(
        capsys, "analyze", "--model", "demo-vgg", "--data", "digits", "--samples", "200", "--out", str(stats)
    )
    assert stats.is_file() and analysed["samples"] == 200 and len(analysed["groups"]) == 5
    result = run_json(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--stats",
        str(stats),
        "--params-reduction",
        "0.5",
        "--one-shot",
        "--out",
        str(tmp_path / "p.safetensors"),
    )
    assert result["params_after"] < 0.6 * result["params_before"]
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-resnet",
        "--data",
        "digits",
        "--stats",
        str(stats),
        "--variance",
        "0.9",
        "--out",
        str(tmp_path / "q.safetensors"),
        "--quiet",
    )
    assert_one_line_error(code, out, err, "do not belong")
    assert not (tmp_path / "q.safetensors").exists()


def test_finetune_keeps_the_pruning(resnet_export, tmp_path, capsys):
    path, _ = resnet_export
    out = tmp_path / "tuned.safetensors"
    result = run_json(
        capsys,
        "finetune",
        "--model",
        str(path),
        "--data",
        "digits",
        "--epochs",
        "1",
        "--lr",
        "0.001",
        "--out",
        str(out),
    )
    assert result["split"] == "train" and len(result["history"]) == 1
    before, after = load_model(str(path)), load_model(str(out))
    assert after.pruning.kept == before.pruning.kept
    assert [p.shape for p in after.model.parameters()] == [p.shape for p in before.model.parameters()]
    meta = io.read_metadata(out)
    assert meta["settings"]["finetune"]["epochs"] == 1 and "top1_after" in meta["metrics"]


def test_a_model_that_takes_any_size_runs_at_the_data_size(capsys):
    code, out, err = run(capsys, "eval", "--model", "torchvision:resnet18", "--data", "digits", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["input_shape"] == [3, 8, 8] and result["samples"] == 497
    assert result["notes"] == ["digits: images adapted to the model's 3x8x8 input: 1 channel repeated to 3 channels"]
    assert err.count("snp: note: ") == 1  # said once, in one line
    # a random-init 1000-class network on 10 classes: said up front, and its near-chance score too
    assert any("1000 classes" in w for w in result["warnings"])
    assert result["dense_check"]["near_chance"] and any("chance" in w for w in result["warnings"])


def test_a_model_too_deep_for_the_data_size_runs_at_the_smallest_doubling(capsys):
    result = run_json(capsys, "info", "--model", "torchvision:vgg11", "--input-size", "32")
    assert result["input_shape"] == [3, 32, 32]
    code, out, err = run(capsys, "eval", "--model", "torchvision:vgg11", "--data", "digits", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["input_shape"] == [3, 32, 32]  # five max-pools: 8x8 and 16x16 are too small
    assert "resized 8x8 -> 32x32 (the model cannot run on 8x8 images)" in result["notes"][0]


# ----------------------------------------------------------------------------------------------
# Errors


def test_bad_model_spec(capsys):
    assert_one_line_error(*run(capsys, "info", "--model", "no-such-model"), "not found")


def test_missing_data_file(capsys, tmp_path):
    code, out, err = run(capsys, "eval", "--model", "demo-vgg", "--data", f"npz:{tmp_path / 'none.npz'}")
    assert_one_line_error(code, out, err, "does not exist")


def test_unknown_layer_in_keep(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--keep",
        "features.99=3",
        "--out",
        str(tmp_path / "x.safetensors"),
        "--quiet",
    )
    assert_one_line_error(code, out, err, "features.99")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys):
    code, out, err = run(capsys, "info", "--model", "demo-vgg", "--device", "cuda", "--json")
    assert_one_line_error(code, out, err, "CUDA")
    assert json.loads(out) == {"error": err.strip().removeprefix("snp: error: "), "exit_code": 2}


def test_ctrl_c_exits_130(capsys, monkeypatch):
    def interrupted(args, reporter):
        raise KeyboardInterrupt

    from snp_engine.cli import commands

    monkeypatch.setattr(commands, "cmd_info", interrupted)
    code, _, err = run(capsys, "info", "--model", "demo-vgg")
    assert code == 130 and err.strip() == "snp: cancelled"


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "prune", "--model", "demo-vgg")
    assert code == 2 and "usage:" in err


def test_console_script_help():
    script = Path(sys.executable).with_name("snp")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "snp_engine.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("info", "analyze", "prune", "eval", "finetune"):
        assert name in done.stdout


def test_compensation_choice_and_conflicting_flags(capsys, tmp_path):
    out = tmp_path / "c.safetensors"
    common = ("prune", "--model", "demo-vgg", "--data", "digits", "--samples", "64", "--variance", "0.9")
    result = run_json(capsys, *common, "--compensation", "one-shot", "--out", str(out))
    assert result["compensation"] == "one-shot" and io.read_metadata(out)["settings"]["compensation"] == "one-shot"
    assert_one_line_error(
        *run(capsys, *common, "--compensation", "sequential", "--one-shot", "--out", str(out)),
        "give one of --compensation, --no-compensation or --one-shot",
    )
