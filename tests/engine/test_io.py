"""Tests for snp's files: pruned-model exports, analysis statistics, atomic writes, deployment formats."""

from __future__ import annotations

import errno
import json
import os
import struct
import sys

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file

from snp_engine import __version__, api, exports, io
from snp_engine.data import TensorImageDataset, load_data
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.models import load_model
from snp_engine.progress import Cancelled


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _pruned(spec: str, digits):
    loaded = load_model(spec)
    analysis = api.analyze(loaded.model, digits)
    plan = analysis.plan(flops_reduction=0.5)
    return loaded, analysis, api.prune(loaded.model, analysis, plan, data=digits)


@pytest.fixture(scope="module")
def pruned_vgg(digits):
    return _pruned("demo-vgg", digits)


@pytest.fixture(scope="module")
def pruned_resnet(digits):
    return _pruned("demo-resnet", digits)


@pytest.fixture(scope="module")
def vgg_file(pruned_vgg, tmp_path_factory):
    loaded, analysis, model = pruned_vgg
    path = tmp_path_factory.mktemp("export") / "vgg.safetensors"
    io.export_model(
        model,
        path,
        arch=loaded.arch,
        num_classes=loaded.num_classes,
        input_shape=analysis.input_shape,
        settings={"samples": analysis.info["samples"]},
        metrics={"top1_before": 99.8, "top1_after": 99.2},
    )
    return path


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((a.eval()(images) - b.eval()(images)).abs().max())


def _temp_files(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# Export and load


@pytest.mark.parametrize("which", ["pruned_vgg", "pruned_resnet"])
def test_export_load_gives_identical_outputs(which, request, digits, tmp_path):
    loaded, analysis, pruned = request.getfixturevalue(which)
    model, record = pruned.model, pruned.record
    _, flops_after = analysis.cost({name: len(kept) for name, kept in record.kept.items()})
    assert 0.4 <= 1 - flops_after / analysis.cost()[1] <= 0.6
    path = io.export_model(
        pruned, tmp_path / "m.safetensors", arch=loaded.arch, num_classes=10, input_shape=analysis.input_shape
    )
    assert path == tmp_path / "m.safetensors" and _temp_files(tmp_path) == []
    again = io.load_exported(path)
    assert again.arch == loaded.arch and again.num_classes == 10 and again.input_shape == (1, 8, 8)
    assert again.source == str(path) and not again.model.training
    assert _max_diff(model, again.model, digits.test.images[:64]) == 0.0
    assert sum(p.numel() for p in again.model.parameters()) == sum(p.numel() for p in model.parameters())
    assert again.pruning.kept == record.kept and again.pruning.groups == record.groups
    # the generic loader recognises the export, and so does the public API
    assert _max_diff(model, load_model(str(path)).model, digits.test.images[:16]) == 0.0
    assert _max_diff(model, api.load(path), digits.test.images[:16]) == 0.0


def test_metadata_describes_the_export(vgg_file, pruned_vgg):
    _, analysis, pruned = pruned_vgg
    with safe_open(str(vgg_file), framework="pt") as handle:
        raw = handle.metadata()
        keys = set(handle.keys())
    assert raw["snp_format"] == "1" and all(isinstance(v, str) for v in raw.values())
    assert "features.1.num_batches_tracked" in keys
    meta = io.read_metadata(vgg_file)
    assert meta == json.loads(raw["snp"])
    assert meta["arch"] == "demo-vgg" and meta["arch_kwargs"]["num_classes"] == 10
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["snp_version"] == __version__ and meta["format"] == 1
    assert meta["pruning"]["groups"] == [g.name for g in analysis.groups]
    assert meta["pruning"]["kept"] == pruned.record.to_dict()["kept"]
    assert meta["pruning"]["units"] == analysis.units
    settings = meta["settings"]
    assert settings["ordering"] == analysis.ordering and settings["compensation"] == "sequential"
    assert settings["threshold"] == pytest.approx(pruned.record.threshold)
    assert settings["samples"] == 300
    assert meta["metrics"] == {"top1_before": 99.8, "top1_after": 99.2}


@pytest.mark.slow
def test_torchvision_resnet18_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(32, 3, 32, 32)
    data = TensorImageDataset(images, torch.randint(0, 10, (32,)))
    analysis = api.analyze(model, data, batch_size=16, max_positions=16, ordering="variance")
    plan = analysis.plan(flops_reduction=0.3)
    run = api.prune(model, analysis, plan, sequential=False)
    pruned = run.model
    path = io.export_model(
        run, tmp_path / "r18.safetensors", arch="torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)
    )
    again = io.load_exported(path)
    assert again.input_shape == (3, 32, 32) and again.arch == "torchvision:resnet18"
    assert _max_diff(pruned, again.model, images[:8]) == 0.0
    assert sum(p.numel() for p in again.model.parameters()) < sum(p.numel() for p in model.parameters())


def test_functionally_pruned_model_is_exported_small(pruned_vgg, digits, tmp_path):
    loaded, analysis, _ = pruned_vgg
    plan = analysis.plan(flops_reduction=0.5)
    run = api.prune(loaded.model, analysis, plan, sequential=False, physical=False)
    functional = run.model
    path = io.export_model(run, tmp_path / "f.safetensors", arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8))
    again = io.load_exported(path).model
    assert sum(p.numel() for p in again.parameters()) < sum(p.numel() for p in loaded.model.parameters())
    with torch.inference_mode():
        expected, actual = functional(digits.test.images[:64]), again(digits.test.images[:64])
    assert torch.allclose(expected, actual, atol=1e-5, rtol=1e-5)


def test_pruning_an_export_again_composes_indices(vgg_file, digits, tmp_path):
    first = load_model(str(vgg_file))
    analysis = api.analyze(first.model, digits, samples=100)
    plan = analysis.plan(keep={"features.0": 8})
    again = api.prune(first.model, analysis, plan, sequential=False)
    path = io.export_model(
        again,
        tmp_path / "twice.safetensors",
        arch=first.arch,
        num_classes=10,
        input_shape=(1, 8, 8),
        base=first.metadata,
    )
    meta = io.read_metadata(path)
    assert meta["pruning"]["units"]["features.0"] == 32 and len(meta["pruning"]["kept"]["features.0"]) == 8
    first_kept = io.read_metadata(vgg_file)["pruning"]["kept"]["features.0"]
    assert set(meta["pruning"]["kept"]["features.0"]) <= set(first_kept)
    assert _max_diff(again.model, io.load_exported(path).model, digits.test.images[:32]) == 0.0


def test_export_verification_failure_writes_nothing(pruned_vgg, tmp_path, monkeypatch):
    model = pruned_vgg[2]
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"earlier")
    real = exports.load_exported

    def perturbed(path):
        result = real(path)
        with torch.no_grad():
            next(result.model.parameters()).add_(1.0)
        return result

    monkeypatch.setattr(exports, "load_exported", perturbed)  # what the verification reloads with
    with pytest.raises(SnpError, match="verification failed"):
        io.export_model(model, target, arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8))
    assert target.read_bytes() == b"earlier" and _temp_files(tmp_path) == []


def test_export_refuses_unknown_architecture(pruned_vgg, tmp_path):
    with pytest.raises(SnpError, match="pickle"):
        io.export_model(
            pruned_vgg[2], tmp_path / "m.safetensors", arch="pickle:DemoVGG", num_classes=10, input_shape=(1, 8, 8)
        )
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Damaged and foreign files


def _header_replaced(source, target, **changes) -> None:
    """Copy a safetensors file, changing metadata values."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    save_file(tensors, str(target), metadata=metadata)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match=str(path)):
        io.load_exported(path)
    with pytest.raises(ModelLoadError, match=str(path)):
        load_model(str(path))


def test_truncated_file_is_refused(vgg_file, tmp_path):
    path = tmp_path / "cut.safetensors"
    data = vgg_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(path)):
        io.load_exported(path)


def test_damaged_header_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"__metadata__": {"snp_format": "1", "snp": "{not json"}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelLoadError, match=str(path)):
        io.load_exported(path)


def test_plain_safetensors_without_snp_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match=f"{path}.*not a model exported by snp"):
        io.load_exported(path)


def test_newer_format_is_refused(vgg_file, tmp_path):
    path = tmp_path / "future.safetensors"
    _header_replaced(vgg_file, path, snp_format=str(io.FORMAT_VERSION + 1))
    with pytest.raises(ModelLoadError, match=f"{path}.*newer snp"):
        io.load_exported(path)
    with pytest.raises(ModelLoadError, match="newer snp"):
        load_model(str(path))


def test_mismatched_shapes_are_refused(vgg_file, tmp_path):
    meta = io.read_metadata(vgg_file)
    meta["pruning"]["kept"]["features.0"] = meta["pruning"]["kept"]["features.0"][:-1]
    path = tmp_path / "shapes.safetensors"
    _header_replaced(vgg_file, path, snp=json.dumps(meta))
    with pytest.raises(ModelLoadError, match=f"{path}.*features"):
        io.load_exported(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        io.load_exported(tmp_path / "nothing.safetensors")


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    io.atomic_write(target, lambda temp: temp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and _temp_files(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), Cancelled("stop")])
def test_atomic_write_keeps_the_earlier_file_when_writing_fails(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"earlier")

    def half_then_fail(temp):
        temp.write_bytes(b"half of the new con")
        raise error

    with pytest.raises(type(error)):
        io.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"earlier" and _temp_files(tmp_path) == []


def test_atomic_write_reports_a_full_disk(tmp_path):
    target = tmp_path / "out.bin"

    def no_space(temp):
        temp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SnpError, match=f"{target}.*no space left"):
        io.atomic_write(target, no_space)
    assert not target.exists() and _temp_files(tmp_path) == []


def test_atomic_write_reports_a_missing_folder(tmp_path):
    target = tmp_path / "missing" / "out.bin"
    with pytest.raises(SnpError, match=f"{target}.*does not exist"):
        io.atomic_write(target, lambda temp: temp.write_bytes(b"x"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_write_reports_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.bin").write_bytes(b"earlier")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        with pytest.raises(SnpError, match=f"{folder / 'out.bin'}.*permission"):
            io.atomic_write(folder / "out.bin", lambda temp: temp.write_bytes(b"new"))
        assert (folder / "out.bin").read_bytes() == b"earlier"
    finally:
        folder.chmod(0o755)


def test_export_into_missing_folder_is_a_clear_error(pruned_vgg, tmp_path):
    with pytest.raises(SnpError, match="does not exist"):
        io.export_model(
            pruned_vgg[2], tmp_path / "no" / "m.safetensors", arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8)
        )


# ----------------------------------------------------------------------------------------------
# Analysis statistics


@pytest.mark.parametrize("which", ["pruned_vgg", "pruned_resnet"])
def test_analysis_round_trip_gives_the_same_plans(which, request, tmp_path):
    _, analysis, _ = request.getfixturevalue(which)
    path = tmp_path / "stats.safetensors"
    analysis.save(path)
    again = api.Analysis.load(path)
    assert again.plan(variance=0.95) == analysis.plan(variance=0.95)
    assert again.plan(flops_reduction=0.5) == analysis.plan(flops_reduction=0.5)
    assert again.names == analysis.names and again.input_shape == analysis.input_shape
    assert again.excluded == analysis.excluded and again.costs == analysis.costs
    assert again.info == analysis.info and again.ordering == analysis.ordering
    for a, b in zip(analysis.groups, again.groups, strict=True):
        assert a.group == b.group and a.norm == b.norm and a.input_shape == b.input_shape
        assert torch.equal(a.moments.outer, b.moments.outer) and a.samples == b.samples
        assert torch.equal(a.order, b.order)
        assert (a.coverage is None) == (b.coverage is None)
    other = io.load_analysis(path, ordering="l1")
    assert other.ordering == "l1" and other.plan(variance=0.95) == analysis.reorder("l1").plan(variance=0.95)


def test_statistics_are_checked_against_the_model(pruned_vgg, tmp_path):
    loaded, analysis, _ = pruned_vgg
    io.check_analysis_fits(analysis, loaded.model, (1, 8, 8))
    with pytest.raises(SnpError, match="do not belong"):
        io.check_analysis_fits(analysis, load_model("demo-resnet").model, (1, 8, 8))
    with pytest.raises(SnpError, match="shape"):
        io.check_analysis_fits(analysis, loaded.model, (1, 16, 16))


def test_a_model_file_is_not_a_statistics_file(vgg_file):
    with pytest.raises(SnpError, match="not an snp statistics file"):
        io.load_analysis(vgg_file)


# ----------------------------------------------------------------------------------------------
# Deployment formats


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_is_verified(pruned_resnet, digits, tmp_path):
    model = pruned_resnet[2].model
    path = io.export_torchscript(model, tmp_path / "m.pt", torch.randn(1, 1, 8, 8))
    scripted = torch.jit.load(str(path))
    assert _max_diff(model, scripted, digits.test.images[:16]) < 1e-5
    assert _temp_files(tmp_path) == []


def test_onnx_export_without_onnx_explains_the_install(pruned_vgg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SnpError, match="pip install onnx"):
        io.export_onnx(pruned_vgg[2].model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_is_checked(pruned_resnet, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = io.export_onnx(pruned_resnet[2].model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    onnx.checker.check_model(str(path))
    assert _temp_files(tmp_path) == []


def test_statistics_of_format_1_still_load(tmp_path, digits):
    """Files written before coupled groups and shifted sums (format 1: plain sums, one reader per
    group) still load, with the same statistics."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from snp_engine import api
    from tests.engine.helpers import demo_model

    analysis = api.analyze(demo_model("demo-vgg"), digits)
    path = tmp_path / "new.safetensors"
    analysis.save(path)
    with safe_open(str(path), framework="pt") as handle:
        meta = {**handle.metadata(), "snp_analysis": "1"}
        state = {k: handle.get_tensor(k) for k in handle.keys() if not k.endswith(".shift")}  # noqa: SIM118
    for index, g in enumerate(analysis.groups):  # plain sums, as format 1 stored them
        state[f"group.{index}.total"] = g.moments.total.clone()
        state[f"group.{index}.outer"] = g.moments.outer.clone()
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata=meta)
    again = io.load_analysis(old)
    assert again.names == analysis.names
    for g, h in zip(analysis.groups, again.groups, strict=True):
        scale = float(g.moments.covariance().abs().max())
        torch.testing.assert_close(h.moments.covariance(), g.moments.covariance(), rtol=0, atol=1e-9 * scale)
