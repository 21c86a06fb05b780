"""The subcommands: each runs its job through :mod:`snp_engine.workflows` and returns
(JSON result, text lines); the entry point prints one or the other."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from snp_engine import distributed, io, workflows
from snp_engine.cli import plumbing
from snp_engine.deploy import require_onnx
from snp_engine.errors import SnpError
from snp_engine.layernorm_streams import stream_norms
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import Constraints
from snp_engine.subspace import DEFAULT_ORDERING
from snp_engine.workflows import AnalysisOptions, Compensation, PlanTarget

Result = tuple[dict[str, Any], list[str]]


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Prunable groups, excluded groups, parameters and FLOPs of a model."""
    prepared, device = plumbing.prepare(args, data=False)
    loaded, shape = prepared.model, prepared.input_shape
    found = workflows.inspect(prepared, device=device, reporter=reporter)
    groups, excluded, params, flops, warnings = found.groups, found.excluded, found.params, found.flops, found.warnings
    pruning = loaded.pruning.to_dict() if loaded.pruning is not None else None
    blocks = workflows.removable_blocks(prepared, device=device)
    norms = {g.name: stream_norms(loaded.model, g) for g in groups}  # a stream read through layer norms
    plumbing.say(args, warnings, "warning")
    result = {
        "model": args.model,
        "arch": loaded.arch,
        "source": loaded.source,
        "num_classes": loaded.num_classes,
        "input_shape": list(shape),
        "params": params,
        "flops": flops,
        "groups": [
            {
                "name": g.name,
                "consumer": g.consumer,
                "units": g.units,
                "layout": g.layout,
                **({"kind": g.kind, "head_dim": g.block} if g.kind == "heads" else {}),
                **(
                    {"readers": [r.consumer for r in g.readers], "producers": list(g.all_producers)}
                    if g.coupled
                    else {}
                ),
                **({"parts": g.parts} if g.parts > 1 else {}),
                **({"layer_norms": list(norms[g.name])} if norms[g.name] else {}),
            }
            for g in groups
        ],
        "excluded": [{"name": e.name, "units": e.units, "reason": e.reason} for e in excluded],
        "blocks": [{"name": b.name, "units": b.units, "layout": b.layout} for b in blocks],
        "warnings": list(warnings),
    }
    if pruning:
        result["pruning"] = {
            "kept": {name: len(kept) for name, kept in pruning["kept"].items()},
            "units": pruning["units"],
            "ordering": pruning.get("ordering"),
            "compensation": pruning.get("compensation"),
            "blocks": pruning.get("blocks", []),
        }
    lines = [
        f"model        {args.model} ({loaded.arch}, {loaded.source})",
        f"input        {'x'.join(map(str, shape))}, {loaded.num_classes} classes",
        f"parameters   {params:,} ({plumbing.fmt_count(params)})",
        f"FLOPs (MACs) {plumbing.fmt_count(flops)}",
        f"prunable layer groups ({len(groups)}):",
        *(
            f"  {g.name:<28} -> {g.consumer + (f' (+{len(g.more_readers)})' if g.more_readers else ''):<28} "
            f"{g.units:>6} {g.unit_word}"
            + (f"  {g.coupling}" if g.coupled else "")
            + (f", through {len(norms[g.name])} layer norms" if norms[g.name] else "")
            for g in groups
        ),
    ]
    if excluded:
        lines.append(f"not pruned ({len(excluded)}):")
        lines += [f"  {e.name:<28} {e.units:>6} units  {e.reason}" for e in excluded]
    if blocks:
        lines.append(f"removable residual blocks ({len(blocks)}): " + ", ".join(b.name for b in blocks))
    if pruning and pruning.get("blocks"):
        lines.append("blocks removed by snp: " + ", ".join(pruning["blocks"]))
    if pruning:
        lines.append(
            "pruned by snp: "
            + ", ".join(
                f"{name} {len(kept)}/{pruning['units'].get(name, len(kept))}" for name, kept in pruning["kept"].items()
            )
        )
    return result, lines


def _check_exportable(arch: str) -> None:
    """An snp file needs an architecture it can rebuild; else say which outputs do without one."""
    try:
        io.check_exportable(arch)
    except SnpError as exc:
        raise SnpError(
            f"{exc}; write the pruned network as TorchScript (--out pruned.pt) or ONNX (--out pruned.onnx) "
            "instead, which load without its code"
        ) from None


def _writes() -> bool:
    """Whether this process writes the output files (always, except on torchrun's other processes)."""
    return distributed.position()[0] == 0


def _options(args: argparse.Namespace, ordering: str | None = None) -> AnalysisOptions:
    return AnalysisOptions(
        samples=args.samples,
        batch_size=args.batch_size,
        ordering=ordering or args.ordering or DEFAULT_ORDERING,
        max_positions=args.max_positions,
        seed=args.seed,
        coupled=not args.no_coupled,
    )


def cmd_analyze(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Run the analysis and save its statistics."""
    plumbing.check_output(args.out)
    prepared, device = plumbing.prepare(args)
    warnings = [*prepared.warnings, *prepared.notes]
    options = _options(args)

    def step(on: torch.device):
        return workflows.analyse(prepared, options, device=on, reporter=reporter, distributed=args.distributed)

    analysis, device = plumbing.with_cpu_fallback(args, device, step, warnings)
    singular = analysis.warnings()
    plumbing.say_singular(args, singular)
    warnings += singular
    path = (analysis.save(args.out) if _writes() else None) or Path(args.out)
    summary = analysis.summary()
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(path),
        **plumbing.prepared_fields(prepared),
        "samples": analysis.info.get("samples"),
        **summary,
        "warnings": warnings,
    }
    lines = [
        f"analysed {args.model} on {analysis.info.get('samples')} images of {args.data} "
        f"({'x'.join(map(str, prepared.input_shape))})",
        *plumbing.dense_line(prepared),
        *(
            f"  {g['name']:<28} {g['units']:>6} {'heads' if g['kind'] == 'heads' else 'units'}  "
            f"{g['samples']:>9} samples" + ("  (regularised)" if g["regularised"] else "")
            for g in summary["groups"]
        ),
        f"statistics written to {path}",
    ]
    return result, lines


def _parse_keep(items: Sequence[str], analysis) -> dict[str, int]:
    keep: dict[str, int] = {}
    excluded = {e.name: e.reason for e in analysis.excluded}
    for item in items:
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SnpError(f"--keep expects LAYER=COUNT, got '{item}'")
        try:
            keep[name] = int(count)
        except ValueError:
            raise SnpError(f"--keep {item}: COUNT must be an integer") from None
        if name in excluded:
            raise SnpError(f"--keep {item}: layer '{name}' cannot be pruned ({excluded[name]})")
        if name not in analysis.units:
            known = ", ".join(analysis.names[:8]) + (", …" if len(analysis.names) > 8 else "")
            raise SnpError(f"--keep {item}: '{name}' is not a prunable layer; prunable layers: {known}")
    return keep


# per-layer constraint flag: (argparse attribute, flag, GroupConstraint field)
CONSTRAINT_FLAGS = (
    ("lock", "--lock", "locked"),
    ("min_units", "--min-units", "min_units"),
    ("layer_round_to", "--layer-round-to", "round_to"),
)


def _constraint_rules(args: argparse.Namespace) -> dict[str, dict[str, tuple[str, int]]]:
    """``{layer: {field: (flag, N)}}`` from --lock, --min-units and --layer-round-to; their syntax is
    checked before any work (the layer names once the layers are known, see :func:`_constraints`)."""
    rules: dict[str, dict[str, tuple[str, int]]] = {}
    for attr, flag, key in CONSTRAINT_FLAGS:
        for item in getattr(args, attr, None) or []:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or not name:
                raise SnpError(f"{flag} expects LAYER=N, got '{item}'")
            try:
                number = int(value)
            except ValueError:
                raise SnpError(f"{flag} {item}: N must be a whole number, got '{value}'") from None
            if number < 1:
                raise SnpError(f"{flag} {item}: N must be at least 1")
            layer = rules.setdefault(name, {})
            if key in layer and layer[key][1] != number:
                raise SnpError(f"{flag} {name}= given twice ({layer[key][1]} and {number})")
            layer[key] = (flag, number)
    return rules


def _constraints(rules: dict[str, dict[str, tuple[str, int]]], analysis) -> Constraints:
    """The per-layer rules checked against the analysed layers; a bad one is a one-line error naming its flag."""
    excluded = {e.name: e.reason for e in analysis.excluded}
    for name, fields in rules.items():
        flag, number = next(iter(fields.values()))
        if name in excluded:
            raise SnpError(f"{flag} {name}={number}: layer '{name}' cannot be pruned ({excluded[name]})")
        if name not in analysis.units:
            known = ", ".join(analysis.names[:8]) + (", …" if len(analysis.names) > 8 else "")
            raise SnpError(f"{flag} {name}={number}: '{name}' is not a prunable layer; prunable layers: {known}")
    try:
        plain = {name: {key: number for key, (_flag, number) in fields.items()} for name, fields in rules.items()}
        return Constraints.from_dict(plain).check(analysis.units)
    except ValueError as exc:
        raise SnpError(str(exc)) from None


def _target(args: argparse.Namespace, analysis) -> PlanTarget:
    if args.keep:
        return PlanTarget.parse("keep", _parse_keep(args.keep, analysis))
    for kind, key in (("variance", "variance"), ("flops", "flops_reduction"), ("params", "params_reduction")):
        if getattr(args, key) is not None:
            return PlanTarget.parse(kind, getattr(args, key))
    raise SnpError("give one of --variance, --flops-reduction, --params-reduction or --keep")


def _compensation(args: argparse.Namespace) -> Compensation:
    chosen = {
        Compensation(args.compensation) if args.compensation else None,
        Compensation.NONE if args.no_compensation else None,
        Compensation.ONE_SHOT if args.one_shot else None,
    } - {None}
    if len(chosen) > 1:
        raise SnpError("give one of --compensation, --no-compensation or --one-shot")
    return chosen.pop() if chosen else Compensation.SEQUENTIAL


def cmd_prune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Analyse (or load statistics), plan, prune, evaluate and export."""
    if args.method != "snp" and args.ordering and args.ordering != args.method:
        raise SnpError(f"--method {args.method} is the '{args.method}' ordering; do not combine it with --ordering")
    ordering = (args.ordering or DEFAULT_ORDERING) if args.method == "snp" else args.method
    compensation = _compensation(args)  # conflicting flags are refused before any work
    _check_remove_blocks(args)
    rules = _constraint_rules(args)
    plumbing.check_output(args.out, args.torchscript, args.onnx)
    kind = workflows.output_kind(args.out)
    if args.onnx or kind == "onnx":
        require_onnx()  # before the analysis, not after it
    prepared, device = plumbing.prepare(args, require_labels=True)
    if kind == "snp":
        _check_exportable(prepared.model.arch)
    warnings = [*prepared.warnings, *prepared.notes]
    dense = prepared.model.model.eval()  # analyse and prune move it to the device they run on
    original, removed, chosen = prepared, None, None
    auto = args.remove_blocks == "auto"  # the target chooses how many blocks go
    if args.remove_blocks and not auto:

        def remove_on(on: torch.device):
            return workflows.remove_blocks(
                original,
                args.remove_blocks,
                compensation=compensation,
                batch_size=args.batch_size,
                samples=args.samples,
                device=on,
                reporter=Scaled(reporter, 0.0, 0.1),
                distributed=args.distributed,
            )

        removed, device = plumbing.with_cpu_fallback(args, device, remove_on, warnings)
        _check_not_removed(args, rules, removed.removed)
        prepared = removed.prepared  # the channels of what remains are analysed and pruned

    if args.stats:
        # ordered once, in the ordering asked for; under torchrun by process 0 alone, then broadcast
        analysis = io.load_analysis(
            args.stats, ordering=ordering, reporter=Scaled(reporter, 0.0, 0.2), share=args.distributed
        )
        io.check_analysis_fits(analysis, dense, prepared.input_shape)
    else:

        def analyse_on(on: torch.device):
            return workflows.analyse(
                prepared,
                _options(args, ordering),
                device=on,
                reporter=Scaled(reporter, 0.0, 0.2),
                distributed=args.distributed,
            )

        analysis, device = plumbing.with_cpu_fallback(args, device, analyse_on, warnings)
    singular = analysis.warnings()
    plumbing.say_singular(args, singular)
    warnings += singular
    target = _target(args, analysis)
    channels = workflows.channel_target(target, removed) if removed is not None else target
    constraints = _constraints(rules, analysis)
    if auto:

        def choose_on(on: torch.device):
            return workflows.choose_blocks(
                prepared,
                analysis,
                target,
                options=_options(args, ordering),
                compensation=compensation,
                constraints=constraints,
                round_to=args.round_to,
                allocation=args.allocation,
                batch_size=args.batch_size,
                samples=args.samples,
                device=on,
                reporter=Scaled(reporter, 0.2, 0.7),
                distributed=args.distributed,
            )

        chosen, device = plumbing.with_cpu_fallback(args, device, choose_on, warnings)
        plan, pruned = chosen.plan, chosen.pruned
    else:
        plan = workflows.make_plan(
            analysis, channels, round_to=args.round_to, allocation=args.allocation, constraints=constraints
        )

        def prune_on(on: torch.device):
            return workflows.prune(
                prepared,
                analysis,
                plan,
                compensation=compensation,
                batch_size=args.batch_size,
                samples=args.samples,
                device=on,
                reporter=Scaled(reporter, 0.2, 0.7),
                distributed=args.distributed,
            )

        pruned, device = plumbing.with_cpu_fallback(args, device, prune_on, warnings)
    if removed is not None:
        pruned = workflows.with_blocks(pruned, removed)
    prepared = original  # compared with, and exported as, the network with all its blocks
    comparison = workflows.compare(
        prepared, pruned, device=device, reporter=Scaled(reporter, 0.7, 0.9), distributed=args.distributed
    )
    metrics = comparison.metrics()
    settings = {
        "method": args.method,
        "ordering": analysis.ordering,
        "threshold": plan.threshold,
        "compensation": compensation.value,
        "allocation": args.allocation,
        "samples": analysis.info.get("samples"),
        "data": args.data,
        "target": {"keep": list(args.keep)} if args.keep else target.to_dict(),
        "round_to": args.round_to,
        **({"constraints": constraints.to_dict()} if constraints else {}),
        **({"remove_blocks": args.remove_blocks} if args.remove_blocks else {}),
        **({"removed_blocks": list(chosen.blocks)} if chosen is not None else {}),
        "base_model": args.model,
        "input_shape": list(prepared.input_shape),
    }
    reporter.update(0.9, "exporting")
    written = {kind: Path(args.out)}  # under torchrun, process 0 alone writes
    if _writes():
        written = workflows.export(
            prepared,
            pruned,
            args.out if kind == "snp" else None,
            settings=settings,
            metrics=metrics,
            torchscript=args.out if kind == "torchscript" else args.torchscript,
            onnx=args.out if kind == "onnx" else args.onnx,
            reporter=Scaled(reporter, 0.9, 1.0),
        )
    out = written.pop(kind)
    extra = {kind: str(path) for kind, path in written.items()}
    reporter.update(1.0, "done")
    gone = set(workflows.inner_groups(analysis, chosen.blocks)) if chosen else set()  # went with the blocks
    keep_counts = {name: plan.keep[name] for name in analysis.names if name not in gone}
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(out),
        **extra,
        **metrics,
        **plumbing.prepared_fields(prepared),
        "keep": keep_counts,
        "units": analysis.units,
        "ordering": analysis.ordering,
        "method": args.method,
        "threshold": plan.threshold,
        "compensation": compensation.value,
        "constraints": constraints.to_dict(),
        "fits": {name: dict(fit) for name, fit in pruned.record.fits.items()},
        "blocks": chosen.to_dict() if chosen else removed.to_dict() if removed else {"removed": []},
        "warnings": warnings,
    }
    lines = [
        f"pruned {args.model} ({analysis.ordering} ordering, {compensation.value} compensation, "
        f"input {'x'.join(map(str, prepared.input_shape))})",
        f"  parameters   {plumbing.change(comparison.params_before, comparison.params_after)}",
        f"  FLOPs (MACs) {plumbing.change(comparison.flops_before, comparison.flops_after)}",
        f"  top-1        {comparison.before.top1:.2f}% -> {comparison.after.top1:.2f}%   "
        f"(unpruned -> pruned, on {comparison.evaluation}, {comparison.after.samples} images)",
        f"  fidelity     {comparison.fidelity:.4f} relative logit error",
        *_block_lines(removed),
        *_chosen_lines(chosen),
        "  kept units:",
        *(
            f"    {name:<28} {k:>6} / {analysis.units[name]} {analysis.group(name).group.unit_word}"
            for name, k in keep_counts.items()
        ),
        f"written to {out}",
        *(f"{kind} written to {path}" for kind, path in extra.items()),
    ]
    return result, lines


def _check_remove_blocks(args: argparse.Namespace) -> None:
    """Refuse a bad --remove-blocks before any work."""
    if args.remove_blocks == "auto":
        if not (args.flops_reduction is not None or args.params_reduction is not None):
            raise SnpError("--remove-blocks auto needs a --flops-reduction or --params-reduction target")
    elif args.remove_blocks < 0:
        raise SnpError(f"--remove-blocks must be 0 or more, got {args.remove_blocks}")
    if args.remove_blocks and args.stats:
        raise SnpError(
            "--stats holds statistics of the network with all its blocks; do not combine it with --remove-blocks"
        )


def _check_not_removed(args: argparse.Namespace, rules: dict, blocks: Sequence[str]) -> None:
    """Refuse a --keep count or a per-layer rule for a layer that went with a removed block, in one line."""
    named = [(f"--keep {item}", item.partition("=")[0].strip()) for item in args.keep or []]
    named += [(f"{flag} {name}={number}", name) for name, fields in rules.items() for flag, number in fields.values()]
    for given, layer in named:
        block = next((b for b in blocks if layer == b or layer.startswith(b + ".")), None)
        if block is not None:
            raise SnpError(f"{given}: '{layer}' is inside the residual block {block}, which --remove-blocks removed")


def _block_lines(removed: workflows.BlocksRemoved | None) -> list[str]:
    if removed is None:
        return []
    how = f"{len(removed.removal.refitted)} later layers refitted" if removed.removal.compensated else "not compensated"
    scores = {s.name: s for s in removed.scores}
    return [
        f"  blocks       removed {len(removed.removed)} of {len(removed.scores)} ({how}):",
        *(
            f"    {name:<28} unexplained {scores[name].unexplained:.4f}  branch {scores[name].branch:.4f}"
            + _readers(scores[name])
            for name in removed.removed
        ),
    ]


def _readers(score) -> str:
    """The next-reader energy share of a block's score, when a layer reads its output directly."""
    return f"  readers {score.reader_energy:.4f}" if score.reader_energy is not None else ""


def _chosen_lines(chosen: workflows.BlockChoice | None) -> list[str]:
    if chosen is None:
        return []
    return [
        f"  blocks       the target chose {len(chosen.blocks)} of {len(chosen.scores)} "
        f"({', '.join(chosen.blocks) or 'none'}); tried, relative logit error on the calibration images:",
        *(f"    {', '.join(c['blocks']) or 'no blocks':<28} {c['error']:.4f}" for c in chosen.candidates),
    ]


def cmd_eval(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Top-1/top-5 on the evaluation data, plus parameters and FLOPs."""
    prepared, device = plumbing.prepare(args, require_labels=True)
    evaluation = prepared.evaluation
    found = workflows.score(
        prepared.model.model,
        evaluation,
        device=device,
        batch_size=args.batch_size,
        reporter=reporter,
        distributed=args.distributed,
    )
    params, flops = workflows.cost(prepared.model.model, prepared.input_shape, device)
    result = {
        "model": args.model,
        "data": args.data,
        "top1": found.top1,
        "top5": found.top5,
        "loss": found.loss,
        "samples": found.samples,
        "eval_data": prepared.evaluation_label,
        "params": params,
        "flops": flops,
        **plumbing.prepared_fields(prepared),
        "warnings": [*prepared.warnings, *prepared.notes],
    }
    lines = [
        f"{args.model} on {prepared.evaluation_label} ({found.samples} images, "
        f"{'x'.join(map(str, prepared.input_shape))})",
        f"  top-1        {found.top1:.2f}%",
        f"  top-5        {found.top5:.2f}%",
        f"  parameters   {params:,} ({plumbing.fmt_count(params)})",
        f"  FLOPs (MACs) {plumbing.fmt_count(flops)}",
    ]
    return result, lines


def cmd_finetune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Train on the train (or calibration) split and re-export, keeping the pruning record."""
    if args.lr <= 0:
        raise SnpError(f"--lr must be positive, got {args.lr}")
    plumbing.check_output(args.out)
    prepared, device = plumbing.prepare(args, require_labels=True)
    workflows.class_warnings(prepared.model, prepared.require_data(), require=True)
    io.check_exportable(prepared.model.arch)
    tuned = workflows.finetune(
        prepared,
        prepared.model.model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        seed=args.seed,
        device=device,
        reporter=Scaled(reporter, 0.0, 0.95),
    )
    earlier = prepared.model.metadata or {}
    settings = {
        **earlier.get("settings", {}),
        "finetune": {
            "data": args.data,
            "split": tuned.split,
            "epochs": args.epochs,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "batch_size": args.batch_size,
            "seed": args.seed,
        },
    }
    metrics = {
        **earlier.get("metrics", {}),
        "finetune_top1_before": tuned.before.top1,
        "finetune_top1_after": tuned.after.top1,
        "finetune_top5_after": tuned.after.top5,
        "finetune_eval_data": prepared.evaluation_label,
    }
    reporter.update(0.95, "exporting")
    out = workflows.export(prepared, tuned.model, args.out, settings=settings, metrics=metrics)["snp"]
    reporter.update(1.0, "done")
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(out),
        "split": tuned.split,
        "epochs": args.epochs,
        "top1_before": tuned.before.top1,
        "top1_after": tuned.after.top1,
        "top5_after": tuned.after.top5,
        "eval_data": prepared.evaluation_label,
        "history": list(tuned.history),
        **plumbing.prepared_fields(prepared),
        "warnings": [*prepared.warnings, *prepared.notes],
    }
    lines = [
        f"fine-tuned {args.model} for {args.epochs} epoch(s) on the {tuned.split} split of {args.data}",
        *(f"  epoch {row['epoch']:>3}  loss {row['loss']:.4f}  train {row['train_acc']:.2f}%" for row in tuned.history),
        f"  top-1        {tuned.before.top1:.2f}% -> {tuned.after.top1:.2f}%   (on {prepared.evaluation_label})",
        f"written to {out}",
    ]
    return result, lines
