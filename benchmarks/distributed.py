"""Statistics collection over several processes: merged statistics vs a single process, and wall time.

Launch mode (the default) runs itself under ``torchrun`` once per process count and merges the
results into one JSON file. Worker mode (``--worker``, what torchrun starts; it can also be started
by hand) shards the calibration images with a ``DistributedSampler``, runs
``api.analyze(..., distributed=True)`` (the sufficient statistics Σx, Σxxᵀ and the count are summed
over all processes with one all-reduce per group), and on rank 0 compares the result with a
single-process analysis of all images. Backend: gloo on CPU, nccl on CUDA.

    .venv/bin/python benchmarks/distributed.py                     # runs torchrun with 1 and 2 processes
    torchrun --nproc_per_node 2 benchmarks/distributed.py --worker --out /tmp/two.json
    .venv/bin/python benchmarks/distributed.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from snp_engine import api


def compare(merged: api.Analysis, single: api.Analysis) -> dict:
    """Largest differences between the all-reduced and the single-process statistics and orderings."""
    rows = {}
    for a, b in zip(merged.groups, single.groups, strict=True):
        ca, cb = a.moments.covariance(), b.moments.covariance()
        rows[a.name] = {
            "units": a.units,
            "samples_merged": a.samples,
            "samples_single": b.samples,
            "max_abs_diff_outer": float((a.moments.outer - b.moments.outer).abs().max()),
            "max_abs_diff_mean": float((a.moments.mean() - b.moments.mean()).abs().max()),
            "max_abs_diff_covariance": float((ca - cb).abs().max()),
            "max_relative_diff_covariance": float((ca - cb).abs().max() / cb.abs().max().clamp_min(1e-300)),
            "same_order": bool(torch.equal(a.order, b.order)),
            "max_abs_diff_curve": float(abs(a.curve - b.curve).max()),
        }
    worst = {
        key: max(r[key] for r in rows.values())
        for key in (
            "max_abs_diff_outer",
            "max_abs_diff_mean",
            "max_abs_diff_covariance",
            "max_relative_diff_covariance",
            "max_abs_diff_curve",
        )
    }
    worst["all_orders_equal"] = all(r["same_order"] for r in rows.values())
    worst["same_sample_counts"] = all(r["samples_merged"] == r["samples_single"] for r in rows.values())
    return {"worst": worst, "groups": rows}


def timed_analysis(model, loader, args, device, distributed: bool) -> tuple[float, api.Analysis]:
    if distributed:
        dist.barrier()
    start = time.perf_counter()
    analysis = api.analyze(model, loader, ordering=args.ordering, device=device, distributed=distributed)
    common.synchronize(device)
    if distributed:
        dist.barrier()
    return time.perf_counter() - start, analysis


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(args: argparse.Namespace, init_method: str | None = None) -> None:
    """One torchrun process: shard, analyse with all-reduce, compare on rank 0. ``init_method`` runs a
    one-process group inside this process instead (the --quick path: no torchrun start-up)."""
    cuda = args.device == "cuda" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if init_method is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    threads = max(1, args.threads // world)  # the same cores, shared by all processes on this machine
    common.set_threads(threads)
    splits = common.digits_for(args.model)
    model = common.benchmark_model(args.model, splits).to(device).eval()
    data = common.random_subset(splits["pool"], args.samples, 0)
    # shuffle=False keeps shards deterministic; DistributedSampler pads the last shard with repeated
    # images when len(data) is not a multiple of the world size, so pick sizes that divide evenly
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
    loader = DataLoader(data, batch_size=64, sampler=sampler)
    timings = []
    for _ in range(args.repeats):
        seconds, merged = timed_analysis(model, loader, args, device, distributed=True)
        timings.append(seconds)
    if rank == 0:
        common.set_threads(args.threads)  # the reference runs alone, with all the threads
        single_seconds, single = timed_analysis(model, data, args, device, distributed=False)
        result = {
            "world_size": world,
            "backend": backend,
            "device": device,
            "threads_per_process": threads,
            "samples": len(data),
            "samples_per_process": len(sampler),
            "padded": len(sampler) * world != len(data),
            "seconds": min(timings),
            "seconds_all": timings,
            "single_process_seconds_same_run": single_seconds,
            "comparison": compare(merged, single),
        }
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()


def launch(args: argparse.Namespace) -> dict:
    """Run the worker under torchrun for each process count and collect the results."""
    results = {**common.run_header("distributed", args, args.device), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="snp-dist-") as tmp:
        for procs in args.nprocs:
            out = Path(tmp) / f"run{procs}.json"
            start = time.perf_counter()
            if procs == 1 and args.in_process:
                worker(argparse.Namespace(**{**vars(args), "out": out}), init_method=f"tcp://127.0.0.1:{free_port()}")
                run = json.loads(out.read_text(encoding="utf-8"))
                run["launch_seconds"] = time.perf_counter() - start
                results["runs"]["1"] = run
                continue
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
                str(Path(__file__).resolve()),
                "--worker",
                "--out",
                str(out),
                "--model",
                args.model,
                "--samples",
                str(args.samples),
                "--ordering",
                args.ordering,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.repeats),
            ]
            env = {**os.environ, "PYTHONPATH": str(common.ROOT), "OMP_NUM_THREADS": str(max(1, args.threads // procs))}
            subprocess.run(command, check=True, env=env, timeout=args.timeout)
            run = json.loads(out.read_text(encoding="utf-8"))
            run["launch_seconds"] = time.perf_counter() - start
            results["runs"][str(procs)] = run
            common.log(
                f"distributed: {procs} process(es) {run['seconds']:.2f} s, "
                f"max |Δcov| {run['comparison']['worst']['max_abs_diff_covariance']:.2e}"
            )
    base = results["runs"].get("1", {}).get("seconds")
    if base:
        for run in results["runs"].values():
            run["speedup_vs_1"] = base / run["seconds"]
    results["load_average_end"] = os.getloadavg()[0]
    common.write_json(args.out, results)
    common.log(f"distributed: wrote {args.out}")
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one torchrun process")
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--model", default=common.TRAINED_RESNET, choices=list(common.MODELS))
    parser.add_argument("--samples", type=int, default=1300, help="calibration images (a multiple of every N)")
    parser.add_argument("--ordering", default="output")
    parser.add_argument("--repeats", type=int, default=2, help="timed distributed analyses (the fastest counts)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the whole machine, split over processes")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--in-process", action="store_true", help="run the 1-process case inside this process instead of under torchrun"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting for the test suite")
    args = parser.parse_args(argv)
    if args.quick:
        args.nprocs, args.model, args.samples, args.ordering, args.repeats = [1], "demo-vgg", 64, "variance", 1
        args.in_process = True
    common.default_out(args, "distributed")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    return launch(args)


if __name__ == "__main__":
    main()
