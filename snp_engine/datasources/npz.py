"""``npz:PATH``: a NumPy archive of images and class labels.

Images are float (used as they are: normalised as the model was trained) or uint8 pixels 0-255
(read like an image folder's files: RGBA without alpha, scaled to [0, 1] and normalised with the
ImageNet mean/std), laid out (N, C, H, W), channels-last (N, H, W, C) or (N, H, W) for grey images. Labels are
integers (an (N, 1) column or one-hot rows too) or class names (numbered in sorted order, as folder
names are). Whatever is converted is said in the data's note.

``x``/``y`` is one set of samples, used whole for calibration (and for the accuracies, labelled
as such, unless other evaluation data is given); ``x_train``/``y_train``/``x_test``/``y_test``
calibrates on the train part and holds the test part out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from snp_engine.datasources.base import DataBundle, TensorImageDataset, register, shuffled
from snp_engine.datasources.folder import IMAGENET_MEAN, IMAGENET_STD
from snp_engine.errors import DataError

PREFIX = "npz:"
IMAGE_CHANNELS = (1, 3, 4)  # channel counts a last axis is taken for (grey, RGB, RGBA)


def load_npz(path: Path, seed: int) -> DataBundle:
    """Read ``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test`` with every check named."""
    arrays, split_mode = _read_arrays(path)
    where = f"npz file '{path.name}'"
    pairs = (("x_train", "y_train"), ("x_test", "y_test")) if split_mode else (("x", "y"),)
    notes: list[str] = []
    images = {x_key: _images(where, arrays[x_key], x_key, notes) for x_key, _ in pairs}
    labels, classes = _labels(where, {y_key: arrays[y_key] for _, y_key in pairs}, notes)
    for x_key, y_key in pairs:
        if len(labels[y_key]) != len(images[x_key]):
            raise DataError(
                f"{where}: '{y_key}' has shape {arrays[y_key].shape}, expected ({len(images[x_key])},) "
                f"to match '{x_key}'"
            )
    if split_mode:
        x_train, y_train = images["x_train"], labels["y_train"]
        x_test, y_test = images["x_test"], labels["y_test"]
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"{where}: x_train images {tuple(x_train.shape[1:])} and x_test images "
                f"{tuple(x_test.shape[1:])} differ in shape"
            )
        train: Dataset | None = TensorImageDataset(x_train, y_train)
        calibration = shuffled(train, seed, where)
        test: Dataset = TensorImageDataset(x_test, y_test)
        all_labels = torch.cat([y_train, y_test])
        held_out = True
    else:
        x_train, y = images["x"], labels["y"]
        train = None
        calibration = shuffled(TensorImageDataset(x_train, y), seed, where)
        test, all_labels, held_out = calibration, y, False
    return DataBundle(
        name=f"{PREFIX}{path}",
        train=train,
        calibration=calibration,
        test=test,
        num_classes=len(classes) if classes is not None else int(all_labels.max()) + 1,
        channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        classes=classes,
        held_out=held_out,
        adapted=tuple(dict.fromkeys(notes)),  # once each, in order, though x_train and x_test both say it
    )


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The archive's arrays, after checking it is a readable .npz with the expected keys."""
    if not str(path) or str(path) == ".":
        raise DataError("npz: needs a path, npz:PATH")
    if path.is_dir():
        raise DataError(f"npz file '{path}' is a folder; give a folder of images without npz:")
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
        if any(key.endswith("data.pkl") for key in keys):
            archive.close()
            raise DataError(
                f"npz file '{path}' is a PyTorch file, not a NumPy .npz; save x and y with numpy.savez instead"
            )
    except DataError:
        raise
    except Exception as exc:  # numpy and zipfile report a damaged archive in many ways
        raise DataError(f"npz file '{path}' could not be read as a NumPy .npz archive ({exc})") from exc
    with archive:
        split_mode = bool(keys & {"x_train", "y_train", "x_test", "y_test"})
        required = ("x_train", "y_train", "x_test", "y_test") if split_mode else ("x", "y")
        missing = [k for k in required if k not in keys]
        if missing:
            found = ", ".join(sorted(keys)[:8]) + (", …" if len(keys) > 8 else "") if keys else "nothing"
            raise DataError(
                f"npz file '{path.name}': missing key {', '.join(missing)} (found: {found}); "
                "save images and labels as numpy.savez(PATH, x=IMAGES, y=LABELS)"
            )
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
    return arrays, split_mode


def _images(where: str, x: np.ndarray, key: str, notes: list[str]) -> torch.Tensor:
    """``x`` as float32 (N, C, H, W): float images as they are; (N, H, W) and channels-last
    (N, H, W, C) arrays, and uint8 pixels, converted (each said in ``notes``)."""
    if x.ndim == 3 and 0 not in x.shape:
        x = x[:, None]
        notes.append("(N, H, W) images read as 1-channel (N, 1, H, W)")
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise DataError(f"{where}: '{key}' has shape {x.shape}, expected (N, C, H, W), (N, H, W, C) or (N, H, W)")
    if x.shape[1] not in IMAGE_CHANNELS and x.shape[3] in IMAGE_CHANNELS:
        x = x.transpose(0, 3, 1, 2)
        notes.append("channels-last (N, H, W, C) images transposed to (N, C, H, W)")
    if len(x) == 0:
        raise DataError(f"{where}: '{key}' holds no samples")
    if x.dtype == np.uint8:
        return torch.from_numpy(_pixels(x, notes))
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{where}: '{key}' has dtype {x.dtype}, expected float images (normalised as for training) "
            "or uint8 pixels 0-255"
        )
    if not np.isfinite(x).all():
        raise DataError(f"{where}: '{key}' contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _pixels(x: np.ndarray, notes: list[str]) -> np.ndarray:
    """uint8 pixels as an image folder's files would be read: RGBA without its alpha, scaled to
    [0, 1], then normalised with the ImageNet mean/std (their average for one channel)."""
    if x.shape[1] == 4:  # RGBA pixels: the alpha channel goes, as it does for an image file
        x = x[:, :3]
        notes.append("alpha channel of the RGBA pixels dropped")
    images = x.astype(np.float32) / 255.0
    channels = x.shape[1]
    if channels not in (1, 3):
        notes.append("uint8 pixels scaled to [0, 1]")
        return np.ascontiguousarray(images)
    mean = np.array(IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,), np.float32)
    std = np.array(IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,), np.float32)
    notes.append(
        "uint8 pixels scaled to [0, 1] and normalised with the ImageNet mean/std, as image folders are "
        "(store float images for another normalisation)"
    )
    return np.ascontiguousarray((images - mean[:, None, None]) / std[:, None, None])


def _labels(
    where: str, arrays: dict[str, np.ndarray], notes: list[str]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    """Integer labels (N,) per key, and the class names when the labels are names.

    (N, 1) columns and one-hot rows become (N,); numeric strings become integers; other strings are
    numbered in sorted order over all keys, as folder names are. Float labels are refused.
    """
    found: dict[str, np.ndarray] = {}
    for key, y in arrays.items():
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
            notes.append("(N, 1) labels read as (N,)")
        elif y.ndim == 2 and y.shape[1] > 1 and _one_hot(y):
            y = y.argmax(1)
            notes.append("one-hot labels read as class indices")
        if y.ndim != 1:
            raise DataError(f"{where}: '{key}' has shape {y.shape}, expected (N,) class labels")
        found[key] = y
    kinds = {y.dtype.kind for y in found.values()}
    classes = None
    if kinds <= {"U", "S"}:
        names = {key: np.char.strip(y.astype(str)) for key, y in found.items()}
        if all(all(_is_integer(v) for v in y) for y in names.values()):
            found = {key: y.astype(np.int64) for key, y in names.items()}
            notes.append("numeric string labels read as integers")
        else:
            classes = tuple(sorted(set().union(*(set(y.tolist()) for y in names.values()))))
            index = {name: i for i, name in enumerate(classes)}
            found = {key: np.array([index[v] for v in y.tolist()], np.int64) for key, y in names.items()}
            shown = ", ".join(f"{name}={i}" for i, name in enumerate(classes[:3])) + (", …" if len(classes) > 3 else "")
            notes.append(f"label names numbered in sorted order ({shown})")
    for key, y in found.items():
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: '{key}' has dtype {y.dtype}, expected integer class labels (or class names)")
        if len(y) and y.min() < 0:
            raise DataError(f"{where}: '{key}' has negative labels (min {int(y.min())}); labels must be >= 0")
    return {key: torch.from_numpy(y.astype(np.int64)) for key, y in found.items()}, classes


def _one_hot(y: np.ndarray) -> bool:
    """Rows of zeros with a single one."""
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        return False
    return bool(((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all())


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


class NpzSource:
    """NumPy archives of images and labels."""

    name = "npz"
    syntax = "npz:PATH"
    summary = (
        "a NumPy .npz with x (N,C,H,W or N,H,W,C float images, or uint8 pixels) and y (N integer labels or "
        "class names), or x_train/y_train/x_test/y_test"
    )
    label = "NumPy .npz file"
    path_kind = "file"
    file_filter = "NumPy archive (*.npz);;All files (*)"

    def spec_for(self, path: str) -> str:
        return path if path.lower().endswith(".npz") else f"{PREFIX}{path}"

    def matches(self, spec: str) -> bool:
        spec = spec.strip()
        return spec.startswith(PREFIX) or spec.lower().endswith(".npz")

    def load(self, spec: str, seed: int) -> DataBundle:
        return load_npz(Path(spec.strip().removeprefix(PREFIX)), seed)


register(NpzSource())
