"""Running one job over several processes (``torchrun``): process group, data shards, sums.

Every process reads a disjoint shard of the calibration images: whole batches, batch k on process
k mod world (:func:`shard`), so no image is read twice or left out and every batch a process reads
is one that a single process reading all images would read too — its float32 products round alike,
and the statistics, sums over images, add up over processes (all-reduce) to those of one process up
to the order of float64 additions. Where an image's place in the whole set matters (held-out folds,
sampled positions) :func:`numbering` gives it. Evaluation is sharded image by image
(:func:`own_shard`) and its counts and sums are added (:func:`sums`), so accuracies, losses and
logit errors are those of the whole evaluation set. Collectives time out (default 10 minutes,
``SNP_DISTRIBUTED_TIMEOUT`` seconds in the environment) so a failed process ends the others with a
clear error instead of a hang; torchrun's SIGTERM to the remaining processes becomes
:class:`Stopped` (:func:`stopped_by_sigterm`), so they too end with one line and leave no
temporary file behind. Statistics gathered in one pass over every shard take process 0's first
shifts (:func:`shifts_of_process_zero`), so their float32 products round as in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from snp_engine.errors import SnpError
from snp_engine.statistics import Moments, shifts_of_process_zero

DEFAULT_TIMEOUT_S = 600
TIMEOUT_VARIABLE = "SNP_DISTRIBUTED_TIMEOUT"


class Stopped(SnpError):
    """torchrun (or anyone) sent this process SIGTERM: the job is being ended."""


@dataclass(frozen=True)
class Context:
    """This process's place among the processes of one job."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """The process that writes files and prints results."""
        return self.rank == 0


def start(device: str = "auto", timeout_s: float | None = None) -> Context:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR, … in the environment):
    gloo on the CPU, NCCL on CUDA (each process on GPU LOCAL_RANK). Collectives time out after
    ``timeout_s`` (default: ``SNP_DISTRIBUTED_TIMEOUT`` from the environment, else 10 minutes)."""
    timeout_s = timeout() if timeout_s is None else timeout_s
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SnpError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} not set); "
            "start it as: torchrun --nproc_per_node N -m snp_engine.cli ... --distributed"
        )
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=float(timeout_s))
        )
    return Context(dist.get_rank(), dist.get_world_size(), where)


def timeout() -> float:
    """Seconds a collective waits for the other processes: ``SNP_DISTRIBUTED_TIMEOUT`` or 10 minutes."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise SnpError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got '{text}'")
    return value


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Stopped` (in the main thread, where Python runs signal
    handlers), so the work unwinds: atomic writes remove their temporary file and the error is one line.
    torchrun sends SIGTERM to every other process when one of them fails."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame) -> None:
        raise Stopped(
            f"stopped by {signal.Signals(signum).name}: torchrun ends every process of the job when one of "
            "them fails (its summary names which)"
        )

    earlier = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, earlier)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Shard(Subset):
    """One process's part of a dataset (:func:`shard`); ``indices`` are its images' numbers in the set."""


def shard(dataset: Dataset, rank: int, world: int, batch: int = 1) -> Shard:
    """Whole batches of ``batch`` images, batch k (images k·batch … k·batch + batch − 1) on process
    k mod ``world``: disjoint shards that cover every image once, whose batches of ``batch`` are
    batches of one process reading every image. ``batch`` 1 puts image i on process i mod ``world``."""
    if batch < 1:
        raise SnpError(f"the batch size must be positive, got {batch}")
    size = len(dataset)  # type: ignore[arg-type]
    starts = range(rank * batch, size, world * batch)
    return Shard(dataset, [i for start in starts for i in range(start, min(start + batch, size))])


def shard_batch(size: int, world: int, batch: int) -> int:
    """The batch in which ``size`` images are sharded over ``world`` processes: ``batch`` while that
    gives every process a batch, else the largest that does (⌈size / world⌉; the processes' batches
    then hold other images than one process's, which changes the float32 round-off only)."""
    return batch if size >= batch * (world - 1) + 1 else max(1, -(-size // world))


@dataclass(frozen=True)
class Numbering:
    """The number in the whole set of each image one process reads, in reading order: ``indices``
    where its images are a :class:`Shard` (or a part of one), else ``first + j·step`` for the j-th."""

    first: int = 0
    step: int = 1
    indices: torch.Tensor | None = field(default=None, compare=False)

    def of(self, seen: int, count: int) -> torch.Tensor:
        """The numbers of the ``count`` images read after the first ``seen``."""
        if self.indices is not None:
            return self.indices[seen : seen + count]
        return self.first + (torch.arange(count) + seen) * self.step


def numbering(batches, distributed: bool = False) -> Numbering:
    """How the images that ``batches`` (a loader, a wrapper of one, or a dataset) reads are numbered
    in the whole set: by its :class:`Shard`'s indices, else, inside a process group, as images
    rank, rank + world, … (a shard made elsewhere, image by image), else 0, 1, 2, …"""
    indices = _shard_numbers(_dataset_behind(batches))
    if indices is not None:
        return Numbering(indices=torch.as_tensor(indices, dtype=torch.long))
    rank, world = position() if distributed else (0, 1)
    return Numbering(rank, world)


def _dataset_behind(source):
    """The dataset that a loader (or a wrapper with ``.loader``) reads; ``source`` if it is none."""
    for _ in range(16):
        if isinstance(source, Dataset):
            return source
        inner = getattr(source, "loader", None)
        if inner is None:
            inner = getattr(source, "dataset", None)
        if inner is None:
            return None
        source = inner
    return None


def _shard_numbers(dataset) -> list[int] | None:
    """The set numbers of ``dataset``'s items if it is a :class:`Shard` or a Subset of one, else None."""
    if isinstance(dataset, Shard):
        return list(dataset.indices)
    if isinstance(dataset, Subset):
        parent = _shard_numbers(dataset.dataset)
        return None if parent is None else [parent[i] for i in dataset.indices]
    return None


def own_shard(dataset: Dataset, what: str = "evaluation") -> Dataset:
    """This process's :func:`shard` of ``dataset`` inside a process group, else ``dataset`` itself.

    Every process must hold at least one image (each process checks the same length, so all of
    them refuse alike)."""
    rank, world = position()
    if world == 1:
        return dataset
    size = len(dataset)  # type: ignore[arg-type]
    if size < world:
        raise SnpError(f"{size} {what} image(s) cannot be shared by {world} processes")
    return shard(dataset, rank, world)


def sums(values: Sequence[float]) -> list[float]:
    """Each value summed over all processes (in float64; the values themselves outside a process group)."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def all_reduce(parts: Sequence[Moments]) -> None:
    """Sum each part's statistics over all processes, in place."""
    for part in parts:
        part.all_reduce()


def total(count: int) -> int:
    """The sum of ``count`` over all processes (``count`` itself outside a process group)."""
    if not active():
        return count
    value = torch.tensor([count], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(value)
    return int(value.item())


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def position() -> tuple[int, int]:
    """(rank, world) of this process; (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_VARIABLE",
    "Context",
    "Numbering",
    "Shard",
    "Stopped",
    "active",
    "all_reduce",
    "numbering",
    "own_shard",
    "position",
    "shard",
    "shard_batch",
    "shifts_of_process_zero",
    "start",
    "stop",
    "stopped_by_sigterm",
    "sums",
    "timeout",
    "total",
]
