"""``npz:PATH``: a NumPy archive of ready-made float images and integer labels.

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
from snp_engine.errors import DataError

PREFIX = "npz:"


def load_npz(path: Path, seed: int) -> DataBundle:
    """Read ``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test`` with every check named."""
    arrays, split_mode = _read_arrays(path)
    where = f"npz file '{path.name}'"
    if split_mode:
        x_train, y_train = _check_xy(path, arrays["x_train"], arrays["y_train"], "x_train", "y_train")
        x_test, y_test = _check_xy(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
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
        x_train, y = _check_xy(path, arrays["x"], arrays["y"], "x", "y")
        train = None
        calibration = shuffled(TensorImageDataset(x_train, y), seed, where)
        test, all_labels, held_out = calibration, y, False
    return DataBundle(
        name=f"{PREFIX}{path}",
        train=train,
        calibration=calibration,
        test=test,
        num_classes=int(all_labels.max()) + 1,
        channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        held_out=held_out,
    )


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The archive's arrays, after checking it is a readable .npz with the expected keys."""
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
    return arrays, split_mode


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


class NpzSource:
    """NumPy archives of images and labels."""

    name = "npz"
    syntax = "npz:PATH"
    summary = "a NumPy .npz with x (N,C,H,W float) and y (N integer labels), or x_train/y_train/x_test/y_test"
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
