"""Data sources: each module registers one kind of data (a new kind is one new module here).

Order matters only for specs two sources could both claim; the first match wins.
"""

from snp_engine.datasources import digits, folder, npz  # noqa: F401  (registration)
from snp_engine.datasources.base import (
    DATA_SOURCES,
    AdaptedDataset,
    DataBundle,
    DataSource,
    TensorImageDataset,
    adapt_to_model,
    find_source,
    make_loader,
)

__all__ = [
    "DATA_SOURCES",
    "AdaptedDataset",
    "DataBundle",
    "DataSource",
    "TensorImageDataset",
    "adapt_to_model",
    "find_source",
    "make_loader",
]
