"""How the shards' batches decide the float32 round-off of statistics summed over processes.

Two gloo processes analyse demo-vgg's digits calibration images with ``api.analyze(...,
distributed=True)`` in batches of ``--batch-size``, sharded two ways, and every group's summed
covariance is compared with one process reading all images in the same batch size:

    strided    image i on process i mod N: a process's batch holds other images than any batch
               of one process
    batches    one process's batch k on process k mod N (what ``snp … --distributed`` does):
               every batch is one of one process's

    python benchmarks/distributed_shards.py      # writes docs/benchmarks/distributed_shards.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/distributed_shards.py``

from benchmarks.common import add_run_args, default_out, log, run_header, write_json

WORLD = 2
MODES = ("strided", "batches")


def shard_indices(mode: str, images: int, rank: int, world: int, batch_size: int) -> list[int]:
    """The images of process ``rank`` under one of :data:`MODES`."""
    if mode == "strided":
        return list(range(rank, images, world))
    return [i for i in range(images) if (i // batch_size) % world == rank]


def _worker(rank: int, world: int, init: str, mode: str, model: str, samples: int, batch_size: int, out: str):
    from snp_engine import api
    from snp_engine.data import load_data
    from snp_engine.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        calibration = load_data("digits").calibration
        images = min(samples, len(calibration))
        part = Subset(calibration, shard_indices(mode, images, rank, world, batch_size))
        analysis = api.analyze(load_model(model).model, DataLoader(part, batch_size=batch_size), distributed=True)
        if rank == 0:
            torch.save({g.name: g.moments.state() for g in analysis.groups}, out)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    from snp_engine import api
    from snp_engine.data import load_data
    from snp_engine.models import load_model
    from snp_engine.statistics import Moments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    parser.add_argument("--model", default="demo-vgg")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.batch_size = 48, 8
    default_out(args, "distributed_shards")
    torch.set_num_threads(1)
    calibration = load_data("digits").calibration
    images = Subset(calibration, range(min(args.samples, len(calibration))))
    single = api.analyze(load_model(args.model).model, DataLoader(images, batch_size=args.batch_size))
    data = run_header("distributed_shards", args, "cpu")
    data["images"] = len(images)
    data["modes"] = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in MODES:
            out = f"{work}/{mode}.pt"
            init = Path(work, f"rendezvous-{mode}").as_uri()
            mp.spawn(
                _worker,
                args=(WORLD, init, mode, args.model, args.samples, args.batch_size, out),
                nprocs=WORLD,
                join=True,
            )
            summed = torch.load(out)
            groups = {}
            for g in single.groups:
                one, two = g.moments.covariance(), Moments.from_state(summed[g.name]).covariance()
                groups[g.name] = float((one - two).abs().max() / one.abs().max().clamp_min(1e-300))
            data["modes"][mode] = {"max_relative_difference": max(groups.values()), "groups": groups}
            log(f"{mode}: largest covariance difference {max(groups.values()):.1e} of the largest entry")
    write_json(args.out, data)
    log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
