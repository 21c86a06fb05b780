"""What the subcommands share: preparing model and data, warnings on stderr, number formatting."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch

from snp_engine import distributed, io, workflows
from snp_engine.errors import OutOfMemoryError
from snp_engine.runtime import resolve_device
from snp_engine.workflows import Prepared


def prepare(
    args: argparse.Namespace, *, data: bool = True, require_labels: bool = False
) -> tuple[Prepared, torch.device]:
    """Device first (a missing CUDA is reported before any slow loading), then model, data and checks.

    With ``--distributed`` this process joins torchrun's process group and keeps its shard of the
    calibration images, whole batches of ``--batch-size`` (``--samples`` counts images over all
    processes); the dense check on the first calibration images is shared too.
    """
    context = distributed.start(args.device) if getattr(args, "distributed", False) else None
    device = context.device if context is not None else resolve_device(args.device)
    torch.manual_seed(getattr(args, "seed", 0))
    prepared = workflows.prepare(
        args.model,
        args.data if data else None,
        eval_data=getattr(args, "eval_data", None),
        input_size=args.input_size,
        trust=args.trust,
        seed=getattr(args, "seed", 0),
        require_labels=require_labels,
        device=device,
        distributed=context is not None,
    )
    if context is not None and prepared.data is not None:
        prepared = workflows.sharded(
            prepared, context.rank, context.world, getattr(args, "samples", None), getattr(args, "batch_size", 1)
        )
        args.samples = None  # the shard is already cut to this process's part of --samples
    say(args, prepared.notes, "note")
    say(args, prepared.warnings, "warning")
    return prepared, device


def prepared_fields(prepared: Prepared) -> dict[str, Any]:
    """What every data-reading command reports about the input it used and its checks."""
    dense = prepared.dense
    return {
        "input_shape": list(prepared.input_shape),
        "notes": list(prepared.notes),
        "dense_check": None
        if dense is None
        else {"top1": dense.top1, "samples": dense.samples, "chance": dense.chance, "near_chance": dense.near_chance},
    }


def with_cpu_fallback(args: argparse.Namespace, device: torch.device, step, warnings: list[str]):
    """Run ``step(device)``; after an out-of-memory error, and only with --cpu-fallback, warn and run
    it again on the CPU. Returns the step's result and the device it finally ran on."""
    try:
        return step(device), device
    except OutOfMemoryError as exc:
        if not getattr(args, "cpu_fallback", False) or device.type == "cpu":
            raise
        message = f"{exc}; retrying on the CPU (--cpu-fallback)"
    warnings.append(message)
    say(args, [message], "warning")
    cpu = torch.device("cpu")
    return step(cpu), cpu


def check_output(*paths: str | None) -> None:
    """Refuse an output that cannot be written before the work, not after it."""
    for path in paths:
        if path is not None:
            io.check_writable(path)


def say(args: argparse.Namespace, lines: Sequence[str], kind: str) -> None:
    if not args.quiet:
        for line in lines:
            sys.stderr.write(f"snp: {kind}: {line}\n")


SINGULAR_DETAIL_AT = 4  # this many singular groups or more: one summary line (each group with --debug)


def say_singular(args: argparse.Namespace, lines: Sequence[str]) -> None:
    """The analysis' singular-statistics warnings (one per group, :meth:`Analysis.warnings`): a few are
    printed as they are; more (a ViT on few images has one per layer) as one line naming how many groups
    and the most images any of them needs, each group's line only with ``--debug`` (the JSON record's
    ``warnings`` has them all)."""
    if len(lines) < SINGULAR_DETAIL_AT or getattr(args, "debug", False):
        say(args, lines, "warning")
        if len(lines) < SINGULAR_DETAIL_AT:
            return
    needed = [re.search(r"use at least (\d+) images \(now (\d+)\)", line) for line in lines]
    counts = [(int(m.group(1)), int(m.group(2))) for m in needed if m]
    dead = sum(1 for line in lines if "dead or duplicate units" in line)
    parts = []
    if counts:
        most, now = max(counts)
        parts.append(
            f"{len(counts)} groups have fewer calibration samples than channels; use at least {most} images (now {now})"
        )
    if dead:
        parts.append(f"{dead} groups have dead or duplicate units (pruning them first is harmless)")
    other = len(lines) - len(counts) - dead
    if other:
        parts.append(f"{other} more groups: use more samples")
    where = "" if getattr(args, "debug", False) else "; each group in the JSON record's warnings, or with --debug"
    say(args, [f"singular statistics, regularised: {'; '.join(parts)}{where}"], "warning")


def fmt_count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def change(before: float, after: float) -> str:
    return f"{fmt_count(before)} -> {fmt_count(after)} ({(1 - after / before) * 100 if before else 0:.1f}% fewer)"


def dense_line(prepared: Prepared) -> list[str]:
    dense = prepared.dense
    if dense is None:
        return []
    flag = "  << near chance: check preprocessing and --input-size" if dense.near_chance else ""
    return [f"  unpruned top-1 {dense.top1:.2f}% on the first {dense.samples} calibration images{flag}"]
