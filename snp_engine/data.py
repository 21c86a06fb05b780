"""Datasets for calibration, evaluation and fine-tuning: one entry point over the data sources.

The sources live in :mod:`snp_engine.datasources` (``digits``, ``npz:PATH``, an image folder; a
new one is one new module there). :func:`load_data` finds the source for a spec and returns a
:class:`DataBundle` at the data's own resolution, optionally adapted to a given size/channels.
Every dataset returns ``(C×H×W float32 tensor, int label)``; splits are deterministic.
"""

from __future__ import annotations

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
    source = find_source(spec)
    if source is None:
        from pathlib import Path

        path = Path(spec)
        if path.exists():
            raise DataError(f"data '{spec}': not a folder and not an .npz file (use npz:PATH for NumPy data)")
        known = ", ".join(DATASETS)
        raise DataError(f"data '{spec}': no such folder or file, and not an embedded dataset ({known})")
    bundle = source.load(spec, seed)
    if input_size is None and channels is None:
        return bundle
    size = (input_size, input_size) if input_size is not None else bundle.image_size
    return adapt_to_model(bundle, channels if channels is not None else bundle.channels, size)


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
