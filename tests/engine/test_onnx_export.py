"""ONNX export of a pruned network: refused with the install command when onnx or onnxruntime is
missing (before ``snp prune`` does any work), checked against the model in onnxruntime, written
atomically (a failed check leaves an existing file as it was), and usable at any batch size."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from snp_engine import api, cli, deploy
from snp_engine.data import load_data
from snp_engine.errors import SnpError
from snp_engine.models import load_model
from snp_engine.verification import ONNX_TOLERANCE


@pytest.fixture(scope="module")
def pruned_vgg():
    digits = load_data("digits")
    loaded = load_model("demo-vgg")
    analysis = api.analyze(loaded.model, digits, ordering="variance")
    plan = analysis.plan(flops_reduction=0.5, round_to=8)
    return api.prune(loaded.model, analysis, plan, compensate=False, sequential=False).model.eval()


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_package_is_named_with_the_install_command(missing, pruned_vgg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(SnpError, match=rf"needs the {missing} package.*pip install onnx onnxruntime"):
        deploy.export_onnx(pruned_vgg, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_prune_refuses_onnx_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    target = ["--out", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "m.onnx")]
    code = cli.main(["prune", "--model", "demo-vgg", "--data", "digits", "--flops-reduction", "0.5", *target])
    err = capsys.readouterr().err
    assert code == 2 and "onnxruntime" in err and "pip install" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_matches_the_model_at_other_batch_sizes(pruned_vgg, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = deploy.export_onnx(pruned_vgg, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        expected = pruned_vgg(images)
    actual = torch.from_numpy(np.asarray(session.run(None, {"input": images.numpy()})[0]))
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) <= ONNX_TOLERANCE * max(1.0, float(expected.abs().max()))


def test_failed_check_leaves_the_existing_file(pruned_vgg, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous export")
    monkeypatch.setattr(deploy, "ONNX_TOLERANCE", -1.0)  # no output can match
    with pytest.raises(SnpError, match=r"verification failed.*nothing was written"):
        deploy.export_onnx(pruned_vgg, target, torch.randn(1, 1, 8, 8))
    assert target.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_prune_writes_a_checked_onnx_file(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out, onnx_path = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    outputs = ["--out", str(out), "--onnx", str(onnx_path), "--json", "--quiet"]
    prune = ["prune", "--model", "demo-vgg", "--data", "digits", "--flops-reduction", "0.5", "--one-shot"]
    code = cli.main([*prune, *outputs])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["keep"] and onnx_path.is_file()
    model = load_model(str(out)).model.eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        expected = model(images)
    actual = torch.from_numpy(np.asarray(session.run(None, {"input": images.numpy()})[0]))
    assert torch.allclose(actual, expected, atol=ONNX_TOLERANCE * max(1.0, float(expected.abs().max())))
