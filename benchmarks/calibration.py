"""Calibration-set size: sequential against one-shot compensation and the default, with few and many images.

For each model, calibration size and seed, ``samples`` images are drawn from the digits train +
calibration pool and analysed once (default ordering and greedy allocation); the plan for each
FLOPs reduction is pruned three ways with the same kept units, no fine-tuning:

* ``one-shot``: every consumer compensated from the dense statistics;
* ``sequential``: front to back towards the dense network with the fixed ridge formula
  (``heldout_folds=1``);
* ``default``: what ``prune`` does without options (sequential, each group's ridge and
  sequential/one-shot fit chosen on held-out folds of the calibration images).

Scored on the 497 digits test images: top-1 and the relative logit error against the dense
network (mean and spread over seeds), with the pruning time and, for the default, how many groups
kept the one-shot fit. Models: torchvision vgg11_bn and resnet18 trained here on the 3x32x32 digits
(cached under benchmarks/.cache) and the bundled demo networks.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/calibration.py          # docs/benchmarks/calibration.json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/calibration.py --models vgg11_bn-32 --seeds 0 --merge

``--merge`` adds this run's models and calibration sizes to an existing results file (so slow cells
can run alone, with fewer seeds); each size records its seeds, machine and settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/calibration.py``

from benchmarks.common import (
    TRAINED_RESNET,
    TRAINED_VGG,
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

MODELS = (TRAINED_VGG, TRAINED_RESNET, "demo-vgg", "demo-resnet")
VARIANTS = {
    "one-shot": {"sequential": False},
    "sequential": {"heldout_folds": 1},
    "default": {},
}


def run_model(name: str, sizes: list[int], seeds: list[int], reductions: list[float], device: str) -> dict:
    """Every (calibration size, reduction) cell of one model: per variant, top-1, logit error and
    seconds over the seeds; the plan's kept counts per seed and the default's fit kinds."""
    splits = digits_for(name)
    model = benchmark_model(name, splits, device)
    dense_logits = logits_of(model, splits["test"].tensors[0], device)
    dense_top1 = score(model, splits["test"], dense_logits, device)["top1"]
    log(f"{name}: dense top-1 {dense_top1:.1f} %")
    results: dict = {"dense_top1": dense_top1, "by_samples": {}}
    for samples in sizes:
        runs = {r: {v: {"top1": [], "fidelity": [], "seconds": []} for v in VARIANTS} for r in reductions}
        extra: dict = {
            r: {"flops_reduction": [], "keep": [], "fits": {"sequential": 0, "one-shot": 0}} for r in reductions
        }
        warnings: list[int] = []
        for seed in seeds:
            calibration = random_subset(splits["pool"], samples, seed)
            analysis = api.analyze(model, calibration, device=device)
            warnings.append(len(analysis.warnings()))
            for reduction in reductions:
                plan = analysis.plan(flops_reduction=reduction)
                extra[reduction]["flops_reduction"].append(plan.flops_reduction)
                extra[reduction]["keep"].append(dict(plan.keep))
                for variant, options in VARIANTS.items():
                    start = time.perf_counter()
                    pruned = api.prune(
                        model, analysis, plan, data=calibration, device=device, physical=False, **options
                    )
                    runs[reduction][variant]["seconds"].append(time.perf_counter() - start)
                    found = score(pruned.model, splits["test"], dense_logits, device)
                    runs[reduction][variant]["top1"].append(found["top1"])
                    runs[reduction][variant]["fidelity"].append(found["fidelity"])
                    if variant == "default":
                        for fit in pruned.record.fits.values():
                            extra[reduction]["fits"][fit["fit"]] += 1
                    del pruned
                log(
                    f"{name} {samples} images -{reduction:.0%} seed {seed}: "
                    + ", ".join(f"{v} {runs[reduction][v]['top1'][-1]:.1f} %" for v in VARIANTS)
                )
        results["by_samples"][str(samples)] = {
            "seeds": seeds,
            "warnings": warnings,
            **{
                str(r): {
                    **{v: {key: mean_std(values) for key, values in runs[r][v].items()} for v in VARIANTS},
                    "flops_reduction": mean_std(extra[r]["flops_reduction"]),
                    "keep": extra[r]["keep"],
                    "default_fits": extra[r]["fits"],
                }
                for r in reductions
            },
        }
    return results


def combine(earlier: dict, later: dict) -> dict:
    """One calibration size's results over the seeds of two runs (a seed run twice counts once, from ``later``)."""
    if earlier is later:
        return later
    keep = [i for i, seed in enumerate(earlier["seeds"]) if seed not in later["seeds"]]
    merged = {**later, "seeds": [earlier["seeds"][i] for i in keep] + later["seeds"]}
    merged["warnings"] = [earlier["warnings"][i] for i in keep] + later["warnings"]
    for reduction, cell in later.items():
        if not isinstance(cell, dict) or "default" not in cell or reduction not in earlier:
            continue
        before = earlier[reduction]
        joined = {
            v: {
                key: mean_std([before[v][key]["values"][i] for i in keep] + stats["values"]) for key, stats in r.items()
            }
            for v, r in cell.items()
            if v in VARIANTS
        }
        old_flops = [before["flops_reduction"]["values"][i] for i in keep]
        merged[reduction] = {
            **joined,
            "flops_reduction": mean_std(old_flops + cell["flops_reduction"]["values"]),
            "keep": [before["keep"][i] for i in keep] + cell["keep"],
            # fit kinds are counted per run; a seed run again replaces nothing here, so only disjoint seeds add up
            "default_fits": {
                kind: count + (before["default_fits"][kind] if len(keep) == len(earlier["seeds"]) else 0)
                for kind, count in cell["default_fits"].items()
            },
        }
    return merged


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--samples", nargs="+", type=int, default=[64, 150, 300, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.7, 0.85])
    parser.add_argument("--merge", action="store_true", help="add this run's models to an existing --out file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.samples, args.seeds, args.reductions = ["demo-vgg"], [32], [0], [0.5]
    default_out(args, "calibration")
    set_threads(args.threads)
    data = run_header("calibration", args, args.device)
    data["models"] = {}
    if args.merge and args.out.is_file():
        earlier = json.loads(args.out.read_text(encoding="utf-8"))
        data["models"] = earlier.get("models", {})
    for name in args.models:
        start = time.perf_counter()
        found = run_model(name, args.samples, args.seeds, args.reductions, args.device)
        found["seconds"] = time.perf_counter() - start
        for entry in found["by_samples"].values():  # where and how each calibration size was run
            entry["machine"], entry["settings"] = data["machine"], data["settings"]
        if name in data["models"]:  # --merge: this run's seeds join the earlier ones of each size
            earlier = data["models"][name]
            found["by_samples"] = {
                size: combine(earlier["by_samples"][size], entry) if size in earlier["by_samples"] else entry
                for size, entry in {**earlier["by_samples"], **found["by_samples"]}.items()
            }
            found["seconds"] += earlier.get("seconds", 0.0)
        found["by_samples"] = dict(sorted(found["by_samples"].items(), key=lambda item: int(item[0])))
        data["models"][name] = found
        write_json(args.out, data)  # after each model, so a long run keeps what it finished
    log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
