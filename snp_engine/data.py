"""Datasets for calibration, evaluation and fine-tuning: one entry point over the data sources.

The sources live in :mod:`snp_engine.datasources` (``digits``, ``npz:PATH``, an image folder; a
new one is one new module there). :func:`load_data` finds the source for a spec and returns a
:class:`DataBundle` at the data's own resolution, optionally adapted to a given size/channels.
Every dataset returns ``(C×H×W float32 tensor, int label)``; splits are deterministic.
"""

from __future__ import annotations

from pathlib import Path

from snp_engine.datasources import DATA_SOURCES, find_source
from snp_engine.datasources.base import (
    AdaptedDataset,
    DataBundle,
    TensorImageDataset,
    adapt_to_model,
    make_loader,
)
from snp_engine.datasources.digits import DIGITS_MEAN, DIGITS_STD, digits_split_indices, load_digits_bundle
from snp_engine.datasources.folder import IMAGENET_MEAN, IMAGENET_STD
from snp_engine.errors import DataError

# Embedded datasets (no path needed), by name, with a one-line description.
DATASETS: dict[str, str] = {"digits": DATA_SOURCES["digits"].summary}


def data_help() -> str:
    """The accepted data specs, one per source, for help texts."""
    return "; ".join(f"{s.syntax}: {s.summary.rstrip('.')}" for s in DATA_SOURCES.values())


def load_data(spec: str, *, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """Load ``spec`` with the first data source that recognises it.

    Without ``input_size``/``channels`` the images keep their own size and channels; with them they
    are fitted with :func:`adapt_to_model`. ``seed`` drives the shuffle of folder/npz data only.
    """
    spec = spec.strip()
    if not spec:
        raise DataError(f"no data given: use {', '.join(DATASETS)}, an image folder or npz:PATH")
    source = find_source(spec)
    if source is None:
        path = Path(spec)
        if path.exists():
            raise DataError(f"data '{spec}': {_not_data(path)}")
        known = ", ".join(DATASETS)
        raise DataError(
            f"data '{spec}': no such folder or file, and not an embedded dataset ({known}; nothing is downloaded)"
        )
    bundle = source.load(spec, seed)
    if input_size is None and channels is None:
        return bundle
    size = (input_size, input_size) if input_size is not None else bundle.image_size
    return adapt_to_model(bundle, channels if channels is not None else bundle.channels, size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SAVE_NPZ = "numpy.savez(PATH, x=IMAGES, y=LABELS), then npz:PATH"


def _not_data(path: Path) -> str:
    """Why a file that exists is no data snp reads, and what to give instead, in words."""
    import zipfile

    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "a single image; snp reads a folder of images, FOLDER/<class>/<image>"
    names: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(name.endswith("data.pkl") for name in names):
            return f"a PyTorch file; snp reads data from an image folder or a NumPy .npz: {SAVE_NPZ}"
        if names and all(name.endswith(".npy") for name in names):
            return f"a NumPy .npz archive without the .npz suffix: give it as npz:{path}"
        return "a zip archive; unpack it into a folder FOLDER/<class>/<image> and give the folder"
    if suffix in (".pt", ".pth", ".pkl", ".pickle"):
        return f"a PyTorch or pickle file; snp reads data from an image folder or a NumPy .npz: {SAVE_NPZ}"
    if suffix == ".npy":
        return f"a single NumPy array; save images and labels together: {SAVE_NPZ}"
    return f"not a folder and not an .npz file; snp reads an image folder or NumPy data: {SAVE_NPZ}"


__all__ = [
    "DATASETS",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AdaptedDataset",
    "DataBundle",
    "TensorImageDataset",
    "adapt_to_model",
    "data_help",
    "digits_split_indices",
    "load_data",
    "load_digits_bundle",
    "make_loader",
]
