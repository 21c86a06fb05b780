"""Datasets for calibration, evaluation and fine-tuning.

Three sources are understood by :func:`load_data`:

* ``digits`` -- scikit-learn's bundled handwritten digits (1,797 real 8x8 images), so the tool has
  real data to work on without any download;
* a folder in ImageFolder layout (``root/<class>/<image>``, optionally split into ``train/``,
  ``val/`` and/or ``test/``);
* ``npz:PATH`` -- a NumPy archive of ready-made float tensors.

Every source yields a :class:`DataBundle` whose datasets return ``(CxHxW float32 tensor, int label)``.
Splits are deterministic so that a calibration set and a test set never overlap and numbers are
reproducible between runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from snp_engine.errors import DataError

DATASETS: dict[str, str] = {
    "digits": "Handwritten digits from scikit-learn: 1,797 real 8x8 grayscale images, 10 classes "
    "(bundled, no download). Split 1000 train / 300 calibration / 497 test.",
}

# The digits split is fixed (not driven by ``seed``) because the bundled demo models were trained on
# its train part and their recorded accuracies refer to its test part.
DIGITS_SPLIT_SEED = 0
DIGITS_SPLIT_SIZES = (1000, 300, 497)
# Mean/std of the train split after scaling pixel values to [0, 1]; fixed so that normalisation does
# not depend on which split was loaded first (checked against a fresh computation in the tests).
DIGITS_MEAN = 0.30498828125
DIGITS_STD = 0.3757487250209352

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The splits of one dataset plus the facts a model needs to be matched against it.

    ``train`` may be ``None`` when the source has no training part; ``calibration`` feeds the
    activation analysis and ``test`` the reported accuracies. ``skipped`` counts image files that
    could not be read and were left out.
    """

    name: str
    train: Dataset | None
    calibration: Dataset
    test: Dataset
    num_classes: int | None
    channels: int
    image_size: tuple[int, int] | None
    skipped: int = 0
    classes: tuple[str, ...] | None = None


class TensorImageDataset(Dataset):
    """Images and labels held in memory; returns plain ``int`` labels like ImageFolder does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class AdaptedDataset(Dataset):
    """Repeats a single channel and/or resizes images so they fit a model's expected input."""

    def __init__(self, base: Dataset, channels: int | None, size: tuple[int, int] | None) -> None:
        self.base = base
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if self.channels is not None and image.shape[0] != self.channels:
            image = image.repeat(self.channels, 1, 1)
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return image, label


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_data(spec: str, *, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """Load ``digits``, an ImageFolder directory or ``npz:PATH`` as a :class:`DataBundle`.

    ``input_size``/``channels`` say what the images should come out as: folder images are resized
    and centre-cropped to ``input_size`` (default 224); digits and npz data are adapted with
    :func:`adapt_to_model` when either is given. ``seed`` drives the folder/npz splits only.
    """
    spec = spec.strip()
    if spec.lower() == "digits":
        bundle = load_digits_bundle()
    elif spec.startswith("npz:") or spec.endswith(".npz"):
        bundle = _load_npz(Path(spec.removeprefix("npz:")), seed)
    else:
        path = Path(spec)
        if path.is_dir():
            return _load_folder(path, input_size or 224, channels, seed)
        if path.exists():
            raise DataError(f"data '{spec}': not a folder and not an .npz file (use npz:PATH for NumPy data)")
        known = ", ".join(DATASETS)
        raise DataError(f"data '{spec}': no such folder or file, and not an embedded dataset ({known})")
    if input_size is None and channels is None:
        return bundle
    size = (input_size, input_size) if input_size is not None else bundle.image_size
    return adapt_to_model(bundle, channels if channels is not None else bundle.channels, size)


def adapt_to_model(bundle: DataBundle, channels: int, image_size: tuple[int, int] | None) -> DataBundle:
    """Make the bundle's images fit a model that wants ``channels`` x ``image_size`` inputs.

    Grayscale images are repeated across channels (1 -> 3) and resized bilinearly; there is no
    meaningful way to reduce colour images to fewer channels, so that is refused.
    """
    want_size = tuple(image_size) if image_size is not None else None
    same_size = want_size is None or want_size == bundle.image_size
    if channels == bundle.channels and same_size:
        return bundle
    if channels != bundle.channels and bundle.channels != 1:
        raise DataError(
            f"data '{bundle.name}' has {bundle.channels}-channel images but the model expects {channels} "
            "channel(s); only 1-channel images can be repeated to more channels"
        )
    new_channels = channels if channels != bundle.channels else None
    new_size = None if same_size else want_size

    def wrap(ds: Dataset | None) -> Dataset | None:
        return None if ds is None else AdaptedDataset(ds, new_channels, new_size)  # type: ignore[arg-type]

    return dataclasses.replace(
        bundle,
        train=wrap(bundle.train),
        calibration=wrap(bundle.calibration),
        test=wrap(bundle.test),
        channels=channels,
        image_size=want_size if want_size is not None else bundle.image_size,
    )


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, limit: int | None = None
) -> DataLoader:
    """A single-process DataLoader; ``limit`` keeps the first ``limit`` samples.

    Splits produced here are already shuffled, so their first samples are a fair sample of all
    classes. Shuffling uses its own seeded generator so it does not depend on global RNG state.
    """
    if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(max(0, limit)))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Normalised images, labels and the fixed permutation; cached because sklearn import is slow."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = (raw.data.astype(np.float32) / 16.0 - DIGITS_MEAN) / DIGITS_STD
    images_t = torch.from_numpy(images.reshape(-1, 1, 8, 8).astype(np.float32))
    labels_t = torch.from_numpy(raw.target.astype(np.int64))
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels_t))
    return images_t, labels_t, order


def digits_split_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``load_digits()`` of the train, calibration and test splits."""
    _, _, order = _digits_arrays()
    n_train, n_cal, _ = DIGITS_SPLIT_SIZES
    return order[:n_train], order[n_train : n_train + n_cal], order[n_train + n_cal :]


def load_digits_bundle() -> DataBundle:
    """The embedded digits dataset as 1x8x8 float tensors, normalised with the train statistics."""
    images, labels, _ = _digits_arrays()

    def part(idx: np.ndarray) -> TensorImageDataset:
        index = torch.from_numpy(idx)
        return TensorImageDataset(images[index], labels[index])

    train, cal, test = (part(i) for i in digits_split_indices())
    return DataBundle(
        name="digits",
        train=train,
        calibration=cal,
        test=test,
        num_classes=10,
        channels=1,
        image_size=(8, 8),
        classes=tuple(str(d) for d in range(10)),
    )


# ---------------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------------


def _load_npz(path: Path, seed: int) -> DataBundle:
    """Read ``x``/``y`` (split 50/50) or ``x_train``/``y_train``/``x_test``/``y_test``."""
    if not path.is_file():
        raise DataError(f"npz file '{path}' does not exist")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise DataError(f"npz file '{path}' cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise DataError(f"npz file '{path}' is empty (0 bytes)")
    if head == b"\x93NUMPY":
        raise DataError(f"npz file '{path}' is a single .npy array; save x and y with numpy.savez instead")
    if head[:2] != b"PK":
        raise DataError(f"npz file '{path}' is not a NumPy .npz archive (a zip file written by numpy.savez)")
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except Exception as exc:  # numpy and zipfile report a damaged archive in many ways
        raise DataError(f"npz file '{path}' could not be read as a NumPy .npz archive ({exc})") from exc
    with archive:
        split_mode = bool(keys & {"x_train", "y_train", "x_test", "y_test"})
        required = ("x_train", "y_train", "x_test", "y_test") if split_mode else ("x", "y")
        missing = [k for k in required if k not in keys]
        if missing:
            found = ", ".join(sorted(keys)[:8]) + (", …" if len(keys) > 8 else "") if keys else "nothing"
            raise DataError(f"npz file '{path.name}': missing key {', '.join(missing)} (found: {found})")
        arrays = {}
        for key in required:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):  # object arrays need pickle, which is never enabled
                    raise DataError(
                        f"npz file '{path.name}': '{key}' cannot be read without unpickling; store plain numeric arrays"
                    ) from None
                raise DataError(f"npz file '{path.name}': '{key}' is damaged ({exc})") from None
            except Exception as exc:  # zip, zlib and header errors of a damaged member
                raise DataError(f"npz file '{path.name}': '{key}' is damaged or truncated ({exc})") from None
    if split_mode:
        x_train, y_train = _check_xy(path, arrays["x_train"], arrays["y_train"], "x_train", "y_train")
        x_test, y_test = _check_xy(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"npz file '{path.name}': x_train images {x_train.shape[1:]} and x_test images "
                f"{x_test.shape[1:]} differ in shape"
            )
        train = TensorImageDataset(x_train, y_train)
        calibration = Subset(train, _permutation(len(train), seed))
        test: Dataset = TensorImageDataset(x_test, y_test)
        all_labels = torch.cat([y_train, y_test])
    else:
        x, y = _check_xy(path, arrays["x"], arrays["y"], "x", "y")
        train = None
        calibration, test = _halves(TensorImageDataset(x, y), seed, f"npz file '{path.name}'")
        all_labels = y
        x_train = x
    return DataBundle(
        name=f"npz:{path}",
        train=train,
        calibration=calibration,
        test=test,
        num_classes=int(all_labels.max()) + 1,
        channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
    )


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, x_key: str, y_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one image/label pair and convert it to tensors; errors name the file and key."""
    where = f"npz file '{path.name}'"
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise DataError(f"{where}: '{x_key}' has shape {x.shape}, expected (N, C, H, W)")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: '{x_key}' has dtype {x.dtype}, expected float32 (normalised images)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: '{y_key}' has shape {y.shape}, expected ({len(x)},) to match '{x_key}'")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: '{y_key}' has dtype {y.dtype}, expected integer class labels")
    if len(y) == 0:
        raise DataError(f"{where}: '{x_key}' holds no samples")
    if y.min() < 0:
        raise DataError(f"{where}: '{y_key}' has negative labels (min {int(y.min())}); labels must be >= 0")
    if not np.isfinite(x).all():
        raise DataError(f"{where}: '{x_key}' contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------


def _load_folder(root: Path, size: int, channels: int | None, seed: int) -> DataBundle:
    """Load an ImageFolder tree, honouring ``train/``, ``val/`` and ``test/`` subfolders.

    ``val/`` + ``test/``: val calibrates, test is held out. ``train/`` + one of them: calibration
    draws from train (shuffled) so the held-out folder stays whole for the reported accuracy. A
    single held-out folder, or a plain class tree, is split into calibration and test halves.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"folder '{root}': images can be loaded with 1 or 3 channels, not {channels}")
    transform = _folder_transform(size, channels or 3)
    skipped = [0]
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = {n: subdirs[n] for n in ("train", "val", "test") if n in subdirs}
    if not split_dirs:
        full = _image_folder(root, transform, skipped)
        train, (calibration, test) = None, _halves(full, seed, f"folder '{root}'")
        classes = full.classes
    else:
        parts = {n: _image_folder(p, transform, skipped) for n, p in split_dirs.items()}
        classes = _common_classes(root, parts)
        train, calibration, test = _assign_splits(root, parts, seed)
    return DataBundle(
        name=str(root),
        train=train,
        calibration=calibration,
        test=test,
        num_classes=len(classes),
        channels=channels or 3,
        image_size=(size, size),
        skipped=skipped[0],
        classes=tuple(classes),
    )


def _common_classes(root: Path, parts: dict) -> list[str]:
    """All split folders must name the same classes, otherwise label indices would disagree."""
    names = list(parts)
    first = parts[names[0]].classes
    for name in names[1:]:
        if parts[name].classes != first:
            raise DataError(f"folder '{root}': {name}/ has classes {parts[name].classes} but {names[0]}/ has {first}")
    return first


def _assign_splits(root: Path, parts: dict, seed: int) -> tuple[Dataset | None, Dataset, Dataset]:
    """Map the present split folders onto (train, calibration, test)."""
    train = parts.get("train")
    if "val" in parts and "test" in parts:
        return train, parts["val"], parts["test"]
    held = parts.get("val", parts.get("test"))
    if held is None:
        raise DataError(f"folder '{root}': has train/ but no val/ or test/ subfolder to evaluate on")
    if train is not None:
        return train, Subset(train, _permutation(len(train), seed)), held
    return None, *_halves(held, seed, f"folder '{root}'")


def _folder_transform(size: int, channels: int) -> Callable:
    """Resize + centre-crop + ImageNet normalisation, the usual evaluation pipeline."""
    from torchvision import transforms

    steps: list[Callable] = [transforms.Resize(size), transforms.CenterCrop(size)]
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        steps.append(transforms.Grayscale(num_output_channels=1))
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _image_folder(root: Path, transform: Callable, skipped: list[int]):
    """An ImageFolder that leaves out (and counts) files with an image extension PIL cannot open.

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
            with Image.open(path):
                return True
        except (OSError, UnidentifiedImageError, ValueError):
            skipped[0] += 1
            return False

    try:
        folder = ImageFolder(
            str(root), transform=transform, loader=_load_image, is_valid_file=readable, allow_empty=True
        )
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
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports broken files as all of these
        raise DataError(f"image '{path}' cannot be decoded ({exc}); remove or replace it") from None


# ---------------------------------------------------------------------------------------------
# Splitting helpers
# ---------------------------------------------------------------------------------------------


def _permutation(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


def _halves(dataset: Dataset, seed: int, where: str) -> tuple[Subset, Subset]:
    """Shuffle deterministically and cut into calibration (first half) and test (second half)."""
    if len(dataset) < 2:  # type: ignore[arg-type]
        raise DataError(f"{where}: needs at least 2 samples to form both a calibration and a test split")
    order: Sequence[int] = _permutation(len(dataset), seed)  # type: ignore[arg-type]
    half = len(order) // 2
    return Subset(dataset, order[:half]), Subset(dataset, order[half:])
