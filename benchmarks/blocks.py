"""Whole residual blocks removed, compensated or not, against channel-only plans at the same FLOPs,
without fine-tuning.

For every model, one calibration draw (a random 300 of the 1,300 train+calibration digits) scores
every removable block (:func:`snp_engine.blocks.score_blocks`: the held-out share u of its output
that no affine map of its input explains) and the 1, 2, 3 blocks with the least u are removed:

* ``compensated``: replaced by the identity, every later conv/linear layer refitted towards the
  dense network (:func:`snp_engine.blocks.remove_blocks`);
* ``dropped``: the same blocks replaced by the identity, nothing refitted;
* ``branch-ranked``: compensated, but the blocks chosen by the least branch share b instead of u;
* ``channels``: no block removed, SNP channel pruning (coupled groups, sequential calibration) to
  the same MACs as the compensated network.

Each network is scored on the held-out test split (497 images): top-1 and relative logit error
‖z − z_dense‖ / ‖z_dense‖, and its latency measured (median of repeated forward passes, batch 1 and
batch 32, on this machine's CPU; the fastest of the repeats).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/blocks.py          # writes docs/benchmarks/blocks.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/blocks.py --quick  # smoke run, demo-resnet only

``--combined R`` (docs/benchmarks/blocks_combined.json) compares plans under one FLOPs target R
instead: *channels* (SNP channel pruning to R) against *combined* plans that remove the 1, 2, 3
blocks with the least u, compensated, and meet R with the channels of what remains (analysed
again; the channels are asked for R' = 1 − (1 − R) · MACs_dense / MACs_without_blocks), which is
``snp prune --flops-reduction R --remove-blocks k``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/blocks.py``

import torch
from torch import nn

from benchmarks import common
from snp_engine import api
from snp_engine.blocks import BlockScore, least_important, remove_blocks, score_blocks
from snp_engine.costs import count

MODELS = ("demo-resnet", common.TRAINED_RESNET)
VARIANTS = ("compensated", "dropped", "branch-ranked", "channels")


def latency(model: nn.Module, example: torch.Tensor, args: argparse.Namespace) -> dict:
    """Milliseconds of one forward pass at batch 1 and batch 32: the fastest of the repeats (the
    table's number; on a shared machine the others' load only ever adds time) and the median."""
    model = model.to(args.device).eval()
    found = {}
    for batch in (1, 32):
        images = example.expand(batch, *example.shape[1:]).contiguous()
        with torch.inference_mode():
            timed = common.time_call(lambda images=images: model(images), device=args.device, min_seconds=args.seconds)
        found[f"ms_batch{batch}"] = 1000.0 * timed["min"]
        found[f"ms_batch{batch}_median"] = 1000.0 * timed["median"]
    return found


def measure(model: nn.Module, test, dense_logits, example, macs: float, args, seconds: float) -> dict:
    row = common.score(model, test, dense_logits, args.device)
    row["macs"] = count(model, example)[1]
    row["flops_reduction"] = 1 - row["macs"] / macs
    row["seconds"] = seconds
    row.update(latency(model, example, args))
    return row


def by_branch(scores: tuple[BlockScore, ...], k: int) -> tuple[str, ...]:
    """The ``k`` blocks with the least branch share b (what dropping them changes), in network order."""
    order = [s.name for s in scores]
    chosen = sorted(scores, key=lambda s: (s.branch, order.index(s.name)))[:k]
    return tuple(sorted((s.name for s in chosen), key=order.index))


def run_model(name: str, args: argparse.Namespace) -> dict:
    device = args.device
    splits = common.digits_for(name)
    model = common.benchmark_model(name, splits, device=device).to(device).eval()
    test = splits["test"]
    example = common.example_input(test, device)
    params, macs = count(model, example)
    dense_logits = common.logits_of(model, test.tensors[0], device)
    dense = {**common.score(model, test, dense_logits, device), "macs": macs, **latency(model, example, args)}
    calibration = common.random_subset(splits["pool"], args.samples, 0)
    start = time.perf_counter()
    scores = score_blocks(model, calibration, device=device)
    scoring = time.perf_counter() - start
    analysis = None
    rows: dict[str, dict] = {}
    for k in [k for k in args.counts if k <= len(scores)]:
        names = least_important(scores, k)
        row: dict = {"removed": list(names)}
        start = time.perf_counter()
        compensated = remove_blocks(model, names, calibration, device=device).model
        row["compensated"] = measure(compensated, test, dense_logits, example, macs, args, time.perf_counter() - start)
        dropped = remove_blocks(model, names, calibration, compensate=False, device=device).model
        row["dropped"] = measure(dropped, test, dense_logits, example, macs, args, 0.0)
        branch_names = by_branch(scores, k)
        row["branch_ranked_removed"] = list(branch_names)
        if branch_names == names:
            row["branch-ranked"] = row["compensated"]
        else:
            start = time.perf_counter()
            ranked = remove_blocks(model, branch_names, calibration, device=device).model
            row["branch-ranked"] = measure(ranked, test, dense_logits, example, macs, args, time.perf_counter() - start)
        start = time.perf_counter()
        if analysis is None:
            analysis = api.analyze(model, calibration, device=device)
        plan = analysis.plan(flops_reduction=row["compensated"]["flops_reduction"])
        channels = api.prune(model, analysis, plan, data=calibration, device=device).model
        row["channels"] = measure(channels, test, dense_logits, example, macs, args, time.perf_counter() - start)
        rows[str(k)] = row
        common.log(f"{name}: {k} block(s) removed: " + ", ".join(names))
    return {
        "dense": dense,
        "params": params,
        "blocks": [s.to_dict() for s in scores],
        "scoring_seconds": scoring,
        "by_count": rows,
    }


def run_combined(name: str, args: argparse.Namespace) -> dict:
    """Channel-only against blocks-then-channels plans at the same FLOPs target ``args.combined``."""
    device, target = args.device, args.combined
    splits = common.digits_for(name)
    model = common.benchmark_model(name, splits, device=device).to(device).eval()
    test = splits["test"]
    example = common.example_input(test, device)
    _params, macs = count(model, example)
    dense_logits = common.logits_of(model, test.tensors[0], device)
    dense = {**common.score(model, test, dense_logits, device), "macs": macs, **latency(model, example, args)}
    calibration = common.random_subset(splits["pool"], args.samples, 0)
    scores = score_blocks(model, calibration, device=device)
    start = time.perf_counter()
    analysis = api.analyze(model, calibration, device=device)
    channels = api.prune(model, analysis, analysis.plan(flops_reduction=target), data=calibration, device=device)
    rows = {"0": {"removed": [], **measure(channels.model, test, dense_logits, example, macs, args, 0.0)}}
    rows["0"]["seconds"] = time.perf_counter() - start
    for k in [k for k in args.counts if k <= len(scores)]:
        names = least_important(scores, k)
        start = time.perf_counter()
        removed = remove_blocks(model, names, calibration, device=device).model
        reduction = 1 - (1 - target) * macs / count(removed, example)[1]
        if reduction <= 0:
            common.log(f"{name}: {k} block(s) alone cut more than {target:.0%}; skipped")
            continue
        again = api.analyze(removed, calibration, device=device)
        pruned = api.prune(removed, again, again.plan(flops_reduction=reduction), data=calibration, device=device)
        rows[str(k)] = {
            "removed": list(names),
            **measure(pruned.model, test, dense_logits, example, macs, args, time.perf_counter() - start),
        }
        common.log(f"{name}: {k} block(s) and channels to -{target:.0%} FLOPs: " + ", ".join(names))
    return {"dense": dense, "target": target, "blocks": [s.to_dict() for s in scores], "by_count": rows}


def combined_table(results: dict) -> str:
    """The markdown table of a ``--combined`` run."""
    lines = [
        "| model | FLOPs target | blocks removed | FLOPs red. | top-1 % (logit error) | latency b1 / b32 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, model in results["models"].items():
        for k, row in model["by_count"].items():
            removed = f"{k}: {', '.join(row['removed'])}" if row["removed"] else "0 (channels only)"
            lines.append(
                f"| {name} | {100 * model['target']:.0f} % | {removed} | {100 * row['flops_reduction']:.1f} % | "
                f"{row['top1']:.1f} ({row['fidelity']:.3f}) | {row['ms_batch1']:.2f} / {row['ms_batch32']:.1f} |"
            )
        dense = model["dense"]
        lines.append(
            f"| {name} | dense | — | 0 % | {dense['top1']:.1f} | {dense['ms_batch1']:.2f} / {dense['ms_batch32']:.1f} |"
        )
    return "\n".join(lines)


def table(results: dict) -> str:
    """The markdown table of docs/benchmarks.md."""
    lines = [
        "| model | blocks removed | FLOPs red. | compensated | dropped | branch-ranked | channels (same FLOPs) "
        "| latency b1 / b32 ms: blocks | channels | dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in results["models"].items():
        dense = model["dense"]
        for k, row in model["by_count"].items():
            cells = [f"{row[v]['top1']:.1f} ({row[v]['fidelity']:.3f})" for v in VARIANTS]
            comp, chan = row["compensated"], row["channels"]
            lines.append(
                f"| {name} | {k}: {', '.join(row['removed'])} | {100 * comp['flops_reduction']:.1f} % | "
                + " | ".join(cells)
                + f" | {comp['ms_batch1']:.2f} / {comp['ms_batch32']:.1f} | {chan['ms_batch1']:.2f} / "
                f"{chan['ms_batch32']:.1f} | {dense['ms_batch1']:.2f} / {dense['ms_batch32']:.1f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(common.MODELS))
    parser.add_argument("--samples", type=int, default=300, help="calibration images")
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 2, 3], help="blocks to remove")
    parser.add_argument("--seconds", type=float, default=2.0, help="least time per latency measurement")
    parser.add_argument("--table", action="store_true", help="print the markdown table of an existing --out file")
    parser.add_argument(
        "--combined", type=float, default=None, metavar="R", help="channel-only vs blocks + channels at FLOPs -R"
    )
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.samples, args.counts, args.seconds = ["demo-resnet"], 64, [1], 0.05
    common.default_out(args, "blocks_combined" if args.combined is not None else "blocks")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.table:
        import json

        results = json.loads(Path(args.out).read_text(encoding="utf-8"))
        print(combined_table(results) if "target" in next(iter(results["models"].values())) else table(results))
        return results
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = {**common.run_header("blocks", args, args.device), "models": {}}
    for name in args.models:
        results["models"][name] = run_combined(name, args) if args.combined is not None else run_model(name, args)
        results["wall_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]
        common.write_json(args.out, results)  # partial results survive an interrupted run
    common.log(f"blocks: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
