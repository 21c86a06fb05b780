"""``snp prune`` (sequential calibration, the default) under torchrun with 1 and 2 processes.

Each run is the real command line, ``python -m torch.distributed.run --standalone
--nproc_per_node N -m snp_engine.cli prune … --distributed``, timed from the outside (start-up
included), and every exported file is compared with the one-process file: the same kept units,
and the largest relative difference of any weight tensor.

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


def run_prune(nprocs: int, threads: int, model: str, samples: int, batch_size: int, out: Path) -> dict:
    """One timed ``snp prune`` with ``nprocs`` processes sharing ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nprocs)), "OMP_WAIT_POLICY": "PASSIVE"}
    argv = ["prune", "--model", model, "--data", "digits", "--samples", str(samples), "--batch-size", str(batch_size)]
    argv += ["--flops-reduction", "0.5", "--out", str(out), "--json", "--quiet", "--distributed"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
    start = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "snp_engine.cli", *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snp prune with {nprocs} process(es) failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return {"seconds": seconds, "keep": result["keep"], "top1_after": result["top1_after"]}


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
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.nprocs = 64, [1, 2]
    default_out(args, "distributed_cli")
    work = CACHE_DIR / "distributed_cli"
    work.mkdir(parents=True, exist_ok=True)
    data = run_header("distributed_cli", args, "cpu")
    runs = {}
    for n in args.nprocs:
        out = work / f"pruned{n}.safetensors"
        runs[str(n)] = run_prune(n, args.threads, args.model, args.samples, args.batch_size, out)
        log(f"{n} process(es): {runs[str(n)]['seconds']:.1f} s")
    first = work / f"pruned{args.nprocs[0]}.safetensors"
    for n in args.nprocs:
        path = work / f"pruned{n}.safetensors"
        runs[str(n)]["same_kept_units"] = io.read_metadata(path)["pruning"] == io.read_metadata(first)["pruning"]
        runs[str(n)]["max_relative_weight_difference"] = max_relative_difference(first, path)
        runs[str(n)]["speedup"] = runs[str(args.nprocs[0])]["seconds"] / runs[str(n)]["seconds"]
    data["runs"] = runs
    write_json(args.out, data)
    log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
