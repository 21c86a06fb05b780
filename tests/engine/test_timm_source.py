"""timm as a model source: ``timm:NAME`` (random weights) and ``timm:NAME@WEIGHTS`` load without any
download, exports of timm models are rebuilt from their header alone, and a representative set of
timm CNN families runs the whole pipeline (analyse, plan, prune, export, reload) or is refused with
one line."""

from __future__ import annotations

import functools
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from snp_engine import api, io
from snp_engine.architectures import build_architecture, check_exportable
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.models import load_model

timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[2]
SHAPE = (3, 64, 64)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs with the network cut: a timm model must never be fetched."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _images(count: int = 8, shape=SHAPE, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, *shape, generator=gen), torch.zeros(count, dtype=torch.long))


def _logits(model, data: TensorDataset) -> torch.Tensor:
    with torch.inference_mode():
        return model(data.tensors[0])


# ----------------------------------------------------------------------------------------------
# Loading


def test_a_random_timm_model_loads_with_its_defaults():
    loaded = load_model("timm:resnet18")
    assert loaded.arch == "timm:resnet18" and loaded.source == "random init"
    assert loaded.num_classes == 1000 and loaded.input_shape == (3, 224, 224)
    assert loaded.size_rule == "any"  # a CNN: the data's own size is used
    assert type(loaded.model).__module__.startswith("timm.") and not loaded.model.training


def test_a_vit_keeps_timms_fixed_input_size():
    loaded = load_model("timm:vit_tiny_patch16_224")
    assert loaded.size_rule == "fixed" and loaded.input_shape == (3, 224, 224)


def test_a_pretrained_tag_selects_its_config_but_no_weights():
    tagged = load_model("timm:resnet18.a1_in1k")
    torch.manual_seed(0)
    plain = load_model("timm:resnet18").model
    assert tagged.arch == "timm:resnet18.a1_in1k" and tagged.source == "random init"
    assert tagged.model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_state_dict_round_trips_through_the_spec(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=7, in_chans=1).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    loaded = load_model(f"timm:mobilenetv3_small_100@{path}")
    assert loaded.num_classes == 7 and loaded.input_shape == (1, 224, 224) and loaded.source == str(path)
    data = _images(4, (1, 32, 32))
    assert torch.equal(_logits(loaded.model, data), _logits(model, data))


def test_a_pickled_model_file_needs_trust(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(f"timm:resnet10t@{tmp_path / 'whole.pth'}")
    assert load_model(f"timm:resnet10t@{tmp_path / 'whole.pth'}", trust=True).num_classes == 3


def test_weights_of_another_model_are_refused_with_what_differs(tmp_path):
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r.pth")
    with pytest.raises(ModelLoadError, match=r"does not fit timm:efficientnet_b0: .*missing conv_stem.weight"):
        load_model(f"timm:efficientnet_b0@{tmp_path / 'r.pth'}")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("timm:resnet1", r"unknown timm model 'resnet1'; did you mean: resnet18"),
        ("timm:resnet18.no_such_tag", r"unknown timm model tag 'resnet18.no_such_tag'; did you mean: resnet18\."),
        ("timm:resnet*", r"unknown timm model 'resnet\*'; did you mean: resnet10t"),
        ("timm:", r"needs a model name"),
        ("timm:hf-hub:timm/resnet18.a1_in1k", r"only names of timm's own registry .* never downloads"),
        ("timm:local-dir:/tmp/model", r"only names of timm's own registry"),
        ("timm:resnet18@/no/such/weights.pth", r"does not exist"),
    ],
)
def test_bad_timm_specs_are_one_clear_line(spec, pattern):
    with pytest.raises(ModelLoadError, match=pattern) as caught:
        load_model(spec)
    assert "\n" not in str(caught.value)


def test_without_timm_the_engine_imports_and_a_timm_spec_says_how_to_install_it(tmp_path):
    export = tmp_path / "r.safetensors"
    loaded = load_model("timm:resnet10t")
    io.export_model(loaded.model, export, arch=loaded.arch, num_classes=1000, input_shape=SHAPE)
    script = f"""
import sys
sys.modules["timm"] = None  # as if timm were not installed
import snp_engine, snp_engine.api, snp_engine.cli, snp_engine.models
from snp_engine.errors import ModelLoadError
from snp_engine.models import load_model
assert load_model("demo-vgg").num_classes == 10
for spec in ("timm:resnet18", {str(export)!r}):
    try:
        load_model(spec)
    except ModelLoadError as exc:
        print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "timm:resnet18 needs the timm package, which is not installed: pip install timm"
    assert lines[1].startswith(f"{export}: base architecture 'timm:resnet10t' needs the timm package")
    assert lines[1].endswith("pip install timm") and len(lines) == 2


# ----------------------------------------------------------------------------------------------
# Exports


def test_timm_architectures_are_exportable():
    check_exportable("timm:resnet18")


def test_an_export_records_only_the_constructor_arguments_it_needs(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_model(f"timm:resnet10t@{tmp_path / 'w.pth'}")
    data = _images(8, (1, 32, 32))
    analysis = api.analyze(loaded.model, data)
    run = api.prune(loaded.model, analysis, analysis.plan(flops_reduction=0.3), sequential=False)
    path = io.export_model(run, tmp_path / "p.safetensors", arch=loaded.arch, num_classes=5, input_shape=(1, 32, 32))
    assert io.read_metadata(path)["arch_kwargs"] == {"num_classes": 5, "in_chans": 1}
    again = io.load_exported(path)
    assert again.arch == "timm:resnet10t" and again.num_classes == 5 and again.size_rule == "recorded"
    assert torch.equal(_logits(again.model, data), _logits(run.model, data))


def _crafted(tmp_path, change) -> Path:
    """An unpruned timm export whose header ``change`` edits."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    loaded = load_model("timm:resnet10t")
    path = io.export_model(
        loaded.model, tmp_path / "ok.safetensors", arch=loaded.arch, num_classes=1000, input_shape=SHAPE
    )
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    header = json.loads(metadata[io.METADATA_KEY])
    change(header)
    metadata[io.METADATA_KEY] = json.dumps(header)
    crafted = tmp_path / "crafted.safetensors"
    save_file(load_file(str(path)), str(crafted), metadata=metadata)
    return crafted


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda h: h["arch_kwargs"].update(pretrained=True), r"unsupported constructor argument\(s\) pretrained"),
        (lambda h: h["arch_kwargs"].update(checkpoint_path="/etc/passwd"), r"argument\(s\) checkpoint_path"),
        (lambda h: h.update(arch="timm:hf-hub:timm/resnet18.a1_in1k"), r"is not available in this timm"),
        (lambda h: h.update(arch="timm:no_such_model"), r"'timm:no_such_model' is not available in this timm"),
    ],
    ids=["pretrained", "checkpoint", "hub-name", "unknown-name"],
)
def test_a_crafted_timm_header_cannot_make_timm_fetch_or_read_anything(tmp_path, change, pattern):
    with pytest.raises(ModelLoadError, match=pattern):
        io.load_exported(_crafted(tmp_path, change))


def test_build_architecture_passes_no_weight_source_to_timm(monkeypatch):
    seen = {}
    create = timm.create_model

    def spy(name, **kwargs):
        seen.update(kwargs)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    build_architecture("timm:resnet10t", {"num_classes": 4}, Path("x.safetensors"))
    assert seen["pretrained"] is False and seen["num_classes"] == 4
    assert seen["pretrained_cfg_overlay"] == {"url": "", "hf_hub_id": None, "file": None}


# ----------------------------------------------------------------------------------------------
# A zoo of timm CNN families: analyse, plan, prune, export, reload

# Per family: None where the whole pipeline runs (a -30 % FLOPs plan, or, where that is out of
# reach, half of the first group), else the pattern of the one-line SnpError it is refused with.
FAMILIES = {
    "resnet18": None,
    "resnet10t": None,
    "efficientnet_b0": None,
    "mobilenetv3_small_100": None,
    "mobilenetv2_050": None,
    "regnetx_002": None,
    "regnety_002": None,
    "convnext_atto": None,
    "ghostnet_050": None,
    "lcnet_050": None,
    "mnasnet_small": None,
    "tinynet_e": None,
    "mixnet_s": None,  # split (mixed-kernel) convs and BatchNormAct2d leave too little prunable for -30 %
    "dla46_c": None,
    "repvgg_a0": None,
    "hardcorenas_a": None,
    # residuals added to part of the channels (slice + concatenation): the trace does not finish in bounds
    "rexnet_100": (
        r"tracing the layers of RexNet (did not finish within \d+ s|used more than .* of memory); snp cannot trace"
    ),
    "densenet121": None,  # concatenations and BatchNormAct2d
}
SLOW = {"rexnet_100", "densenet121"}
TRACE_SECONDS = 10  # instead of the default 120 s bound: RexNet is refused either way


@pytest.fixture
def short_trace_bound(monkeypatch):
    import snp_engine.groups
    from snp_engine.guard import bounded

    monkeypatch.setattr(snp_engine.groups, "bounded", functools.partial(bounded, seconds=TRACE_SECONDS))


def _pipeline(name: str, tmp_path: Path) -> str:
    """Analyse, plan, prune, export and reload ``timm:name``; returns how it was planned."""
    torch.manual_seed(0)
    loaded = load_model(f"timm:{name}")
    data = _images()
    analysis = api.analyze(loaded.model, data)
    try:
        plan, how = analysis.plan(flops_reduction=0.3), "flops"
    except SnpError as exc:
        assert "not reachable" in str(exc)
        first = analysis.groups[0]
        plan, how = analysis.plan(keep={first.name: max(1, first.group.units // 2)}), "half of the first group"
    run = api.prune(loaded.model, analysis, plan, sequential=False)
    if how == "flops":
        assert plan.flops_reduction >= 0.29
    assert sum(p.numel() for p in run.model.parameters()) < sum(p.numel() for p in loaded.model.parameters())
    path = io.export_model(
        run, tmp_path / f"{name}.safetensors", arch=loaded.arch, num_classes=loaded.num_classes, input_shape=SHAPE
    )
    again = io.load_exported(path)
    assert again.arch == f"timm:{name}" and again.input_shape == SHAPE
    assert torch.equal(_logits(again.model, data), _logits(run.model, data))
    return how


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FAMILIES])
def test_timm_family_prunes_exports_and_reloads_or_is_refused_in_one_line(name, tmp_path, short_trace_bound):
    expected = FAMILIES[name]
    if expected is None:
        how = _pipeline(name, tmp_path)
        assert how == ("half of the first group" if name == "mixnet_s" else "flops")
        return
    with pytest.raises(SnpError) as caught:
        _pipeline(name, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1000
    assert re.search(expected, message), message


@pytest.mark.slow
def test_a_vit_prunes_its_mlps_and_heads_at_its_fixed_size_and_reloads(tmp_path):
    loaded = load_model("timm:vit_tiny_patch16_224")
    data = _images(8, loaded.input_shape)
    analysis = api.analyze(loaded.model, data, max_positions=16)
    kinds = {g.name: g.group.kind for g in analysis.groups}
    assert {n for n, k in kinds.items() if k == "channels"} == {f"blocks.{i}.mlp.fc1" for i in range(12)}
    assert {n for n, k in kinds.items() if k == "heads"} == {f"blocks.{i}.attn" for i in range(12)}
    run = api.prune(loaded.model, analysis, analysis.plan(flops_reduction=0.3), sequential=False)
    path = io.export_model(
        run, tmp_path / "vit.safetensors", arch=loaded.arch, num_classes=1000, input_shape=loaded.input_shape
    )
    assert torch.equal(_logits(io.load_exported(path).model, data), _logits(run.model, data))


def test_layers_followed_by_timms_batchnorm_with_activation_are_prunable():
    from snp_engine.groups import find_groups

    model = load_model("timm:efficientnet_b0").model
    groups, excluded = find_groups(model, torch.zeros(1, *SHAPE))
    assert "blocks.1.0.conv_pw" in {g.name for g in groups}
    assert [e.reason for e in excluded] == ["network output"] and len(groups) == 40
    (norm,) = next(g for g in groups if g.name == "blocks.1.0.conv_pw").channelwise[:1]
    assert type(model.get_submodule(norm)).__name__ == "BatchNormAct2d"
