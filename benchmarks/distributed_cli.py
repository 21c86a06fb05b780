"""The command line under torchrun with 1 and 2 processes: ``snp prune`` (sequential calibration, the
default, one-shot, and with ``--remove-blocks 1`` on demo-resnet), ``snp analyze`` and ``snp eval``.

Each run is the real command line, ``python -m torch.distributed.run --standalone
--nproc_per_node N -m snp_engine.cli … --distributed``, timed from the outside (start-up
included). Every exported file is compared with the one-process file (the same kept units, and the
largest relative difference of any weight tensor), and every reported number (top-1/top-5 before and
after, loss, fidelity, images evaluated; for block removal the removed blocks and their scores)
with the one-process number.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/distributed_cli.py      # writes docs/benchmarks/distributed_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/distributed_cli.py``

from benchmarks.common import CACHE_DIR, add_run_args, default_out, log, run_header, write_json
from snp_engine import io

JOBS = ("prune-sequential", "prune-one-shot", "prune-remove-blocks", "analyze", "eval")
BLOCKS_MODEL = "demo-resnet"  # the removal job's network (demo-vgg has no residual block)
QUICK_JOBS = ("prune-sequential", "eval")
# what each job reports that one and several processes must agree on
REPORTED = {
    "prune-sequential": ("top1_before", "top1_after", "top5_after", "fidelity", "eval_samples"),
    "prune-one-shot": ("top1_before", "top1_after", "top5_after", "fidelity", "eval_samples"),
    "prune-remove-blocks": ("top1_before", "top1_after", "top5_after", "fidelity", "eval_samples"),
    "analyze": ("samples",),
    "eval": ("top1", "top5", "loss", "samples"),
}


def job_argv(job: str, model: str, samples: int, batch_size: int, out: Path) -> list[str]:
    """The ``snp`` arguments of one job (``out``: the file it writes, if any)."""
    if job == "prune-remove-blocks":
        model = BLOCKS_MODEL
    data = ["--model", model, "--data", "digits", "--batch-size", str(batch_size)]
    if job == "eval":
        return ["eval", *data]
    data += ["--samples", str(samples)]
    if job == "analyze":
        return ["analyze", *data, "--out", str(out)]
    mode = {"prune-one-shot": ["--one-shot"], "prune-remove-blocks": ["--remove-blocks", "1"]}.get(job, [])
    return ["prune", *data, "--flops-reduction", "0.5", *mode, "--out", str(out)]


def run_job(job: str, nprocs: int, threads: int, model: str, samples: int, batch_size: int, out: Path) -> dict:
    """One timed job with ``nprocs`` processes sharing ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nprocs)), "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [*job_argv(job, model, samples, batch_size, out), "--json", "--quiet", "--distributed"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
    start = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "snp_engine.cli", *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snp {job} with {nprocs} process(es) failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    row = {"seconds": seconds, "reported": {key: result[key] for key in REPORTED[job]}}
    if "keep" in result:
        row["keep"] = result["keep"]
    if result.get("blocks", {}).get("removed"):
        row["blocks"] = {"removed": result["blocks"]["removed"], "scores": result["blocks"]["scores"]}
    return row


def max_relative_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    one, two = load_file(str(a)), load_file(str(b))
    worst = 0.0
    for key, x in one.items():
        x, y = x.double(), two[key].double()
        worst = max(worst, float((x - y).norm()) / max(float(x.norm()), 1e-30))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    parser.add_argument("--model", default="demo-vgg")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1, help="1: every process computes image by image alike")
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.nprocs, args.jobs = 64, [1, 2], list(QUICK_JOBS)
    default_out(args, "distributed_cli")
    work = CACHE_DIR / "distributed_cli"
    work.mkdir(parents=True, exist_ok=True)
    data = run_header("distributed_cli", args, "cpu")
    runs: dict[str, dict[str, dict]] = {}
    for job in args.jobs:
        rows = runs.setdefault(job, {})
        for n in args.nprocs:
            out = work / f"{job}{n}.safetensors"
            rows[str(n)] = run_job(job, n, args.threads, args.model, args.samples, args.batch_size, out)
            log(f"{job}, {n} process(es): {rows[str(n)]['seconds']:.1f} s")
        first = rows[str(args.nprocs[0])]
        for n in args.nprocs:
            row = rows[str(n)]
            row["speedup"] = first["seconds"] / row["seconds"]
            row["same_reported"] = _same_numbers(first["reported"], row["reported"])
            if job.startswith("prune"):
                a, b = work / f"{job}{args.nprocs[0]}.safetensors", work / f"{job}{n}.safetensors"
                row["same_kept_units"] = io.read_metadata(a)["pruning"] == io.read_metadata(b)["pruning"]
                row["max_relative_weight_difference"] = max_relative_difference(a, b)
            if "blocks" in first:
                row["same_blocks_and_scores"] = row.get("blocks") == first["blocks"]
    data["runs"] = runs
    write_json(args.out, data)
    log(f"written {args.out}")
    return data


def _same_numbers(a: dict, b: dict, rel: float = 1e-9) -> bool:
    """Equal counts, and equal values to float round-off."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rel * max(abs(a[k]), 1e-30) for k in a)


if __name__ == "__main__":
    main()
