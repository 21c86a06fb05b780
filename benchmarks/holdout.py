"""Sequential calibration with few calibration images: the held-out choice of each fit against the
fixed ridge formula and against one-shot compensation.

For each model, calibration size and seed, ``samples`` images are drawn from the digits train +
calibration pool, analysed once, and pruned to each FLOPs reduction three ways with the same kept
units: ``one-shot`` (dense statistics), ``sequential-fixed`` (the sequential fit with the ridge
formula of earlier versions, ``heldout_folds=1``) and ``sequential-heldout`` (the default: ridge and
sequential/one-shot chosen per group on held-out folds). Scored on the 497 digits test images
(top-1 and relative logit error against the dense network), with the pruning time of each.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/holdout.py            # writes docs/benchmarks/holdout.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/holdout.py``

from benchmarks.common import (
    add_run_args,
    benchmark_model,
    default_out,
    digits_for,
    log,
    logits_of,
    mean_std,
    random_subset,
    run_header,
    score,
    set_threads,
    write_json,
)
from snp_engine import api

VARIANTS = {
    "one-shot": {"sequential": False},
    "sequential-fixed": {"heldout_folds": 1},
    "sequential-heldout": {},
}


def run_model(name: str, sizes: list[int], seeds: list[int], reductions: list[float], device: str) -> dict:
    splits = digits_for(name)
    model = benchmark_model(name, splits, device)
    dense_logits = logits_of(model, splits["test"].tensors[0], device)
    dense_top1 = score(model, splits["test"], dense_logits, device)["top1"]
    results: dict = {"dense_top1": dense_top1, "by_samples": {}}
    for samples in sizes:
        cells: dict = {}
        for reduction in reductions:
            runs: dict[str, dict[str, list[float]]] = {v: {"top1": [], "fidelity": [], "seconds": []} for v in VARIANTS}
            fits: dict[str, int] = {"sequential": 0, "one-shot": 0}
            for seed in seeds:
                calibration = random_subset(splits["pool"], samples, seed)
                analysis = api.analyze(model, calibration, device=device)
                plan = analysis.plan(flops_reduction=reduction)
                for variant, options in VARIANTS.items():
                    start = time.perf_counter()
                    pruned = api.prune(model, analysis, plan, data=calibration, device=device, **options)
                    runs[variant]["seconds"].append(time.perf_counter() - start)
                    found = score(pruned.model, splits["test"], dense_logits, device)
                    runs[variant]["top1"].append(found["top1"])
                    runs[variant]["fidelity"].append(found["fidelity"])
                    if variant == "sequential-heldout":
                        for fit in pruned.record.fits.values():
                            fits[fit["fit"]] += 1
                log(
                    f"{name} {samples} images -{reduction:.0%} seed {seed}: "
                    + ", ".join(f"{v} {runs[v]['top1'][-1]:.1f}%" for v in VARIANTS)
                )
            cells[str(reduction)] = {
                **{v: {key: mean_std(values) for key, values in r.items()} for v, r in runs.items()},
                "heldout_fits": fits,
            }
        results["by_samples"][str(samples)] = cells
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    parser.add_argument("--models", nargs="+", default=["demo-vgg", "demo-resnet"])
    parser.add_argument("--samples", nargs="+", type=int, default=[32, 64, 150, 300])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.7, 0.85])
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.samples, args.seeds, args.reductions = ["demo-vgg"], [32], [0], [0.5]
    default_out(args, "holdout")
    set_threads(args.threads)
    data = run_header("holdout", args, args.device)
    data["models"] = {
        name: run_model(name, args.samples, args.seeds, args.reductions, args.device) for name in args.models
    }
    write_json(args.out, data)
    log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
