"""Model loading: the bundled demo networks, torchvision architectures and checkpoint files.

Everything funnels into :func:`load_model`, which returns a :class:`LoadedModel` in eval mode
together with the facts the rest of the engine needs (class count, expected input shape, where
the weights came from). Loading never unpickles arbitrary objects unless the caller opts in with
``trust=True``, because a pickle can run code while it is being read.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from snp_engine.errors import ModelLoadError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEMO_RESULTS_FILE = RESOURCES / "demo_models.json"
TORCHVISION_PREFIX = "torchvision:"


# ---------------------------------------------------------------------------------------------
# Demo networks
# ---------------------------------------------------------------------------------------------


class DemoVGG(nn.Module):
    """A small VGG-style network for 1x8x8 digits, laid out like torchvision's VGG.

    Plain conv/BN/ReLU stacks and a Linear head keep it traceable by dependency-graph pruners.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DemoResNet(nn.Module):
    """A three-stage ResNet for 1x8x8 digits built from torchvision's own ``BasicBlock``.

    Attribute names follow torchvision's ResNet (conv1/bn1/layer1../fc) so tools that know that
    layout work on it unchanged; stages run at 8x8, 4x4 and 2x2.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(widths[0], widths[0], stride=1)
        self.layer2 = _stage(widths[0], widths[1], stride=2)
        self.layer3 = _stage(widths[1], widths[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    """One BasicBlock, with a 1x1 conv shortcut whenever the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride=stride, downsample=downsample))


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """A bundled demo network: how to build it, where its weights live and what it was trained on."""

    name: str
    builder: Callable[[], nn.Module]
    weights_file: str
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: str

    @property
    def weights_path(self) -> Path:
        return RESOURCES / self.weights_file

    @property
    def test_top1(self) -> float | None:
        """Test top-1 (%) recorded by ``scripts/train_demo.py``; ``None`` if not trained yet."""
        return demo_results().get(self.name, {}).get("test_top1")


DEMO_MODELS: dict[str, DemoModel] = {
    "demo-vgg": DemoModel("demo-vgg", DemoVGG, "demo_vgg.safetensors", (1, 8, 8), 10, "digits"),
    "demo-resnet": DemoModel("demo-resnet", DemoResNet, "demo_resnet.safetensors", (1, 8, 8), 10, "digits"),
}


def demo_results() -> dict[str, dict]:
    """The training record of the demo models (empty if the file is missing)."""
    if not DEMO_RESULTS_FILE.is_file():
        return {}
    return json.loads(DEMO_RESULTS_FILE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A ready-to-use model (eval mode, CPU) and what is known about it.

    ``input_shape`` is the (C, H, W) the model expects by default; ``source`` says where the
    weights came from (a file path, or ``"random init"``).
    """

    model: nn.Module
    spec: str
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str


def list_architectures() -> list[str]:
    """Names accepted by :func:`load_model`: the demo models, then torchvision classifiers."""
    return [*DEMO_MODELS, *(TORCHVISION_PREFIX + n for n in _torchvision_names())]


def load_model(spec: str, *, trust: bool = False) -> LoadedModel:
    """Load ``demo-vgg``/``demo-resnet``, ``torchvision:ARCH[@PATH]`` or an exported model file.

    ``trust=True`` additionally allows a pickled full ``nn.Module``; without it such files are
    refused before anything in them is executed.
    """
    spec = spec.strip()
    if spec in DEMO_MODELS:
        return _load_demo(DEMO_MODELS[spec])
    if spec.startswith(TORCHVISION_PREFIX):
        arch, _, path = spec.removeprefix(TORCHVISION_PREFIX).partition("@")
        return _load_torchvision(spec, arch.strip(), Path(path) if path else None, trust)
    path = Path(spec)
    if path.is_file():
        return _load_file(spec, path, trust)
    if path.is_dir():
        raise ModelLoadError(f"model '{spec}' is a folder, not a model file")
    if path.suffix or "/" in spec or "\\" in spec:
        raise ModelLoadError(f"model file '{spec}' does not exist")
    raise ModelLoadError(
        f"model '{spec}' not found: use {', '.join(DEMO_MODELS)}, torchvision:ARCH, "
        "torchvision:ARCH@WEIGHTS.pth or a path to an exported model file"
    )


# ---------------------------------------------------------------------------------------------
# Demo and torchvision loading
# ---------------------------------------------------------------------------------------------


def _load_demo(info: DemoModel) -> LoadedModel:
    from safetensors.torch import load_file

    if not info.weights_path.is_file():
        raise ModelLoadError(f"weights for {info.name} are missing ({info.weights_path}); run scripts/train_demo.py")
    model = info.builder()
    _load_strict(model, load_file(str(info.weights_path)), info.name, info.weights_path)
    return LoadedModel(model.eval(), info.name, info.name, info.num_classes, info.input_shape, str(info.weights_path))


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _load_torchvision(spec: str, arch: str, path: Path | None, trust: bool) -> LoadedModel:
    """Random init, or the weights in ``path`` with the class count/image size read from them."""
    import torchvision

    names = _torchvision_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5) or names[:8]
        raise ModelLoadError(f"unknown torchvision architecture '{arch}'; did you mean: {', '.join(close)}?")
    if path is None:
        model = torchvision.models.get_model(arch, weights=None, **_quiet_kwargs(arch, random_init=True))
        return LoadedModel(
            model.eval(), spec, f"torchvision:{arch}", _num_classes_of(model), _input_shape(model), "random init"
        )
    state = _read_state_dict(path, trust)
    kwargs = _architecture_kwargs(arch, state, path)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    _load_strict(model, state, f"torchvision:{arch}", path)
    return LoadedModel(model.eval(), spec, f"torchvision:{arch}", kwargs["num_classes"], _input_shape(model), str(path))


def _architecture_kwargs(arch: str, state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """Constructor arguments that the checkpoint's shapes pin down (classes, ViT size, aux heads)."""
    kwargs: dict = {"num_classes": _classes_from_state(state, arch, path)}
    if arch.startswith("vit_") and "encoder.pos_embedding" in state and "conv_proj.weight" in state:
        patch = int(state["conv_proj.weight"].shape[-1])
        side = math.isqrt(int(state["encoder.pos_embedding"].shape[1]) - 1)
        kwargs["image_size"] = patch * side
    if arch in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
    kwargs.update(_quiet_kwargs(arch, random_init=False))
    return kwargs


def _classes_from_state(state: Mapping[str, torch.Tensor], arch: str, path: Path) -> int:
    """The class count is the output size of the architecture's final classifier weight."""
    key = _classifier_key(arch)
    if key in state:
        return int(state[key].shape[0])
    # Not there: guess from the last layer in file order; the strict load then reports what differs.
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2]
    if not weights:
        raise ModelLoadError(f"{path}: no layer weights found, so it is not a model state dict")
    return int(weights[-1].shape[0])


@functools.lru_cache(maxsize=32)
def _classifier_key(arch: str) -> str:
    """Name of the last matrix/conv weight in module order.

    Taken from a freshly built model rather than the checkpoint because safetensors files store
    their keys sorted by name, which loses the layer order.
    """
    import torchvision

    kwargs = _quiet_kwargs(arch, random_init=False)
    try:
        with torch.device("meta"):  # no memory or init cost for large models
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except (NotImplementedError, RuntimeError):  # a few constructors compute with real tensors
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return [k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim >= 2][-1]


def _quiet_kwargs(arch: str, *, random_init: bool) -> dict:
    """GoogLeNet/Inception warn unless told how to initialise; say so explicitly."""
    return {"init_weights": random_init} if arch in ("googlenet", "inception_v3") else {}


def _num_classes_of(model: nn.Module) -> int:
    """Output size of the last Linear/Conv2d; for TorchScript (whose submodules are not those
    classes) the first dimension of the last matrix or kernel."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if last:
        return int(last[-1].out_features if isinstance(last[-1], nn.Linear) else last[-1].out_channels)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    if not weights:
        raise ModelLoadError(f"{type(model).__name__} has no linear or convolution layer")
    return int(weights[-1].shape[0])


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    """Demo nets take 8x8; ViTs have a fixed size; other torchvision classifiers default to 224."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        channels = first.in_channels
    else:
        kernel = next((p for p in model.parameters() if p.ndim == 4), None)
        channels = int(kernel.shape[1]) if kernel is not None else 3
    if isinstance(model, DemoVGG | DemoResNet):
        return (channels, 8, 8)
    size = int(getattr(model, "image_size", 224))
    return (channels, size, size)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _load_file(spec: str, path: Path, trust: bool) -> LoadedModel:
    """An exported snp model, or (only with ``trust``) a pickled full module or TorchScript file.

    The content decides, not the file name: people rename files, and a ``.pth`` that really holds
    safetensors (or the reverse) should load like what it is.
    """
    kind = sniff_format(path)
    if kind == "safetensors":
        if "snp_format" in _safetensors_metadata(path):
            from snp_engine.io import load_exported

            return load_exported(path)
        raise _bare_state_dict_error(path)
    if kind == "torchscript":
        model = _load_torchscript(path, trust)
        arch = f"torchscript:{getattr(model, 'original_name', 'module')}"
        return LoadedModel(model, spec, arch, _num_classes_of(model), _input_shape(model), str(path))
    _refuse_unreadable(path, kind)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        model = obj.cpu().eval()
        return LoadedModel(
            model, spec, f"pickle:{type(model).__name__}", _num_classes_of(model), _input_shape(model), str(path)
        )
    if isinstance(obj, Mapping):
        raise _bare_state_dict_error(path)
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a model")


def _bare_state_dict_error(path: Path) -> ModelLoadError:
    return ModelLoadError(f"{path} holds bare weights without an architecture; load it as torchvision:ARCH@{path}")


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_state_dict(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or PyTorch file (sniffed, whatever its suffix); a state dict may
    sit under state_dict/model."""
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    kind = sniff_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        _safetensors_metadata(path)  # turns a malformed file into a clear error
        try:
            return _strip_prefix(load_file(str(path)), "module.")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelLoadError(
                f"{path}: the weights cannot be read, the file is damaged or truncated ({exc})"
            ) from None
    if kind == "torchscript":
        return dict(_load_torchscript(path, trust).state_dict())
    _refuse_unreadable(path, kind)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
            if isinstance(inner, nn.Module):
                return inner.state_dict()
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ModelLoadError(f"{path}: no state dict found (expected a dict of tensors)")
    return _strip_prefix(tensors, "module.")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Undo the ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    if state and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _torch_load(path: Path, trust: bool) -> object:
    """Read a torch file with the restricted unpickler; the full one only when trusted.

    The file is passed as an open handle because ``torch.load`` picks its reader from a
    ``.safetensors`` name, which would misread a renamed ``torch.save`` archive.
    """
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise ModelLoadError(
                f"{path} is not plain weights (a pickled model or other objects). Unpickling can run "
                "arbitrary code, so it was not opened; if you trust its source, pass --trust "
                "(trust=True) to load it"
            ) from exc
    except Exception as exc:  # a damaged archive fails in the unpickler or the zip reader in many ways
        raise ModelLoadError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from exc
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling can fail in arbitrary ways
        raise ModelLoadError(f"{path}: could not be unpickled ({type(exc).__name__}: {exc})") from exc


def sniff_format(path: Path) -> str:
    """What a file holds, judged by its first bytes rather than its name.

    One of ``"empty"``, ``"safetensors"``, ``"torchscript"``, ``"zip"`` (a ``torch.save`` archive),
    ``"damaged-zip"`` (truncated or corrupt archive), ``"pickle"`` (legacy ``torch.save``),
    ``"numpy"`` or ``"unknown"``. Reading a few bytes is cheap and lets every loader give a message
    that says what the file really is.
    """
    import zipfile

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "damaged-zip"
        if any(name.partition("/")[2] == "constants.pkl" for name in names):
            return "torchscript"
        return "zip"
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header_size = int.from_bytes(head[:8], "little")
        if 2 <= header_size <= size - 8:
            return "safetensors"
    return "unknown"


def _refuse_unreadable(path: Path, kind: str) -> None:
    """One clear sentence for files that are not a PyTorch archive or pickle at all."""
    if kind in ("zip", "pickle"):
        return
    reasons = {
        "empty": "the file is empty (0 bytes)",
        "damaged-zip": "a damaged or truncated PyTorch file (its zip archive cannot be read)",
        "numpy": "a NumPy array file, not a model",
    }
    reason = reasons.get(kind, "not a model file snp can read (neither safetensors nor a PyTorch file)")
    raise ModelLoadError(f"{path}: {reason}")


def _load_torchscript(path: Path, trust: bool) -> nn.Module:
    """A TorchScript program runs its own code, so like a pickle it needs ``trust``."""
    if not trust:
        raise ModelLoadError(
            f"{path} is a TorchScript program, which can run arbitrary code, so it was not opened; if you "
            "trust its source, pass --trust (trust=True) to load it"
        )
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # TorchScript deserialisation fails in many ways
        raise ModelLoadError(f"{path}: could not be loaded as TorchScript ({type(exc).__name__}: {exc})") from None


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    """``load_state_dict(strict=True)`` with a short, readable list of what does not fit."""
    problems = _state_dict_mismatches(model, state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{path} does not fit {arch}: {shown}")
    model.load_state_dict(state, strict=True)


def _state_dict_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Wrong shapes first (most telling when the keys agree), then missing and unexpected keys."""
    expected = model.state_dict()
    problems = [
        f"{k} has shape {tuple(state[k].shape)}, model wants {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems += [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    return problems
