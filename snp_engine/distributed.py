"""Running one job over several processes (``torchrun``): process group, data shards, sums.

Every process reads a disjoint shard of the calibration images (image i goes to process
i mod world, so no image is read twice or left out); the statistics are sums, so adding them over
processes (all-reduce) gives exactly the statistics of all images. Evaluation is sharded the same
way (:func:`own_shard`) and its counts and sums are added (:func:`sums`), so accuracies, losses and
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
from dataclasses import dataclass

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


def shard(dataset: Dataset, rank: int, world: int) -> Subset:
    """Images rank, rank + world, rank + 2·world, …: disjoint shards that cover every image once."""
    return Subset(dataset, range(rank, len(dataset), world))  # type: ignore[arg-type]


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
    "Stopped",
    "active",
    "all_reduce",
    "own_shard",
    "position",
    "shard",
    "shifts_of_process_zero",
    "start",
    "stop",
    "stopped_by_sigterm",
    "sums",
    "timeout",
    "total",
]
