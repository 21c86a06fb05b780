"""The new families trained: DenseNet, ResNeXt, RegNet, SqueezeNet and GoogLeNet pruned without
fine-tuning, SNP's default against torch-pruning's magnitude pruner at equal FLOPs.

Each torchvision network (10 classes, full size) is trained here on the digits upscaled to
3x32x32 (SGD, cosine schedule, label smoothing 0.1, seed 0) and cached in ``benchmarks/.cache``
like resnet18-32. For every calibration seed (a random 300 of the 1,300 train + calibration digits)
it is analysed once (default ``output`` ordering) and pruned to 30/50/70 % fewer FLOPs with
``api.prune``'s defaults (sequential calibration, held-out choice of each fit), physically;
torch-pruning (``MetaPruner`` with ``MagnitudeImportance(p=1)``, the same ratio in every group, the
classifier left alone, no compensation; benchmarks/quality.py) is bisected to the same MACs. Both
are scored on the 497 test images: top-1 and relative logit error ‖z − z_dense‖ / ‖z_dense‖; the
FLOPs reduction is counted on the pruned network. At −50 % the SNP network is exported and reloaded
(the logits must agree), and the dense, SNP and torch-pruning networks are timed on the CPU at
batch 1 and 64 in alternating rounds (benchmarks/speedup.py).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/families.py          # docs/benchmarks/families.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/families.py --models googlenet --merge
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/families.py --quick  # smoke run, squeezenet1_1, 1 epoch
    .venv/bin/python benchmarks/families.py --table                          # section 14's table from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/families.py``

from benchmarks import common
from benchmarks.quality import Recorder, tp_prune, tp_ratio_for
from benchmarks.speedup import speeds
from snp_engine import api, io
from snp_engine.costs import count
from snp_engine.errors import SnpError

TP_METHOD = "tp-magnitude"
SNP_METHOD = "snp"
SPEED_TARGET = 0.5
CHANCE_MARGIN = 80.0  # dense top-1 (%) below this means the training failed (chance is ~10 %)


@dataclass(frozen=True)
class Family:
    """How one torchvision network is built and trained."""

    arch: str
    family: str
    epochs: int = 15
    lr: float = 0.05
    kwargs: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    prepare: Callable[[nn.Module], None] | None = None


def _live_classifier(model: nn.Module) -> None:
    """SqueezeNet's logits come out of a ReLU: with the default zero bias some classes' outputs are
    0 for every image early on and never recover (train top-1 plateaus near 50 %, or 10 %); a bias
    of 1 keeps them alive."""
    nn.init.constant_(model.classifier[1].bias, 1.0)


FAMILIES = {
    "densenet121": Family("densenet121", "DenseNet (concatenation)"),
    # at lr 0.05 these underfit (train top-1 22 % for regnet_x_400mf, 84 % for resnext50_32x4d)
    "resnext50_32x4d": Family("resnext50_32x4d", "ResNeXt (grouped convs, streams)", lr=0.01),
    "regnet_x_400mf": Family("regnet_x_400mf", "RegNet-X (grouped convs, streams)", lr=0.01),
    "regnet_y_400mf": Family("regnet_y_400mf", "RegNet-Y (grouped convs, SE, streams)", lr=0.01),
    # SGD at 0.002-0.03 and AdamW at 0.003+ stay at chance, AdamW at 0.0005 at 39 %, without _live_classifier
    "squeezenet1_1": Family(
        "squeezenet1_1",
        "SqueezeNet (fire concatenation)",
        epochs=30,
        lr=0.001,
        optimizer="adamw",
        prepare=_live_classifier,
    ),
    "googlenet": Family(
        "googlenet", "GoogLeNet (Inception concatenation)", kwargs={"aux_logits": False, "init_weights": True}
    ),
}


def trained(name: str, splits: dict, epochs: int, device: str) -> nn.Module:
    spec = FAMILIES[name]
    return common._trained_torchvision(
        spec.arch,
        splits,
        epochs=epochs,
        lr=spec.lr,
        device=device,
        kwargs=spec.kwargs,
        optimizer=spec.optimizer,
        prepare=spec.prepare,
    ).eval()


def reload_difference(run: api.Pruned, arch: str, images: torch.Tensor) -> dict:
    """Export the pruned network, reload it without code and compare logits on ``images``."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = io.export_model(
                run, Path(folder) / "m.safetensors", arch=f"torchvision:{arch}", num_classes=10, input_shape=(3, 32, 32)
            )
            again = io.load_exported(path).model.eval()
    except SnpError as exc:
        return {"status": "refused", "message": str(exc)}
    with torch.inference_mode():
        diff = float((again(images) - run.model.eval()(images)).abs().max())
    return {"status": "reloaded", "max_abs_diff": diff}


def time_variants(variants: dict[str, nn.Module], args: argparse.Namespace) -> dict:
    """Seconds per batch of 1 and ``args.batch`` images for every variant, alternating rounds, and
    each pruned variant's speed-up over ``dense``."""
    speed = {
        f"batch{batch}": speeds(variants, (3, 32, 32), batch, args.device, args.rounds, args.min_seconds)
        for batch in (1, args.batch)
    }
    for timed in speed.values():
        for method in variants:
            if method != "dense":
                timed[method]["speedup"] = timed["dense"]["seconds"] / timed[method]["seconds"]
    speed["load_average"] = os.getloadavg()[0]
    speed["threads"] = torch.get_num_threads()
    return speed


def weight_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The shape of every weight of two or more dimensions (biases left out)."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.dim() >= 2]


def speed_only(name: str, found: dict, args: argparse.Namespace) -> dict:
    """The −50 % timing again, for a model already in the results: the speed depends on how many
    units each layer keeps, not which, so SNP's plan (seed 0) is applied with one-shot compensation
    (the same layers, biases included) and torch-pruning at its recorded ratio; the parameter counts
    are checked against the full run's."""
    device = args.device
    splits = common.digits_for(name)
    model = trained(name, splits, found["epochs"], device).to(device)
    calibration = common.random_subset(splits["pool"], args.samples, args.seeds[0])
    example = common.example_input(splits["test"], device)
    timing_threads = torch.get_num_threads()
    # the analysis with the full run's thread count: float sums in another order can move a unit
    common.set_threads(found.get("machine", {}).get("torch_threads", timing_threads))
    analysis = api.analyze(model, calibration, seed=args.seeds[0], device=device)
    plan = analysis.plan(flops_reduction=SPEED_TARGET)
    common.set_threads(timing_threads)
    variants = {
        "dense": model,
        SNP_METHOD: api.prune(model, analysis, plan, sequential=False, device=device).model,
    }
    key = str(SPEED_TARGET)
    if key in found["tp_ratio"]:
        variants[TP_METHOD] = tp_prune(model, example, found["tp_ratio"][key]["ratio"], TP_METHOD, device=device)
    # the default prune keeps the plan's units and adds a bias only where a fit needs one, so its
    # parameter count lies between the uncompensated and the one-shot network of the same plan
    bare = api.prune(model, analysis, plan, compensate=False, sequential=False, device=device).model
    if weight_shapes(bare) != weight_shapes(variants[SNP_METHOD]):
        raise RuntimeError(f"{name}: compensation changed the pruned layers' shapes")
    bounds = count(bare, example)[0], count(variants[SNP_METHOD], example)[0]
    checked = {SNP_METHOD: {"params_scored": found["methods"][SNP_METHOD][key]["params"]["values"][0]}}
    checked[SNP_METHOD].update(params_uncompensated=bounds[0], params_one_shot=bounds[1])
    # False where the engine's plan changed since the full run (the timed network is then today's plan)
    checked[SNP_METHOD]["same_as_scored"] = bounds[0] <= checked[SNP_METHOD]["params_scored"] <= bounds[1]
    if TP_METHOD in variants:
        checked[TP_METHOD] = {
            "params_scored": found["methods"][TP_METHOD][key]["params"]["values"][0],
            "params_timed": count(variants[TP_METHOD], example)[0],
        }
    speed = {**time_variants(variants, args), "checked": checked}
    common.log(f"{name}: " + ", ".join(f"{m} {speed['batch1'][m].get('speedup', 1):.2f}x" for m in variants))
    return speed


def run_model(name: str, args: argparse.Namespace) -> dict:
    device = args.device
    spec = FAMILIES[name]
    splits = common.digits_for(name)
    start = time.perf_counter()
    model = trained(name, splits, args.epochs or spec.epochs, device).to(device)
    train_seconds = time.perf_counter() - start
    test = splits["test"]
    example = common.example_input(test, device)
    params, macs = count(model, example)
    dense_logits = common.logits_of(model, test.tensors[0], device)
    dense = common.score(model, test, dense_logits, device)
    common.log(f"{name}: dense top-1 {dense['top1']:.1f} %, {macs / 1e6:.1f} M MACs, {params / 1e6:.2f} M params")
    if dense["top1"] < CHANCE_MARGIN and not args.quick:
        common.log(f"{name}: WARNING dense top-1 {dense['top1']:.1f} % is close to chance; training failed")
    record, timing = Recorder(), Recorder()
    speed: dict = {}
    reload: dict = {}
    fits: dict[str, dict[str, int]] = {}

    start = time.perf_counter()
    try:
        ratios = {t: tp_ratio_for(model, example, t, device) for t in args.targets}
        tp_error = None
    except Exception as exc:  # a failure of the baseline is a result, not a crash of the benchmark
        ratios, tp_error = {}, f"{type(exc).__name__}: {exc}"[:300]
        common.log(f"{name}: torch-pruning failed: {tp_error}")
    timing.add(("tp_bisection",), seconds=time.perf_counter() - start)
    analysis = None
    for seed in args.seeds:
        calibration = common.random_subset(splits["pool"], args.samples, seed)
        start = time.perf_counter()
        analysis = api.analyze(model, calibration, seed=seed, device=device)
        timing.add(("analyze",), seconds=time.perf_counter() - start)
        for target in args.targets:
            variants: dict[str, nn.Module] = {"dense": model}
            start = time.perf_counter()
            plan = analysis.plan(flops_reduction=target)
            run = api.prune(model, analysis, plan, data=calibration, device=device)
            seconds = time.perf_counter() - start
            cell = fits.setdefault(str(target), {"sequential": 0, "one-shot": 0})
            for fit in run.record.fits.values():
                cell[fit["fit"]] = cell.get(fit["fit"], 0) + 1
            record.add(
                (SNP_METHOD, target),
                flops_reduction=1 - count(run.model, example)[1] / macs,
                planned_flops_reduction=plan.flops_reduction,
                params=count(run.model, example)[0],
                seconds=seconds,
                **common.score(run.model, test, dense_logits, device),
            )
            variants[SNP_METHOD] = run.model
            if target in ratios:
                start = time.perf_counter()
                pruned = tp_prune(model, example, ratios[target][0], TP_METHOD, calibration, device)
                seconds = time.perf_counter() - start
                record.add(
                    (TP_METHOD, target),
                    flops_reduction=1 - count(pruned, example)[1] / macs,
                    params=count(pruned, example)[0],
                    seconds=seconds,
                    **common.score(pruned, test, dense_logits, device),
                )
                variants[TP_METHOD] = pruned
            if target == SPEED_TARGET and seed == args.seeds[0]:
                reload = reload_difference(run, spec.arch, test.tensors[0][:64].to(device))
                speed = time_variants(variants, args)
            common.log(
                f"{name} seed {seed} -{target:.0%}: "
                + ", ".join(
                    f"{m} {record.rows[(m, target)]['top1'][-1]:.1f} %"
                    for m in (SNP_METHOD, TP_METHOD)
                    if (m, target) in record.rows
                )
            )
    return {
        "family": spec.family,
        "arch": spec.arch,
        "kwargs": spec.kwargs,
        "optimizer": spec.optimizer,
        "prepare": spec.prepare.__name__ if spec.prepare else None,
        "epochs": args.epochs or spec.epochs,
        "lr": spec.lr,
        "train_or_load_seconds": train_seconds,
        "dense": dense,
        "params": params,
        "macs": macs,
        "groups": len(analysis.groups) if analysis else 0,
        "coupled_groups": sum(g.group.coupled for g in analysis.groups) if analysis else 0,
        "excluded": [e.name for e in analysis.excluded] if analysis else [],
        "tp_ratio": {str(t): {"ratio": r, "flops_reduction": f} for t, (r, f) in ratios.items()},
        "tp_error": tp_error,
        "methods": record.nested(),
        "snp_fits": fits,
        "reload": reload,
        "speed": speed,
        "timing": timing.nested(),
    }


def table(results: dict) -> str:
    """Section 14's markdown table: top-1 / logit error per target, then the speed-ups at −50 %."""
    targets = sorted({t for m in results["models"].values() for r in m["methods"].values() for t in r}, key=float)
    head = " | ".join(f"−{float(t):.0%}" for t in targets)
    batches = sorted(
        {k for m in results["models"].values() for k in m["speed"] if k.startswith("batch")}, key=lambda k: int(k[5:])
    )
    lines = [
        f"| model | dense | method | {head} | " + " | ".join(f"batch {k[5:]}" for k in batches) + " |",
        "|---|---|---|" + "---|" * (len(targets) + len(batches)),
    ]
    for name, model in results["models"].items():
        for method in (SNP_METHOD, TP_METHOD):
            by_target = model["methods"].get(method, {})
            cells = []
            for t in targets:
                row = by_target.get(t)
                if not row:
                    cells.append("failed" if model["tp_error"] else "—")
                    continue
                top1, err = row["top1"], row["fidelity"]
                spread = f" ± {top1['std']:.1f}" if top1["std"] >= 0.05 else ""
                cells.append(
                    f"{top1['mean']:.1f}{spread} / {err['mean']:.3f} ({100 * row['flops_reduction']['mean']:.1f})"
                )
            speed = [
                f"{model['speed'][k][method]['speedup']:.2f}x" if method in model["speed"].get(k, {}) else "—"
                for k in batches
            ]
            dense = f"{model['dense']['top1']:.1f} %, {model['macs'] / 1e6:.0f} M" if method == SNP_METHOD else ""
            label = name if method == SNP_METHOD else ""
            lines.append(f"| {label} | {dense} | {method} | {' | '.join(cells)} | {' | '.join(speed)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", type=int, default=1, help="calibration draws (seeds 0..N-1)")
    parser.add_argument("--samples", type=int, default=300, help="calibration images per draw")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per family)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timing per variant and batch size")
    parser.add_argument("--merge", action="store_true", help="add this run's models to an existing --out file")
    parser.add_argument("--table", action="store_true", help="print --out as section 14's table and stop")
    parser.add_argument(
        "--speed-only", action="store_true", help="time the −50 %% networks of --out's models again (a quieter machine)"
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.samples, args.targets = ["squeezenet1_1"], 1, 64, [0.5]
        args.epochs, args.batch, args.rounds, args.min_seconds = 1, 8, 2, 0.05
    if SPEED_TARGET not in args.targets:
        args.targets.append(SPEED_TARGET)
    args.seeds = list(range(args.seeds))
    common.default_out(args, "families")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text(encoding="utf-8"))))
        return {}
    common.set_threads(args.threads)
    start = time.perf_counter()
    if args.speed_only:
        results = json.loads(args.out.read_text(encoding="utf-8"))
        for name in args.models:
            if name in results["models"] and "checked" not in results["models"][name]["speed"]:
                found = results["models"][name]
                speed = speed_only(name, found, args)
                found.setdefault("speed_in_run", found["speed"])  # the full run's timing, kept for comparison
                found["speed"] = {**speed, "machine": common.machine_info(args.device)}
                common.write_json(args.out, results)
        return results
    results = {**common.run_header("families", args, args.device), "models": {}}
    if args.merge and args.out.is_file():
        results["models"] = json.loads(args.out.read_text(encoding="utf-8")).get("models", {})
    for name in args.models:
        begin = time.perf_counter()
        results["models"][name] = run_model(name, args)
        results["models"][name].update(seconds=time.perf_counter() - begin, machine=results["machine"])
        results["wall_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]
        common.write_json(args.out, results)  # partial results survive an interrupted run
    common.log(f"families: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
