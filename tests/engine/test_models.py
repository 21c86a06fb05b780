"""Tests for model loading (demo, torchvision, checkpoints, pickles) and the accuracy helper."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from snp_engine.data import load_data, make_loader
from snp_engine.errors import ModelLoadError
from snp_engine.models import DEMO_MODELS, RESOURCES, DemoVGG, list_architectures, load_model
from snp_engine.progress import CancelFlag, Cancelled
from snp_engine.training import accuracy, train


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_demo_model_matches_recorded_accuracy(name, digits):
    loaded = load_model(name)
    assert loaded.arch == name and loaded.num_classes == 10 and loaded.input_shape == (1, 8, 8)
    assert not loaded.model.training
    recorded = json.loads((RESOURCES / "demo_models.json").read_text())[name]["test_top1"]
    assert DEMO_MODELS[name].test_top1 == recorded
    measured = accuracy(loaded.model, make_loader(digits.test, 256))
    assert measured["n"] == 497
    assert measured["top1"] == pytest.approx(recorded, abs=0.01)
    assert measured["top1"] >= 97.0


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_demo_weights_are_small(name):
    assert DEMO_MODELS[name].weights_path.stat().st_size < 2 * 1024 * 1024


def test_list_architectures():
    names = list_architectures()
    assert names[:2] == ["demo-vgg", "demo-resnet"]
    assert "torchvision:resnet18" in names and "torchvision:vit_b_16" in names


def test_torchvision_random_init():
    loaded = load_model("torchvision:resnet18")
    assert loaded.num_classes == 1000 and loaded.input_shape == (3, 224, 224)
    assert loaded.source == "random init"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": original.state_dict()}, path)
    else:
        save_file(original.state_dict(), str(path))
    loaded = load_model(f"torchvision:resnet18@{path}")
    assert loaded.num_classes == 10 and loaded.source == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), original(x))


def test_checkpoint_of_another_architecture_names_keys(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(DemoVGG().state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model(f"torchvision:resnet18@{path}")
    message = str(info.value)
    assert "does not fit torchvision:resnet18" in message
    assert "conv1.weight" in message or "features.0.weight" in message


def test_unknown_architecture():
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_model("torchvision:resnet181")


def test_unknown_spec():
    with pytest.raises(ModelLoadError, match="demo-vgg"):
        load_model("no-such-model")


def test_bare_state_dict_file_needs_architecture(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(DemoVGG().state_dict(), path)
    with pytest.raises(ModelLoadError, match="torchvision:ARCH@"):
        load_model(str(path))


class _WritesMarker:
    """Unpickling this object creates a file: stands in for malicious code inside a pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_refused_without_trust_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save(_WritesMarker(str(marker)), path)
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(f"torchvision:resnet18@{path}")
    assert not marker.exists()
    # The payload is real: with trust it does execute (and is then rejected as not a model).
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(path), trust=True)
    assert marker.exists()


def test_trusted_pickled_module_loads(tmp_path):
    path = tmp_path / "full.pth"
    torch.save(DemoVGG(), path)
    loaded = load_model(str(path), trust=True)
    assert isinstance(loaded.model, DemoVGG)
    assert loaded.num_classes == 10 and loaded.input_shape == (1, 8, 8)


def test_train_improves_and_can_be_cancelled(digits):
    torch.manual_seed(0)
    model = DemoVGG()
    loader = make_loader(digits.train, 50, shuffle=True, limit=300)
    eval_loader = make_loader(digits.test, 100, limit=100)
    before = accuracy(model, eval_loader, topk=(1,))["top1"]
    history = train(model, loader, epochs=2, lr=0.05, eval_loader=eval_loader)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]
    assert history[-1]["eval_acc"] > before + 10.0
    assert not model.training
    flag = CancelFlag()
    flag.cancel()
    with pytest.raises(Cancelled):
        train(DemoVGG(), loader, epochs=1, lr=0.05, reporter=flag)


def test_accuracy_topk_larger_than_classes():
    model = torch.nn.Linear(4, 3)
    loader = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    result = accuracy(model, loader, topk=(1, 5))
    assert result["top5"] == 100.0 and 0.0 <= result["top1"] <= 100.0


def _fixed_size_net() -> torch.nn.Sequential:
    """A plain CNN whose flatten feeds a linear layer: it runs at 28x28 and 29x29 only."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 14 * 14, 5),
    ).eval()


@pytest.mark.parametrize("kind", ["pickle", "torchscript"])
def test_fixed_size_file_model_gets_the_size_it_runs_at(tmp_path, kind):
    """224x224 is only a default: a pickled or TorchScript model that cannot run there gets a size it runs at."""
    path = tmp_path / "net.pt"
    if kind == "pickle":
        torch.save(_fixed_size_net(), path)
    else:
        torch.jit.script(_fixed_size_net()).save(str(path))
    loaded = load_model(str(path), trust=True)
    assert loaded.input_shape == (1, 28, 28) and loaded.num_classes == 5


def test_fixed_size_model_runs_at_its_own_size_when_no_doubling_of_the_data_fits():
    from snp_engine.inputs import ANY, resolve_input_shape

    net = _fixed_size_net()
    for data_size in ((32, 32), (8, 8)):  # doublings of 8 skip 28 and 29
        shape, reason = resolve_input_shape(net, (1, 28, 28), ANY, data_size)
        assert shape == (1, 28, 28) and f"cannot run on {data_size[0]}x{data_size[1]}" in reason
    assert resolve_input_shape(net, (1, 28, 28), ANY, (29, 29)) == ((1, 29, 29), None)  # runs there: kept


@pytest.fixture(scope="module")
def small_resnet_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 3},  # PyTorch's tutorials
        lambda sd: {"net": sd, "acc": 0.9},
        lambda sd: {"checkpoint_of_mine": sd, "epoch": 1},  # the only mapping of tensors
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},  # DDP around compile
    ],
    ids=["model_state_dict", "net", "only-mapping", "compiled", "ddp-compiled"],
)
def test_training_checkpoints_load_as_their_state_dict(tmp_path, small_resnet_state, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(small_resnet_state), path)
    loaded = load_model(f"torchvision:resnet18@{path}")
    assert loaded.num_classes == 3
    assert torch.equal(loaded.model.state_dict()["fc.weight"], small_resnet_state["fc.weight"])


def test_checkpoint_without_a_state_dict_lists_what_it_holds(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "a": {"x": 1}, "b": {"y": 2}}, path)
    with pytest.raises(ModelLoadError, match=r"no state dict found.*found: epoch, a, b"):
        load_model(f"torchvision:resnet18@{path}")


def test_weights_of_another_network_are_named_as_such(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"none of its 2 keys \(0\.weight, 0\.bias.*another network"):
        load_model(f"torchvision:resnet18@{path}")


@pytest.mark.parametrize("spec", ["torchvision:resnet18@", "torchvision:resnet18@  ", "timm:resnet18@"])
def test_an_empty_weights_path_is_refused_not_random(spec):
    """``ARCH@`` with the path left out must not quietly give random weights."""
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(ModelLoadError, match="no weights file after '@'"):
        load_model(spec)


def test_an_npz_given_as_model_says_it_is_data(tmp_path):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 1, 4, 4), np.float32), y=np.zeros(2, np.int64))
    for spec in (str(path), f"torchvision:resnet18@{path}"):
        with pytest.raises(ModelLoadError, match=r"NumPy \.npz archive \(data, not a model\).*--data npz:"):
            load_model(spec)


class _ScriptNet(torch.nn.Module):
    """A user's own network class, as defined in the script that trains it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("where", ["__main__", "users_own_module"])
def test_a_pickle_whose_class_cannot_be_imported_says_which_and_what_helps(tmp_path, monkeypatch, where):
    import sys
    import types

    home = sys.modules["__main__"] if where == "__main__" else types.ModuleType(where)
    monkeypatch.setattr(_ScriptNet, "__module__", where)
    monkeypatch.setattr(home, "_ScriptNet", _ScriptNet, raising=False)
    monkeypatch.setitem(sys.modules, where, home)
    torch.save(_ScriptNet(), tmp_path / "mine.pt")
    monkeypatch.delattr(home, "_ScriptNet")
    if where != "__main__":
        monkeypatch.delitem(sys.modules, where)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path / "mine.pt"), trust=True)
    message = str(info.value)
    assert "TorchScript" in message and ("_ScriptNet" in message if where == "__main__" else where in message)


def test_an_input_size_a_fixed_size_file_model_cannot_take_names_the_size_it_runs_at():
    from snp_engine.errors import SnpError
    from snp_engine.inputs import ANY, resolve_input_shape

    with pytest.raises(SnpError, match=r"cannot run on inputs of shape \(1, 32, 32\): net runs at 28x28 inputs"):
        resolve_input_shape(_fixed_size_net(), (1, 28, 28), ANY, (8, 8), 32, name="net")
    assert resolve_input_shape(_fixed_size_net(), (1, 28, 28), ANY, (8, 8), 29) == ((1, 29, 29), "--input-size")


def test_a_model_that_runs_at_no_size_tried_says_why_in_one_line():
    """Neither the data's size, its doublings nor the model's own: one error naming the size and the reason,
    for TorchScript its last line rather than the interpreter's traceback."""
    from snp_engine.errors import SnpError
    from snp_engine.inputs import ANY, resolve_input_shape

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 20 * 20, 3))
    for model in (net.eval(), torch.jit.script(net.eval())):
        with pytest.raises(SnpError) as info:
            resolve_input_shape(model, (1, 224, 224), ANY, (24, 24), name="net")
        message = str(info.value)
        assert "(1, 24, 24)" in message and "--input-size" in message and "mat1 and mat2" in message
        assert "\n" not in message and "Traceback" not in message
