"""A folder of images in ImageFolder layout (``root/<class>/<image>``), optionally split into
``train/``, ``val/`` (or ``validation/``, ``valid/``) and/or ``test/``.

Images are decoded at the model's input size (resize the shorter side, centre crop, ImageNet
normalisation). A folder whose images all have one size reports that size, so a model that takes
any size runs on the images as they are; a folder of grey images reports 1 channel (repeated for
a colour model, and said). 16-bit grey images are scaled to 8 bits, not clipped.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from snp_engine.datasources.base import DataBundle, register, shuffled
from snp_engine.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224  # decoding size of a folder of mixed sizes until a model asks for another
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
GREY_MODES = ("1", "L", "LA", "La", "I", "F")  # PIL modes of one-channel images (and "I;16…")


def load_folder(root: Path, seed: int) -> DataBundle:
    """Scan the folder once (headers only) and decode it at its own size, or 224 when sizes differ;
    with 1 channel when every image is grey, else with 3."""
    skipped, sizes, modes = [0], Counter(), {"grey": 0, "colour": 0}
    split_dirs = _split_dirs(root)
    if split_dirs:
        parts = {n: _image_folder(p, skipped, sizes, modes) for n, p in split_dirs.items()}
        classes = _common_classes(root, parts)
    else:
        parts = {"": _image_folder(root, skipped, sizes, modes)}
        classes = parts[""].classes
    native = next(iter(sizes)) if len(sizes) == 1 else None
    # the most common size (the larger of equally common ones), for a model that takes any size
    common = max(sizes, key=lambda size: (sizes[size], size[0] * size[1])) if sizes else None
    grey, colour = modes["grey"], modes["colour"]

    def decode(channels: int, size: tuple[int, int], as_found: bool = False) -> DataBundle:
        if channels not in (1, 3):
            raise DataError(f"folder '{root}': images can be loaded with 1 or 3 channels, not {channels}")
        transform = _folder_transform(size, channels, resize=size != native)
        views = {}
        for name, part in parts.items():
            view = copy.copy(part)  # shares the file list; only the decoding differs
            view.transform = transform
            views[name] = view
        train, calibration, test, held_out = _assign_splits(root, views, seed)
        return DataBundle(
            name=str(root),
            train=train,
            calibration=calibration,
            test=test,
            num_classes=len(classes),
            channels=channels,
            image_size=native if as_found else size,
            skipped=skipped[0],
            classes=tuple(classes),
            held_out=held_out,
            adapted=(f"{grey} of {grey + colour} images are grey, read as RGB",)
            if channels == 3 and grey and colour
            else (),
            common_size=common if native is None else None,
            retarget=decode,
        )

    return decode(1 if not colour else 3, native or (DEFAULT_SIZE, DEFAULT_SIZE), as_found=True)


def _split_dirs(root: Path) -> dict[str, Path]:
    """The split folders present, by split name; ``validation/``, ``valid/``, ``training/`` and
    ``testing/`` (any case) count as ``val/``, ``train/`` and ``test/``; two folders of one split are refused."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        name = SPLIT_ALIASES.get(path.name.lower(), path.name.lower())
        if name not in SPLIT_NAMES:
            continue
        if name in found:
            raise DataError(f"folder '{root}': both {found[name].name}/ and {path.name}/ would be its {name} split")
        found[name] = path
    return {name: found[name] for name in SPLIT_NAMES if name in found}


def _common_classes(root: Path, parts: dict) -> list[str]:
    """All split folders must name the same classes, otherwise label indices would disagree."""
    names = list(parts)
    first = parts[names[0]].classes
    for name in names[1:]:
        if parts[name].classes != first:
            raise DataError(f"folder '{root}': {name}/ has classes {parts[name].classes} but {names[0]}/ has {first}")
    return first


def _assign_splits(root: Path, parts: dict, seed: int) -> tuple[Dataset | None, Dataset, Dataset, bool]:
    """(train, calibration, test, held_out) from the split folders present.

    ``val/`` + ``test/``: val calibrates, test is held out. ``train/`` + one of them: calibration
    draws from train (shuffled) so the held-out folder stays whole. A single folder of images
    (a plain class tree, or only ``val/`` or ``test/``) is used whole for calibration and evaluation.
    """
    where = f"folder '{root}'"
    if "" in parts:
        whole = shuffled(parts[""], seed, where)
        return None, whole, whole, False
    train = parts.get("train")
    if "val" in parts and "test" in parts:
        return train, parts["val"], parts["test"], True
    held = parts.get("val", parts.get("test"))
    if held is None:
        raise DataError(f"{where}: has train/ but no val/ or test/ subfolder to evaluate on")
    if train is not None:
        return train, shuffled(train, seed, where), held, True
    whole = shuffled(held, seed, where)
    return None, whole, whole, False


def _folder_transform(size: tuple[int, int], channels: int, resize: bool) -> Callable:
    """(Resize + centre-crop when the size changes) + ImageNet normalisation."""
    from torchvision import transforms

    steps: list[Callable] = [transforms.Resize(min(size)), transforms.CenterCrop(size)] if resize else []
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        steps.append(transforms.Grayscale(num_output_channels=1))
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _image_folder(root: Path, skipped: list[int], sizes: Counter, modes: dict[str, int]):
    """An ImageFolder that leaves out (and counts) files with an image extension PIL cannot open,
    and records the (height, width) of every readable image and counts grey and colour ones.

    Only the header is read here so that scanning a large folder stays fast; a file that is
    truncated further in still fails when it is loaded.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    def readable(path: str) -> bool:
        if not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
        except (OSError, UnidentifiedImageError, ValueError):
            skipped[0] += 1
            return False
        sizes[height, width] += 1
        modes["grey" if mode in GREY_MODES or mode.startswith("I;16") else "colour"] += 1
        return True

    try:
        folder = ImageFolder(str(root), loader=_load_image, is_valid_file=readable, allow_empty=True)
    except FileNotFoundError as exc:
        message = f"folder '{root}': no class subfolders found (expected {root}/<class>/<image>)"
        raise DataError(message) from exc
    if len(folder) == 0:
        raise DataError(f"folder '{root}': no readable images ({skipped[0]} unreadable file(s) skipped)")
    return folder


def _load_image(path: str):
    """torchvision's loader, with a damage found only when the pixels are decoded (a truncated
    JPEG, say) reported as a :class:`DataError` naming the file instead of a bare ``OSError``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _eight_bit(image).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports broken files as all of these
        raise DataError(f"image '{path}' cannot be decoded ({exc}); remove or replace it") from None


def _eight_bit(image):
    """16-bit grey images scaled to 8 bits (PIL's own conversion clips every value above 255 to
    white); a 32-bit integer image is taken as 16-bit when its values exceed 255."""
    import numpy as np
    from PIL import Image

    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.asarray(image).astype(np.int64)
    if image.mode == "I" and values.max(initial=0) <= 255:
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    return Image.fromarray((values.clip(0, 65535) >> 8).astype(np.uint8), "L")


class FolderSource:
    """Folders of image files."""

    name = "folder"
    syntax = "FOLDER"
    summary = "a folder of images, FOLDER/<class>/<image> (optionally split into train/, val/, test/)"
    label = "Image folder"
    path_kind = "folder"
    file_filter = ""

    def spec_for(self, path: str) -> str:
        return path

    def matches(self, spec: str) -> bool:
        return Path(spec.strip()).is_dir()

    def load(self, spec: str, seed: int) -> DataBundle:
        return load_folder(Path(spec.strip()), seed)


register(FolderSource())
