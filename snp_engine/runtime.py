"""Running a model over data: deterministic batches, the device, and failures said in one line.

:func:`batches_of` turns a dataset, DataBundle or loader into a fixed-order DataLoader;
:func:`resolve_device` picks or checks the device; :func:`check_forward` runs one example so that
a model/input mismatch is one clear sentence; :func:`out_of_memory_as_error` turns an allocator
failure into :class:`~snp_engine.errors.OutOfMemoryError` saying what to change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from snp_engine.activations import images_of
from snp_engine.errors import AnalysisError, OutOfMemoryError, SnpError, reason_of

DEFAULT_BATCH_SIZE = 64
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def as_dataset(data) -> Dataset | DataLoader:
    """The calibration split of a DataBundle; a dataset or loader as it is."""
    return getattr(data, "calibration", data)


def batches_of(data, *, batch_size: int = DEFAULT_BATCH_SIZE, samples: int | None = None) -> DataLoader:
    """A deterministic DataLoader over (the first ``samples`` of) a dataset, DataBundle or loader."""
    data = as_dataset(data)
    if isinstance(data, DataLoader):
        return data
    if samples is not None:
        if samples < 1:
            raise SnpError(f"the number of samples must be positive, got {samples}")
        data = Subset(data, range(min(samples, len(data))))
    if len(data) == 0:
        raise SnpError("the calibration data is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when present; asking for CUDA without it is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnpError("CUDA was requested but no CUDA device is available; use --device cpu")
    return device


def first_example(loader: DataLoader, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The first image of ``loader`` as a batch of one, on ``device`` in ``dtype``."""
    batch = next(iter(loader))
    images = images_of(batch)
    return images[:1].to(device=device, dtype=dtype)


class CastImages:
    """Iterates over a loader, casting images to the model's dtype."""

    def __init__(self, loader: Iterable, dtype: torch.dtype) -> None:
        self.loader, self.dtype = loader, dtype

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            images = images_of(batch)
            yield images.to(self.dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError that other allocators (CPU, MPS) raise."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OUT_OF_MEMORY_MARKERS)


@contextlib.contextmanager
def out_of_memory_as_error(what: str, device: torch.device, batch_size: int) -> Iterator[None]:
    """Turn an allocator failure into :class:`OutOfMemoryError` with what to change.

    The error is raised after the ``except`` block so that the failed step's tensors (held by the
    original traceback) are released before the cache is emptied and the caller retries.
    """
    try:
        yield
        return
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    advice = "a smaller batch size (--batch-size)" + ("" if device.type == "cpu" else " or the CPU (--device cpu)")
    raise OutOfMemoryError(f"{what} ran out of memory on {device} with batches of {batch_size}; try {advice}")


def check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Run one example so that a model/input mismatch (a fixed input size, a different channel
    count) is reported as one clear sentence instead of an error from deep inside the network."""
    try:
        with torch.inference_mode():
            model(example)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise AnalysisError(
            f"the model cannot run on inputs of shape {tuple(example.shape[1:])} "
            f"({type(exc).__name__}: {reason_of(exc)})"
        ) from None


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "CastImages",
    "as_dataset",
    "batches_of",
    "check_forward",
    "first_example",
    "is_out_of_memory",
    "out_of_memory_as_error",
    "resolve_device",
]
