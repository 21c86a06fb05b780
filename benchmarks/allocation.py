"""The budget greedy with each group's loss counted at every reader, against the greedy before it.

A group read by several layers (a residual stream: every block's first conv, the shortcut and the
next stage read it) saves a column in each reader when it loses a unit, and each reader loses
explained variance. The greedy used to price a step by the group's one curve (the readers' mean
loss) against the summed saving; it now weighs that loss by the number of readers
(``Analysis.reader_weights``, see ``snp_engine/ratios.py``). For each network (trained on the
digits: resnet18-32, regnet_x_400mf and regnet_y_400mf at 3x32x32 as in benchmarks/families.py,
demo-resnet at 1x8x8), one calibration draw of 300 images, the plans for 30/50/70 % fewer FLOPs
from both greedies are pruned with sequential calibration (the default) and one-shot, functionally,
and scored on the 497 test images: top-1 and relative logit error ‖z − z_dense‖ / ‖z_dense‖.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/allocation.py      # docs/benchmarks/allocation.json
    python benchmarks/allocation.py --quick                       # demo-resnet at -50 % only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/allocation.py``

from benchmarks import common
from snp_engine import api
from snp_engine.analysis import Analysis
from snp_engine.ratios import NO_CONSTRAINTS, keep_for_budget

MODELS = ("demo-resnet", "resnet18-32", "regnet_x_400mf", "regnet_y_400mf")
TARGETS = (0.3, 0.5, 0.7)
VARIANTS = ("per reader", "pooled")  # the greedy now, and before it (every group's weight 1)


def pooled_plan(analysis: Analysis, flops_reduction: float):
    """The plan of the greedy before reader weights: the same curves, costs and rules, weight 1."""
    rules = analysis.structural(NO_CONSTRAINTS)
    target = analysis.cost()[1] * (1 - flops_reduction)
    counts, _ = keep_for_budget(
        analysis.curves,
        lambda keep: analysis.cost(keep)[1],
        target,
        saving=lambda keep, name, k: analysis.costs.saving(keep, name, k)[1],
        constraints=rules,
    )
    return analysis.plan_for(counts)


def model_for(name: str, splits: dict):
    if name.startswith("regnet"):
        from benchmarks.families import FAMILIES, trained

        return trained(name, splits, FAMILIES[name].epochs, "cpu").eval()
    return common.benchmark_model(name, splits).eval()


def run_model(name: str, targets: tuple[float, ...], samples: int) -> dict:
    splits = common.digits_for(name)
    model = model_for(name, splits)
    test = splits["test"]
    dense_logits = common.logits_of(model, test.tensors[0])
    dense = common.score(model, test, dense_logits)
    calibration = common.random_subset(splits["pool"], samples, 0)
    analysis = api.analyze(model, calibration, seed=0)
    readers = analysis.reader_weights
    row: dict = {
        "dense_top1": dense["top1"],
        "readers": {g: int(w) for g, w in readers.items() if w > 1},
        "cells": {},
    }
    common.log(f"{name}: dense {dense['top1']:.1f} %, groups read by several layers {row['readers']}")
    for target in targets:
        plans = {"per reader": analysis.plan(flops_reduction=target), "pooled": pooled_plan(analysis, target)}
        for variant, plan in plans.items():
            for mode in ("sequential", "one-shot"):
                sequential = mode == "sequential"
                start = time.perf_counter()
                data = calibration if sequential else None
                run = api.prune(model, analysis, plan, data=data, sequential=sequential, physical=False)
                scored = common.score(run.model, test, dense_logits)
                row["cells"][f"{target}/{variant}/{mode}"] = {
                    "top1": scored["top1"],
                    "fidelity": scored["fidelity"],
                    "planned_flops_reduction": plan.flops_reduction,
                    "multi_reader_keep": {g: plan.keep[g] for g in row["readers"]},
                    "seconds": time.perf_counter() - start,
                }
                common.log(
                    f"{name} -{100 * target:.0f} % {variant:10s} {mode:10s} "
                    f"{scored['top1']:5.1f} % / {scored['fidelity']:.3f}"
                )
    return row


def table(data: dict) -> str:
    lines = [
        "| network | dense | greedy | mode | −30 % | −50 % | −70 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in data["models"].items():
        first = True
        for variant in VARIANTS:
            for mode in ("sequential", "one-shot"):
                cells = []
                for target in data["targets"]:
                    cell = row["cells"].get(f"{target}/{variant}/{mode}")
                    cells.append("–" if cell is None else f"{cell['top1']:.1f} / {cell['fidelity']:.3f}")
                dense = f"{row['dense_top1']:.1f} %" if first else ""
                lines.append(f"| {name if first else ''} | {dense} | {variant} | {mode} | " + " | ".join(cells) + " |")
                first = False
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_args(parser)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--samples", type=int, default=300, help="calibration images")
    args = parser.parse_args(argv)
    targets = TARGETS
    if args.quick:
        args.models, targets = ["demo-resnet"], (0.5,)
    common.default_out(args, "allocation")
    common.set_threads(args.threads)
    torch.manual_seed(0)
    data = common.run_header("allocation", args)
    data["targets"] = list(targets)
    data["models"] = {name: run_model(name, targets, args.samples) for name in args.models}
    common.write_json(Path(args.out), data)
    print(table(data))
    return data


if __name__ == "__main__":
    main()
