"""Workers for the distributed statistics tests (module-level so that spawned processes can import them)."""

from __future__ import annotations

import torch


def shifted_moments_worker(rank: int, world: int, init_method: str, images: torch.Tensor, out_dir: str) -> None:
    """Image by image, this rank's images r, r + world, …: moments with the process's own first shift
    and inside ``shifts_of_process_zero``, each saved before and after the all-reduce."""
    import torch.distributed as dist

    from snp_engine.statistics import Moments, shifts_of_process_zero

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        found = {}
        for name, sharing in (("own", False), ("shared", True)):
            moments = Moments.zeros(images.shape[2])
            with shifts_of_process_zero() if sharing else _nothing():
                for image in images[rank::world]:
                    moments.update(image)
            shift = moments.shift.clone()
            moments.all_reduce()
            found[name] = {**moments.state(), "first_shift": shift}
        torch.save(found, f"{out_dir}/shifted{rank}.pt")
    finally:
        dist.destroy_process_group()


def _nothing():
    import contextlib

    return contextlib.nullcontext()
