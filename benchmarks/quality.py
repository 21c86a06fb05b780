"""Quality of pruned networks without fine-tuning: test top-1 and relative logit error against the
FLOPs reduction, for SNP orderings x compensation modes, classic rankings and torch-pruning.

For every model and calibration seed (a random 300 of the 1,300 train+calibration digits), one
analysis is shared by all SNP-style methods; each method is pruned at 30/50/70 % FLOPs reduction and
scored on the held-out test split (497 images). Extra studies: calibration-set size, layer-wise
allocation (global threshold vs uniform ratios vs greedy), and a short fine-tune.

    .venv/bin/python benchmarks/quality.py                  # full run, writes docs/benchmarks/quality.json
    .venv/bin/python benchmarks/quality.py --quick          # tiny smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from snp_engine import api
from snp_engine.costs import count
from snp_engine.training import train

SNP_ORDERINGS = ("output", "greedy", "pivoted", "zca")
BASELINE_ORDERINGS = ("l1", "variance", "random")
COMPENSATION = {
    "seq": {"compensate": True, "sequential": True},
    "oneshot": {"compensate": True, "sequential": False},
    "none": {"compensate": False, "sequential": False},
}
TP_METHODS = ("tp-magnitude", "tp-taylor")
ALL_METHODS = tuple(f"{o}+{c}" for o in SNP_ORDERINGS + BASELINE_ORDERINGS for c in COMPENSATION) + TP_METHODS
DEFAULT_METHOD = "output+seq"
FINETUNE_METHODS = (DEFAULT_METHOD, "l1+none", "tp-magnitude")
FINETUNE_LR = 0.01


# ----------------------------------------------------------------------------------------------
# torch-pruning baselines


def tp_prune(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    method: str,
    calibration: TensorDataset | None = None,
    device: str = "cpu",
) -> nn.Module:
    """A physically pruned copy made the way torch-pruning users do: MetaPruner, the same ratio in
    every coupled group (global_pruning=False), classifier left alone, no compensation."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).to(device).eval()
    if method == "tp-magnitude":
        importance = tp.importance.MagnitudeImportance(p=1)
    elif method == "tp-taylor":
        importance = tp.importance.TaylorImportance()
    else:
        raise ValueError(f"unknown torch-pruning method {method!r}")
    pruner = tp.pruner.MetaPruner(
        pruned,
        example.to(device),
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=False,
        ignored_layers=[common.classifier_of(pruned)],
    )
    if method == "tp-taylor":
        # Taylor importance |w · dL/dw| needs gradients: one backward pass over the calibration data
        # (eval mode, so BatchNorm running statistics are not touched).
        pruned.zero_grad()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        for images, labels in DataLoader(calibration, batch_size=64):
            loss_fn(pruned(images.to(device)), labels.to(device)).backward()
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def tp_ratio_for(model: nn.Module, example: torch.Tensor, target: float, device: str = "cpu") -> tuple[float, float]:
    """Bisect torch-pruning's per-group ratio until the MACs reduction is within 0.5 % of ``target``.

    With global_pruning=False the pruned counts, hence MACs, do not depend on the importance, so the
    ratio found with magnitude importance serves every torch-pruning method."""
    base = count(model, example)[1]
    low, high, best = 0.0, 0.95, (0.0, 0.0)
    for _ in range(16):
        middle = (low + high) / 2
        pruned = tp_prune(model, example, middle, "tp-magnitude", device=device)
        reduction = 1 - count(pruned, example.to(device))[1] / base
        if abs(reduction - target) < abs(best[1] - target):
            best = (middle, reduction)
        if abs(reduction - target) < 0.005:
            break
        low, high = (middle, high) if reduction < target else (low, middle)
    return best


# ----------------------------------------------------------------------------------------------
# Layer-wise allocation


def uniform_plan(analysis: api.Analysis, target: float) -> api.Plan:
    """The same keep fraction q in every group, the largest q that meets the FLOPs target (bisection);
    a group split over conv groups keeps a multiple of its parts, as the engine demands."""
    budget = analysis.cost()[1] * (1 - target)
    parts = {g.name: g.group.parts for g in analysis.groups}

    def counts(q: float) -> dict[str, int]:
        return {name: max(parts[name], round(q * n / parts[name]) * parts[name]) for name, n in analysis.units.items()}

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if analysis.cost(counts(middle))[1] <= budget:
            low = middle
        else:
            high = middle
    return analysis.plan(keep=counts(low))


# ----------------------------------------------------------------------------------------------
# One model


class Recorder:
    """Collects per-seed numbers under nested keys and summarises them as mean/std."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict[str, list[float]]] = {}

    def add(self, key: tuple, **values: float) -> None:
        row = self.rows.setdefault(key, {})
        for name, value in values.items():
            row.setdefault(name, []).append(float(value))

    def nested(self) -> dict:
        out: dict = {}
        for key, row in self.rows.items():
            node = out
            for part in key[:-1]:
                node = node.setdefault(str(part), {})
            node[str(key[-1])] = {name: common.mean_std(values) for name, values in row.items()}
        return out


def snp_prune(model, analysis, plan, calibration, compensation: str, device: str, physical: bool = False):
    return api.prune(
        model, analysis, plan, data=calibration, physical=physical, device=device, **COMPENSATION[compensation]
    ).model


def finetune(model: nn.Module, train_set: TensorDataset, epochs: int, seed: int, device: str) -> nn.Module:
    tuned = copy.deepcopy(model)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    train(tuned, loader, epochs=epochs, lr=FINETUNE_LR, device=device)
    return tuned.eval()


def run_model(name: str, args: argparse.Namespace) -> dict:
    device = args.device
    splits = common.digits_for(name)
    model = common.benchmark_model(name, splits, device=device).to(device).eval()
    test = splits["test"]
    example = common.example_input(test, device)
    dense_logits = common.logits_of(model, test.tensors[0], device)
    dense = common.score(model, test, dense_logits, device)
    main, sweep, alloc, tuned, timing = Recorder(), Recorder(), Recorder(), Recorder(), Recorder()

    tp_methods = [m for m in args.methods if m in TP_METHODS]
    ratios = {t: tp_ratio_for(model, example, t, device) for t in args.targets} if tp_methods else {}
    orderings = sorted({m.split("+")[0] for m in args.methods if "+" in m} | {"output"})
    for seed in args.seeds:
        calibration = common.random_subset(splits["pool"], args.samples, seed)
        start = time.perf_counter()
        analysis = api.analyze(model, calibration, ordering="output", seed=seed, device=device)
        timing.add(("analyze",), seconds=time.perf_counter() - start)
        analyses = {"output": analysis}
        for ordering in orderings:
            if ordering not in analyses:
                start = time.perf_counter()
                analyses[ordering] = analysis.reorder(ordering)
                timing.add(("reorder", ordering), seconds=time.perf_counter() - start)
        for target in args.targets:
            plans = {o: a.plan(flops_reduction=target) for o, a in analyses.items()}
            for method in args.methods:
                start = time.perf_counter()
                if method in TP_METHODS:
                    pruned = tp_prune(model, example, ratios[target][0], method, calibration, device)
                    reduction = 1 - count(pruned, example)[1] / count(model, example)[1]
                else:
                    ordering, compensation = method.split("+")
                    plan = plans[ordering]
                    pruned = snp_prune(model, analyses[ordering], plan, calibration, compensation, device)
                    reduction = plan.flops_reduction
                seconds = time.perf_counter() - start
                main.add(
                    (method, target),
                    flops_reduction=reduction,
                    seconds=seconds,
                    **common.score(pruned, test, dense_logits, device),
                )
                if (
                    method in args.finetune_methods
                    and target in args.finetune_targets
                    and seed in args.seeds[: args.finetune_seeds]
                ):
                    if method not in TP_METHODS:  # physically smaller, so fine-tuning cannot regrow units
                        pruned = snp_prune(
                            model, analyses[ordering], plan, calibration, compensation, device, physical=True
                        )
                    before = common.score(pruned, test, dense_logits, device)
                    after = common.score(
                        finetune(pruned, splits["train"], args.finetune_epochs, seed, device),
                        test,
                        dense_logits,
                        device,
                    )
                    tuned.add(
                        (method, target),
                        top1_before=before["top1"],
                        top1_after=after["top1"],
                        fidelity_before=before["fidelity"],
                        fidelity_after=after["fidelity"],
                    )
            run_allocation(model, analysis, target, calibration, test, dense_logits, device, alloc, main)
        run_sample_sweep(model, splits, seed, args, test, dense_logits, main, sweep)
        common.log(f"{name}: seed {seed} done")
    return {
        "dense": dense,
        "params": count(model, example)[0],
        "macs": count(model, example)[1],
        "groups": {g.name: g.units for g in analysis.groups},
        "tp_ratio": {str(t): {"ratio": r, "flops_reduction": f} for t, (r, f) in ratios.items()},
        "methods": main.nested(),
        "samples_sweep": sweep.nested(),
        "allocation": alloc.nested(),
        "finetune": tuned.nested(),
        "timing": timing.nested(),
    }


def run_allocation(
    model, analysis, target, calibration, test, dense_logits, device, record: Recorder, main: Recorder
) -> None:
    """Default SNP (output ordering, sequential compensation) with three ways to split the budget;
    "greedy" is the library default, i.e. the main run's default method, and is copied from it when
    that ran."""
    plans = {
        "threshold": analysis.plan(flops_reduction=target, allocation="threshold"),
        "uniform": uniform_plan(analysis, target),
        "greedy": analysis.plan(flops_reduction=target, allocation="greedy"),
    }
    for kind, plan in plans.items():
        if kind == "greedy" and (DEFAULT_METHOD, target) in main.rows:
            row = main.rows[(DEFAULT_METHOD, target)]
            record.add((kind, target), **{k: row[k][-1] for k in ("top1", "fidelity", "flops_reduction")})
            continue
        pruned = snp_prune(model, analysis, plan, calibration, "seq", device)
        record.add(
            (kind, target), flops_reduction=plan.flops_reduction, **common.score(pruned, test, dense_logits, device)
        )


def run_sample_sweep(model, splits, seed, args, test, dense_logits, main: Recorder, record: Recorder) -> None:
    """Default SNP with fewer calibration images (the same seeded draw as the main run, truncated)."""
    for samples in args.sweep_samples:
        if samples == args.samples and DEFAULT_METHOD in args.methods:
            for target in args.targets:  # identical run: reuse the main result of this seed
                row = main.rows[(DEFAULT_METHOD, target)]
                record.add((samples, target), **{k: row[k][-1] for k in ("top1", "fidelity", "flops_reduction")})
            continue
        calibration = common.random_subset(splits["pool"], samples, seed)
        analysis = api.analyze(model, calibration, ordering="output", seed=seed, device=args.device)
        for target in args.targets:
            plan = analysis.plan(flops_reduction=target)
            pruned = snp_prune(model, analysis, plan, calibration, "seq", args.device)
            record.add(
                (samples, target),
                flops_reduction=plan.flops_reduction,
                **common.score(pruned, test, dense_logits, args.device),
            )


# ----------------------------------------------------------------------------------------------
# Plot


def plot(results: dict, path: Path) -> Path:
    """Top-1 and logit error vs FLOPs reduction, one column per model, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 8.5), squeeze=False)
    families = [*SNP_ORDERINGS, *BASELINE_ORDERINGS, *TP_METHODS]
    colours = dict(zip(families, plt.get_cmap("tab10").colors, strict=False))
    styles = {"seq": "-", "oneshot": "--", "none": ":"}
    for column, model in enumerate(models):
        data = results["models"][model]
        for method, by_target in data["methods"].items():
            family, _, comp = method.partition("+")
            targets = sorted(by_target, key=float)
            x = [100 * by_target[t]["flops_reduction"]["mean"] for t in targets]
            for row, metric in enumerate(("top1", "fidelity")):
                y = [by_target[t][metric]["mean"] for t in targets]
                err = [by_target[t][metric]["std"] for t in targets]
                axes[row][column].errorbar(
                    x,
                    y,
                    yerr=err,
                    color=colours[family],
                    linestyle=styles.get(comp, "-."),
                    marker="o" if family in TP_METHODS else ".",
                    capsize=2,
                    label=method,
                    linewidth=1.6 if method == DEFAULT_METHOD else 1.0,
                )
        axes[0][column].axhline(data["dense"]["top1"], color="black", linewidth=0.8)
        axes[0][column].set_title(f"{model} (dense {data['dense']['top1']:.1f} %)")
        axes[0][column].set_ylabel("test top-1 (%)")
        axes[1][column].set_ylabel("relative logit error")
        axes[1][column].set_xlabel("FLOPs (MACs) reduction (%)")
        axes[0][column].set_ylim(0, 101)
        axes[1][column].set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=8, fontsize=7.5, frameon=False)
    fig.suptitle(
        "No fine-tuning; digits test split (497); mean ± std over calibration seeds. "
        "solid = sequential, dashed = one-shot, dotted = no compensation",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_studies(results: dict, path: Path) -> Path:
    """Calibration-size sweep, allocation comparison and fine-tuning, one row per study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(3, len(models), figsize=(5.2 * len(models), 11), squeeze=False)
    for column, model in enumerate(models):
        data = results["models"][model]
        ax = axes[0][column]
        for samples, by_target in sorted(data["samples_sweep"].items(), key=lambda kv: int(kv[0])):
            targets = sorted(by_target, key=float)
            ax.errorbar(
                [100 * float(t) for t in targets],
                [by_target[t]["top1"]["mean"] for t in targets],
                yerr=[by_target[t]["top1"]["std"] for t in targets],
                marker=".",
                capsize=2,
                label=f"{samples} images",
            )
        ax.set_title(f"{model}: calibration images (output+seq)")
        ax = axes[1][column]
        for kind, by_target in data["allocation"].items():
            targets = sorted(by_target, key=float)
            ax.errorbar(
                [100 * float(t) for t in targets],
                [by_target[t]["top1"]["mean"] for t in targets],
                yerr=[by_target[t]["top1"]["std"] for t in targets],
                marker=".",
                capsize=2,
                label=kind,
            )
        ax.set_title(f"{model}: layer-wise allocation (output+seq)")
        ax = axes[2][column]
        for method, by_target in data["finetune"].items():
            targets = sorted(by_target, key=float)
            xs = [100 * float(t) for t in targets]
            line = ax.plot(
                xs, [by_target[t]["top1_after"]["mean"] for t in targets], marker="o", label=f"{method} fine-tuned"
            )[0]
            ax.plot(
                xs,
                [by_target[t]["top1_before"]["mean"] for t in targets],
                marker=".",
                linestyle=":",
                color=line.get_color(),
                label=f"{method} before",
            )
        ax.set_title(f"{model}: before / after fine-tuning")
        for row in range(3):
            axes[row][column].set_ylabel("test top-1 (%)")
            axes[row][column].set_xlabel("FLOPs reduction target (%)")
            axes[row][column].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(common.MODELS), choices=list(common.MODELS))
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=list(ALL_METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="calibration draws (seeds 0..N-1)")
    parser.add_argument("--samples", type=int, default=300, help="calibration images per draw")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--sweep-samples", nargs="*", type=int, default=[32, 64, 128, 300])
    parser.add_argument("--finetune-methods", nargs="*", default=list(FINETUNE_METHODS))
    parser.add_argument("--finetune-targets", nargs="*", type=float, default=[0.5, 0.7])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument(
        "--finetune-seeds",
        type=int,
        default=1,
        help="fine-tune the pruned models of the first N calibration seeds only",
    )
    common.add_run_args(parser, plot="docs/quality.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.methods, args.seeds, args.samples = ["demo-vgg"], [DEFAULT_METHOD, "tp-magnitude"], 1, 64
        args.targets, args.sweep_samples, args.finetune_targets, args.finetune_epochs = [0.5], [32], [0.5], 1
        args.finetune_methods = [DEFAULT_METHOD]
    args.seeds = list(range(args.seeds))
    args.finetune_methods = [m for m in args.finetune_methods if m in args.methods]
    common.default_out(args, "quality")
    if args.plot is None and not args.quick:
        args.plot = common.PLOTS_DIR / "quality.png"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = {**common.run_header("quality", args, args.device), "models": {}}
    for name in args.models:
        results["models"][name] = run_model(name, args)
        results["wall_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]
        common.write_json(args.out, results)  # partial results survive an interrupted run
    if args.plot is not None:
        plot(results, args.plot)
        plot_studies(results, args.plot.with_name(args.plot.stem + "_studies.png"))
    common.log(f"quality: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
