"""The networks snp can build from a name: the bundled demo networks, torchvision classifiers and,
where the optional ``timm`` package is installed, timm models.

Also :class:`LoadedModel`, the plain record every loader returns, and the helpers an export needs
to rebuild its base network (:func:`constructor_kwargs`, :func:`build_architecture`). Nothing here
reads model files; :mod:`snp_engine.models` and :mod:`snp_engine.exports` do, on top of this.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.headers import shorten
from snp_engine.results import PruningRecord

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEMO_RESULTS_FILE = RESOURCES / "demo_models.json"
TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
# The only timm constructor arguments snp passes (and reads from a file header): nothing that names
# weights, a checkpoint or a hub config, so building a timm model never downloads or reads a file.
TIMM_ARGUMENTS = ("num_classes", "in_chans", "img_size")
# A base network described by a file header is built only up to this size; the largest torchvision
# classifier has about 650 million parameters.
MAX_PARAMETERS = 1_000_000_000


# ---------------------------------------------------------------------------------------------
# Demo networks


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


def torchvision_names() -> list[str]:
    """The classification architectures of the installed torchvision, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


# ---------------------------------------------------------------------------------------------
# What every loader returns


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A ready-to-use model (eval mode, CPU) and what is known about it.

    ``input_shape`` is the (C, H, W) the model expects by default; ``source`` says where the
    weights came from (a file path, or ``"random init"``). ``size_rule`` says how strictly the
    input size holds: ``fixed`` (the architecture takes only that size), ``recorded`` (the size it
    was trained or pruned at) or ``any`` (a guess; the data's own size is used instead).
    An snp export also brings its ``pruning`` record (kept units relative to its base
    architecture) and its whole header as ``metadata``.
    """

    model: nn.Module
    spec: str
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    size_rule: str = "any"
    pruning: PruningRecord | None = None
    metadata: Mapping[str, Any] | None = None


def with_versions(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the per-module format versions that ``model.state_dict()`` carries.

    A safetensors file stores tensors only; some torchvision modules (MNASNet) refuse a state dict
    without their version, so the freshly built model's own versions are attached.
    """
    plain = dict(state)
    metadata = getattr(model.state_dict(), "_metadata", None)
    if metadata is not None and getattr(state, "_metadata", None) is None:
        plain = type(model.state_dict())(plain)
        plain._metadata = metadata
    return plain


def state_dict_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------
# Rebuilding a base network


Builder = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class ArchitectureFamily:
    """Architectures an export can be rebuilt from: which names it covers and how to build one.

    ``builder(arch, path)`` returns the constructor (called with the stored keyword arguments) or
    raises :class:`ModelLoadError` naming ``path``. A model source whose networks can be exported
    registers its family here (the demo networks and torchvision are built in).
    """

    name: str
    matches: Callable[[str], bool]
    builder: Callable[[str, Path], Builder]


ARCHITECTURE_FAMILIES: dict[str, ArchitectureFamily] = {}


def register_family(family: ArchitectureFamily) -> ArchitectureFamily:
    ARCHITECTURE_FAMILIES[family.name] = family
    return family


def family_of(arch: str) -> ArchitectureFamily | None:
    return next((f for f in ARCHITECTURE_FAMILIES.values() if f.matches(arch)), None)


def _demo_builder(arch: str, path: Path) -> Builder:
    build = DEMO_MODELS[arch].builder

    def builder(**arguments: Any) -> nn.Module:
        if isinstance(arguments.get("widths"), list):
            arguments["widths"] = tuple(arguments["widths"])
        return build(**arguments)

    return builder


def _torchvision_builder(arch: str, path: Path) -> Builder:
    name = arch.removeprefix(TORCHVISION_PREFIX)
    if name not in torchvision_names():
        raise ModelLoadError(f"{path}: base architecture '{arch}' is not available in this torchvision")

    def builder(**arguments: Any) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **arguments)

    return builder


def import_timm(spec: str):
    """The ``timm`` module, or one clear line saying how to install it (timm is optional)."""
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"{spec} needs the timm package, which is not installed: pip install timm") from None
    except Exception as exc:  # an installed timm that does not fit this torch fails in its own ways
        raise ModelLoadError(
            f"{spec} needs the timm package, which fails to import ({type(exc).__name__}: {exc}); "
            "pip install --upgrade timm"
        ) from None
    return timm


def timm_names(timm) -> list[str]:
    """timm's model names, sorted (without pretrained tags)."""
    return sorted(timm.list_models())


def check_timm_name(timm, name: str) -> bool:
    """True for a name of timm's local registry: ``NAME`` or ``NAME.TAG`` of a known pretrained tag.

    Hub and folder names (``hf-hub:…``, ``local-dir:…``) are not: timm would fetch or read their config.
    """
    if not name or any(c in name for c in ":/\\"):
        return False
    base, dot, _ = name.partition(".")
    return timm.is_model(base) and (not dot or name in timm.list_pretrained())


def build_timm(timm, name: str, arguments: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model`` with random weights; no download, whatever the arguments say."""
    unknown = sorted(set(arguments) - set(TIMM_ARGUMENTS))
    if unknown:
        raise ModelLoadError(
            f"timm:{name}: unsupported constructor argument(s) {', '.join(unknown)} "
            f"(snp passes only {', '.join(TIMM_ARGUMENTS)})"
        )
    # pretrained=False, and no weight sources in the config, so nothing is ever fetched
    overlay = {"url": "", "hf_hub_id": None, "file": None}
    return timm.create_model(name, pretrained=False, pretrained_cfg_overlay=overlay, **arguments)


def _timm_builder(arch: str, path: Path) -> Builder:
    name = arch.removeprefix(TIMM_PREFIX)
    timm = import_timm(f"{path}: base architecture '{arch}'")
    if not check_timm_name(timm, name):
        raise ModelLoadError(f"{path}: base architecture '{arch}' is not available in this timm ({timm.__version__})")

    def builder(**arguments: Any) -> nn.Module:
        return build_timm(timm, name, arguments)

    return builder


register_family(ArchitectureFamily("demo", lambda arch: arch in DEMO_MODELS, _demo_builder))
register_family(
    ArchitectureFamily("torchvision", lambda arch: arch.startswith(TORCHVISION_PREFIX), _torchvision_builder)
)
register_family(ArchitectureFamily("timm", lambda arch: arch.startswith(TIMM_PREFIX), _timm_builder))


def check_exportable(arch: str) -> None:
    """Refuse early (before pruning or training) an architecture that an export could not rebuild."""
    if family_of(arch) is None:
        raise SnpError(
            f"cannot export a model of architecture '{arch}': only the demo models, torchvision and timm "
            "architectures can be rebuilt from an export (a pickled model has no rebuildable architecture)"
        )


def constructor_kwargs(
    model: nn.Module, arch: str, num_classes: int, units: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Constructor arguments that the base architecture needs to come out with the same shapes.

    ``units`` are the base network's unit counts per pruned group (a pruning record's): where a
    constructor argument is a width that pruning may have changed, the base width is taken from it.
    """
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    units = units or {}
    if arch in DEMO_MODELS:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            kwargs["in_channels"] = int(first.in_channels)
        if isinstance(model, DemoResNet):
            # each stage's residual stream is one group, named after its first producer
            streams = {
                "conv1": model.conv1,
                "layer2.0.conv2": model.layer2[0].conv2,
                "layer3.0.conv2": model.layer3[0].conv2,
            }
            kwargs["widths"] = [int(units.get(name, conv.out_channels)) for name, conv in streams.items()]
        return kwargs
    if arch.startswith(TIMM_PREFIX):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first.in_channels != 3:
            kwargs["in_chans"] = int(first.in_channels)
        return kwargs
    if isinstance(getattr(model, "image_size", None), int):
        kwargs["image_size"] = int(model.image_size)
    if arch.removeprefix(TORCHVISION_PREFIX) in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = bool(getattr(model, "aux_logits", False))
        kwargs["init_weights"] = False
    return kwargs


def build_architecture(arch: str, kwargs: Mapping[str, Any], path: Path) -> nn.Module:
    """A randomly initialised base network for the file ``path``; its weights are all overwritten.

    The network is first built on the meta device, which allocates nothing, so that constructor
    arguments describing a network of more than :data:`MAX_PARAMETERS` parameters are refused
    before any memory is spent on them.
    """
    kwargs = dict(kwargs)
    family = family_of(arch)
    if family is None:
        raise ModelLoadError(f"{path}: unknown base architecture '{arch}'")
    builder = family.builder(arch, path)
    shown = shorten(repr(kwargs), 200)
    try:
        with torch.device("meta"):
            probe = builder(**kwargs)
    except Exception:  # a few constructors compute with real tensors; odd arguments fail again below
        probe = None
    if probe is not None:
        params = sum(p.numel() for p in probe.parameters())
        if params > MAX_PARAMETERS:
            raise ModelLoadError(
                f"{path}: {arch} with {shown} would have {params:,} parameters; snp builds at most "
                f"{MAX_PARAMETERS:,} from a file"
            )
    try:
        return builder(**kwargs)
    except SnpError:
        raise
    except Exception as exc:  # constructors reject odd arguments with TypeError, ValueError, RuntimeError, …
        raise ModelLoadError(f"{path}: cannot build base architecture {arch} with {shown} ({exc})") from None


__all__ = [
    "ARCHITECTURE_FAMILIES",
    "DEMO_MODELS",
    "DEMO_RESULTS_FILE",
    "MAX_PARAMETERS",
    "RESOURCES",
    "TIMM_ARGUMENTS",
    "TIMM_PREFIX",
    "TORCHVISION_PREFIX",
    "ArchitectureFamily",
    "DemoModel",
    "DemoResNet",
    "DemoVGG",
    "LoadedModel",
    "build_architecture",
    "build_timm",
    "check_exportable",
    "check_timm_name",
    "constructor_kwargs",
    "demo_results",
    "family_of",
    "import_timm",
    "register_family",
    "state_dict_mismatches",
    "timm_names",
    "torchvision_names",
]
