"""Measured inference speed of physically pruned networks next to their FLOPs ratio.

Each network is pruned to 50 % fewer MACs twice — with SNP's global-threshold allocation and with
the same keep fraction in every group (uniform) — and the pruned and original models are timed:
latency at batch 1 and throughput at batch 64. Which units are removed does not change the speed,
only how many per layer, so random weights and random calibration images are used for the
torchvision networks; the demo networks use their trained weights and the digits.

    .venv/bin/python benchmarks/speedup.py                  # CPU, writes docs/benchmarks/speedup.json
    .venv/bin/python benchmarks/speedup.py --device cuda    # on a GPU
    .venv/bin/python benchmarks/speedup.py --quick          # tiny smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from benchmarks.quality import uniform_plan
from snp_engine import api
from snp_engine.costs import count

# (name, architecture, input side)
CASES = (
    ("demo-vgg", "demo-vgg", 8),
    ("demo-resnet", "demo-resnet", 8),
    ("resnet18@32", "resnet18", 32),
    ("vgg11_bn@32", "vgg11_bn", 32),
    ("resnet18@224", "resnet18", 224),
    ("vgg11_bn@224", "vgg11_bn", 224),
)


def build(arch: str, side: int) -> tuple[nn.Module, TensorDataset]:
    """The model and calibration images for one case."""
    if arch.startswith("demo-"):
        return common.benchmark_model(arch), common.digits_for(arch)["calibration"]
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000).eval()
    images = torch.randn(16, 3, side, side)
    return model, TensorDataset(images, torch.zeros(len(images), dtype=torch.long))


def speeds(
    variants: dict[str, nn.Module], shape: tuple[int, ...], batch: int, device: str, rounds: int, min_seconds: float
) -> dict[str, dict]:
    """Seconds per forward pass of every variant, timed in alternating rounds (dense, pruned, …,
    dense, pruned, …) so that a change in the machine's load hits all of them alike; the median over
    rounds of each round's median is reported."""
    x = torch.randn(batch, *shape, device=device)
    models = {name: model.to(device).eval() for name, model in variants.items()}
    with torch.inference_mode():
        calls = {name: (lambda model=model: model(x)) for name, model in models.items()}
        timed = common.alternating_rounds(calls, device=device, rounds=rounds, min_seconds=min_seconds)
    return {name: {**timing, "images_per_second": batch / timing["seconds"]} for name, timing in timed.items()}


def run_case(name: str, arch: str, side: int, args: argparse.Namespace) -> dict:
    model, calibration = build(arch, side)
    shape = tuple(calibration.tensors[0].shape[1:])
    start = time.perf_counter()
    # the ordering decides which units go, not how many per layer: a cheap one is enough here
    analysis = api.analyze(model, calibration, ordering="variance", max_positions=256, device=args.device)
    analysis_seconds = time.perf_counter() - start
    plans = {
        "threshold": analysis.plan(flops_reduction=args.reduction),
        "uniform": uniform_plan(analysis, args.reduction),
    }
    example = torch.zeros(1, *shape, device=args.device)
    dense_params, dense_macs = count(model.to(args.device), example)
    variants = {"dense": model}
    for kind, plan in plans.items():
        variants[kind] = api.prune(
            model, analysis, plan, compensate=False, sequential=False, physical=True, device=args.device
        ).model
    row = {"input": list(shape), "analysis_seconds": analysis_seconds, "variants": {}}
    for kind, variant in variants.items():
        params, macs = count(variant.to(args.device), example)
        row["variants"][kind] = {"params": params, "macs": macs, "flops_ratio": macs / dense_macs}
    for batch in (1, args.batch):
        timed = speeds(variants, shape, batch, args.device, args.rounds, args.min_seconds)
        for kind, timing in timed.items():
            row["variants"][kind][f"batch{batch}"] = timing
    for kind, variant in row["variants"].items():
        common.log(
            f"speedup {name} {kind}: macs {variant['macs'] / 1e6:.1f} M, batch 1 "
            f"{1e3 * variant['batch1']['seconds']:.2f} ms, batch {args.batch} "
            f"{variant[f'batch{args.batch}']['images_per_second']:.0f} img/s"
        )
    dense = row["variants"]["dense"]
    for kind in plans:
        variant = row["variants"][kind]
        variant["speedup_batch1"] = dense["batch1"]["seconds"] / variant["batch1"]["seconds"]
        key = f"batch{args.batch}"
        variant[f"speedup_{key}"] = dense[key]["seconds"] / variant[key]["seconds"]
        variant["flops_speedup"] = 1 / variant["flops_ratio"]
    row["dense_params"] = dense_params
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [c[0] for c in CASES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=names, choices=names)
    parser.add_argument("--reduction", type=float, default=0.5, help="FLOPs (MACs) reduction of the pruned models")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurement")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="time each variant at least this long per batch size, split over the rounds",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.batch, args.min_seconds, args.rounds = ["demo-vgg"], 8, 0.05, 2
    common.default_out(args, "speedup")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = {**common.run_header("speedup", args, args.device), "cases": {}}
    for name, arch, side in CASES:
        if name in args.cases:
            results["cases"][name] = run_case(name, arch, side, args)
            results["wall_seconds"] = time.perf_counter() - start
            results["load_average_end"] = os.getloadavg()[0]
            common.write_json(args.out, results)
    common.log(f"speedup: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
