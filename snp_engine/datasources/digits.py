"""``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images), no download.

The split is fixed (not driven by ``seed``) because the bundled demo models were trained on its
train part and their recorded accuracies refer to its test part.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from snp_engine.datasources.base import DataBundle, TensorImageDataset, register

NAME = "digits"
SUMMARY = (
    "Handwritten digits from scikit-learn: 1,797 real 8x8 grayscale images, 10 classes "
    "(bundled, no download). Split 1000 train / 300 calibration / 497 test."
)
DIGITS_SPLIT_SEED = 0
DIGITS_SPLIT_SIZES = (1000, 300, 497)
# Mean/std of the train split after scaling pixel values to [0, 1]; fixed so that normalisation does
# not depend on which split was loaded first (checked against a fresh computation in the tests).
DIGITS_MEAN = 0.30498828125
DIGITS_STD = 0.3757487250209352


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
        name=NAME,
        train=train,
        calibration=cal,
        test=test,
        num_classes=10,
        channels=1,
        image_size=(8, 8),
        classes=tuple(str(d) for d in range(10)),
    )


class DigitsSource:
    """The embedded demo data."""

    name = NAME
    syntax = NAME
    summary = SUMMARY
    label = "Digits (embedded)"
    path_kind = "none"
    file_filter = ""

    def spec_for(self, path: str) -> str:
        return NAME

    def matches(self, spec: str) -> bool:
        return spec.strip().lower() == NAME

    def load(self, spec: str, seed: int) -> DataBundle:
        return load_digits_bundle()


register(DigitsSource())
