"""What every data source yields, and the registry sources add themselves to.

A source turns a spec (``digits``, ``npz:PATH``, a folder, …) into a :class:`DataBundle` of
``(C×H×W float32 tensor, int label)`` datasets at the data's *own* resolution. Fitting the images
to a model (resizing, repeating a grey channel) is a separate step, :func:`adapt_to_model`, whose
input size is decided once, by :func:`snp_engine.inputs.resolve_input_shape`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from snp_engine.errors import DataError

Retarget = Callable[[int, tuple[int, int]], "DataBundle"]


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The splits of one dataset plus the facts a model needs to be matched against it.

    ``train`` may be ``None`` when the source has no training part; ``calibration`` feeds the
    activation analysis and ``test`` the reported accuracies. ``held_out`` is False when the data
    has no separate test part, so ``test`` *is* the calibration data (accuracies are then labelled
    as measured on the calibration data). ``image_size`` is ``None`` for a folder of mixed sizes.
    ``retarget`` (folders) decodes the files again at another size instead of resampling tensors.
    ``skipped`` counts image files that could not be read and were left out. ``adapted`` says, in
    a few words each, what the source changed while reading (a layout transposed, pixels scaled).
    ``common_size`` is the most common (height, width) of a folder of mixed sizes.
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
    held_out: bool = True
    adapted: tuple[str, ...] = ()
    common_size: tuple[int, int] | None = None
    retarget: Retarget | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def evaluation_label(self) -> str:
        """Where the reported accuracies are measured, in words."""
        if self.held_out:
            return f"the test split of {self.name}"
        return f"the calibration data {self.name} (no held-out split)"


class DataSource(Protocol):
    """One kind of data: recognises its specs, describes itself and loads them."""

    name: str
    syntax: str
    summary: str
    label: str  # short name for the app's chooser
    path_kind: str  # what the app asks for: "none", "file" or "folder"
    file_filter: str  # file chooser filter when path_kind is "file"

    def matches(self, spec: str) -> bool: ...

    def spec_for(self, path: str) -> str: ...

    def load(self, spec: str, seed: int) -> DataBundle: ...


DATA_SOURCES: dict[str, DataSource] = {}


def register(source: DataSource) -> DataSource:
    """Add a source; the first one whose ``matches`` accepts a spec loads it."""
    DATA_SOURCES[source.name] = source
    return source


def find_source(spec: str) -> DataSource | None:
    for source in DATA_SOURCES.values():
        if source.matches(spec):
            return source
    return None


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


def adapt_to_model(bundle: DataBundle, channels: int, image_size: tuple[int, int] | None) -> DataBundle:
    """Make the bundle's images fit a model that wants ``channels`` x ``image_size`` inputs.

    Folders are decoded again at the wanted size; in-memory images are repeated across channels
    (1 -> 3) and resized bilinearly. Colour cannot meaningfully be reduced to fewer channels, so
    that is refused.
    """
    want_size = tuple(image_size) if image_size is not None else None
    same_size = want_size is None or want_size == bundle.image_size
    if channels == bundle.channels and same_size:
        return bundle
    if bundle.retarget is not None and want_size is not None:
        return bundle.retarget(channels, want_size)
    if channels != bundle.channels and bundle.channels != 1:
        raise DataError(
            f"data '{bundle.name}' has {bundle.channels}-channel images but the model expects {channels} "
            "channel(s); only 1-channel images can be repeated to more channels"
        )
    new_channels = channels if channels != bundle.channels else None
    new_size = None if same_size else want_size

    def wrap(ds: Dataset | None) -> Dataset | None:
        return None if ds is None else AdaptedDataset(ds, new_channels, new_size)  # type: ignore[arg-type]

    calibration = wrap(bundle.calibration)
    return dataclasses.replace(
        bundle,
        train=wrap(bundle.train),
        calibration=calibration,
        # one dataset object when test is the calibration data, so caches keyed on it still agree
        test=wrap(bundle.test) if bundle.test is not bundle.calibration else calibration,
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


def permutation(n: int, seed: int) -> list[int]:
    """A deterministic shuffle of ``range(n)``."""
    return np.random.default_rng(seed).permutation(n).tolist()


def shuffled(dataset: Dataset, seed: int, where: str) -> Subset:
    """The whole dataset in a deterministic shuffled order (so its first samples cover all classes)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError(f"{where}: holds no samples")
    return Subset(dataset, permutation(len(dataset), seed))  # type: ignore[arg-type]
