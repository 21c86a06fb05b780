"""The ``snp`` command line: inspect, analyse, prune, evaluate and fine-tune vision networks.

Every subcommand prints readable text, or exactly one JSON object with ``--json``; progress goes
to stderr (``--quiet`` silences it). Problems the user can fix end in one ``snp: error: …`` line
and exit code 2, never a traceback; Ctrl-C ends with exit code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from snp_engine import __version__, workflows
from snp_engine.data import data_help
from snp_engine.errors import OutOfMemoryError, SnpError
from snp_engine.models import models_help
from snp_engine.progress import Cancelled, Reporter, Scaled, TextReporter
from snp_engine.subspace import DEFAULT_ORDERING, ORDERINGS
from snp_engine.workflows import ALLOCATIONS, AnalysisOptions, Compensation, PlanTarget, Prepared

EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_INTERNAL = 1
METHODS = ("snp", "l1", "random", "variance")

Result = tuple[dict[str, Any], list[str]]


# ----------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``snp`` command with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    reporter: Reporter = Reporter() if args.quiet else TextReporter(sys.stderr)
    stdout = sys.stdout
    try:
        # Libraries that print would corrupt the JSON on stdout, so their chatter goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            result, lines = args.handler(args, reporter)
    except (KeyboardInterrupt, Cancelled):
        return _fail(args, "cancelled", EXIT_CANCELLED, stdout, prefix="")
    except SnpError as exc:
        return _fail(args, str(exc), EXIT_ERROR, stdout)
    except OSError as exc:
        return _fail(args, _os_message(exc), EXIT_ERROR, stdout)
    except Exception as exc:
        if args.debug:
            raise
        message = f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        return _fail(args, message, EXIT_INTERNAL, stdout, prefix="")
    if args.json:
        stdout.write(json.dumps(result, indent=2, default=_jsonable) + "\n")
    else:
        stdout.write("\n".join(lines) + "\n")
    stdout.flush()
    return 0


def _fail(args: argparse.Namespace, message: str, code: int, stdout, prefix: str = "error: ") -> int:
    """One line on stderr (and, with --json, one JSON object on stdout) instead of a traceback."""
    line = " ".join(str(message).split())
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 78 + "\r")  # clear an unfinished progress line
    sys.stderr.write(f"snp: {prefix}{line}\n")
    if args.json:
        stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
    return code


def _os_message(exc: OSError) -> str:
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``snp`` with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="snp",
        description="Subspace Node Pruning: analyse, prune, evaluate and export vision networks.",
        epilog=f"Models: {models_help()}. Data: {data_help()}.",
    )
    parser.add_argument("--version", action="version", version=f"snp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress output on stderr")
    common.add_argument(
        "--device",
        default="auto",
        choices=("cpu", "cuda", "auto"),
        help="where to compute (default: auto = CUDA if available)",
    )
    common.add_argument(
        "--trust", action="store_true", help="allow loading pickled models (only for files from a trusted source)"
    )
    common.add_argument(
        "--input-size",
        type=_positive_int,
        metavar="S",
        help="square input size in pixels (default: the data's own size for models that take any size, "
        "else the model's)",
    )
    common.add_argument("--debug", action="store_true", help="show a traceback on internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser(
        "info",
        parents=[common],
        help="list a model's prunable layers, parameters and FLOPs",
        description="List prunable layer groups, excluded groups (with reasons), parameters and FLOPs of a model.",
    )
    info.add_argument("--model", required=True, metavar="M")
    info.set_defaults(handler=cmd_info)

    analyze = sub.add_parser(
        "analyze",
        parents=[common],
        help="measure activation statistics and save them",
        description="Stream calibration data through the model once and save the "
        "statistics, so that 'snp prune --stats' can skip the forward pass.",
    )
    _model_data_args(analyze)
    _analysis_args(analyze)
    analyze.add_argument("--out", required=True, metavar="FILE", help="statistics file to write")
    analyze.set_defaults(handler=cmd_analyze)

    prune = sub.add_parser(
        "prune",
        parents=[common],
        help="prune a model and export it",
        description="Prune a model to a variance threshold, a FLOPs/parameter reduction or "
        "explicit keep counts, compensate the next layers, evaluate and export it.",
    )
    _model_data_args(prune)
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("--variance", type=float, metavar="V", help="keep units explaining V (0 < V <= 1)")
    target.add_argument("--flops-reduction", type=float, metavar="R", help="remove the fraction R of the FLOPs")
    target.add_argument("--params-reduction", type=float, metavar="R", help="remove the fraction R of the parameters")
    target.add_argument(
        "--keep",
        action="append",
        metavar="LAYER=COUNT",
        help="keep COUNT units of LAYER (a producer module name); repeatable",
    )
    _analysis_args(prune)
    prune.add_argument(
        "--method",
        choices=METHODS,
        default="snp",
        help="snp (subspace ordering, see --ordering) or a baseline ordering: l1, random, variance",
    )
    prune.add_argument("--no-compensation", action="store_true", help="do not compensate the consumers")
    prune.add_argument(
        "--one-shot",
        action="store_true",
        help="compensate from the dense statistics only (faster, less exact than sequential)",
    )
    prune.add_argument("--round-to", type=_positive_int, default=1, metavar="N", help="round keep counts up to N")
    prune.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=ALLOCATIONS[0],
        help="how a FLOPs/parameter target is split across layers: greedy (default) or one global threshold",
    )
    prune.add_argument("--stats", metavar="FILE", help="statistics from 'snp analyze' instead of a new analysis")
    prune.add_argument(
        "--eval-data",
        metavar="D2",
        help="held-out data for the reported accuracies (default: the data's test split, or the calibration data)",
    )
    prune.add_argument("--out", required=True, metavar="FILE", help="pruned model (.safetensors) to write")
    prune.add_argument("--torchscript", metavar="FILE", help="also write a traced TorchScript file")
    prune.add_argument("--onnx", metavar="FILE", help="also write an ONNX file (needs: pip install onnx)")
    prune.set_defaults(handler=cmd_prune)

    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="top-1/top-5 accuracy, parameters and FLOPs",
        description="Evaluate a model on the test split of the data.",
    )
    _model_data_args(evaluate)
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, metavar="B")
    evaluate.add_argument(
        "--eval-data",
        metavar="D2",
        help="evaluate on this data instead (its test split, or all of it when it has none)",
    )
    evaluate.set_defaults(handler=cmd_eval)

    finetune = sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a (pruned) model and re-export it",
        description="Train a model on the data's train split (its calibration split "
        "when there is none) and export it, keeping its pruning record.",
    )
    _model_data_args(finetune)
    finetune.add_argument("--epochs", type=_positive_int, required=True, metavar="E")
    finetune.add_argument("--lr", type=float, required=True, metavar="LR", help="initial learning rate")
    finetune.add_argument("--batch-size", type=_positive_int, default=64, metavar="B")
    finetune.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    finetune.add_argument("--seed", type=int, default=0, help="seed for shuffling and dropout")
    finetune.add_argument(
        "--eval-data",
        metavar="D2",
        help="held-out data for the reported accuracies (default: the data's test split, or the calibration data)",
    )
    finetune.add_argument("--out", required=True, metavar="FILE", help="fine-tuned model (.safetensors) to write")
    finetune.set_defaults(handler=cmd_finetune)
    return parser


def _model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="M", help="model spec or snp export")
    parser.add_argument(
        "--data", required=True, metavar="D", help="calibration data, used whole: digits, an image folder or npz:PATH"
    )


def _analysis_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=_positive_int, metavar="N", help="calibration images to use (default: all)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, metavar="B")
    parser.add_argument(
        "--ordering",
        choices=list(ORDERINGS),
        metavar="NAME",
        help=f"unit ordering: {', '.join(ORDERINGS)} (default: {DEFAULT_ORDERING})",
    )
    parser.add_argument(
        "--max-positions",
        type=_positive_int,
        metavar="P",
        help="spatial positions sampled per image for conv layers (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for position sampling and random orderings")
    parser.add_argument(
        "--cpu-fallback",
        action="store_true",
        help="if the GPU runs out of memory, warn and redo the analysis/pruning on the CPU",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Shared plumbing


def _prepare(
    args: argparse.Namespace, *, data: bool = True, require_labels: bool = False
) -> tuple[Prepared, torch.device]:
    """Device first (a missing CUDA is reported before any slow loading), then model, data and checks."""
    from snp_engine.api import resolve_device

    device = resolve_device(args.device)
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
    )
    _say(args, prepared.notes, "note")
    _say(args, prepared.warnings, "warning")
    return prepared, device


def _prepared_fields(prepared: Prepared) -> dict[str, Any]:
    """What every data-reading command reports about the input it used and its checks."""
    dense = prepared.dense
    return {
        "input_shape": list(prepared.input_shape),
        "notes": list(prepared.notes),
        "dense_check": None
        if dense is None
        else {"top1": dense.top1, "samples": dense.samples, "chance": dense.chance, "near_chance": dense.near_chance},
    }


def _with_cpu_fallback(args: argparse.Namespace, device: torch.device, step, warnings: list[str]):
    """Run ``step(device)``; after an out-of-memory error, and only with --cpu-fallback, warn and run
    it again on the CPU. Returns the step's result and the device it finally ran on."""
    try:
        return step(device), device
    except OutOfMemoryError as exc:
        if not getattr(args, "cpu_fallback", False) or device.type == "cpu":
            raise
        message = f"{exc}; retrying on the CPU (--cpu-fallback)"
    warnings.append(message)
    _say(args, [message], "warning")
    cpu = torch.device("cpu")
    return step(cpu), cpu


def _check_output(*paths: str | None) -> None:
    """Refuse an output that cannot be written before the work, not after it."""
    from snp_engine import io

    for path in paths:
        if path is not None:
            io.check_writable(path)


def _say(args: argparse.Namespace, lines: Sequence[str], kind: str) -> None:
    if not args.quiet:
        for line in lines:
            sys.stderr.write(f"snp: {kind}: {line}\n")


def _fmt_count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _change(before: float, after: float) -> str:
    return f"{_fmt_count(before)} -> {_fmt_count(after)} ({(1 - after / before) * 100 if before else 0:.1f}% fewer)"


def _dense_line(prepared: Prepared) -> list[str]:
    dense = prepared.dense
    if dense is None:
        return []
    flag = "  << near chance: check preprocessing and --input-size" if dense.near_chance else ""
    return [f"  unpruned top-1 {dense.top1:.2f}% on the first {dense.samples} calibration images{flag}"]


# ----------------------------------------------------------------------------------------------
# Subcommands


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Prunable groups, excluded groups, parameters and FLOPs of a model."""
    from snp_engine.activations import model_dtype
    from snp_engine.groups import execution_order, find_groups

    prepared, device = _prepare(args, data=False)
    loaded, shape = prepared.model, prepared.input_shape
    model = loaded.model.to(device).eval()
    example = torch.zeros((1, *shape), device=device, dtype=model_dtype(model))
    reporter.update(0.0, "finding prunable layers")
    workflows.check_runs(model, shape)
    groups, excluded = find_groups(model, example)
    groups = execution_order(model, groups, example)
    params, flops = workflows.cost(model, shape, device)
    reporter.update(1.0, "done")
    pruning = loaded.pruning.to_dict() if loaded.pruning is not None else None
    warnings = [] if groups or excluded else [workflows.no_groups_reason(model)]
    _say(args, warnings, "warning")
    result = {
        "model": args.model,
        "arch": loaded.arch,
        "source": loaded.source,
        "num_classes": loaded.num_classes,
        "input_shape": list(shape),
        "params": params,
        "flops": flops,
        "groups": [{"name": g.name, "consumer": g.consumer, "units": g.units, "layout": g.layout} for g in groups],
        "excluded": [{"name": e.name, "units": e.units, "reason": e.reason} for e in excluded],
        "warnings": warnings,
    }
    if pruning:
        result["pruning"] = {
            "kept": {name: len(kept) for name, kept in pruning["kept"].items()},
            "units": pruning["units"],
            "ordering": pruning.get("ordering"),
            "compensation": pruning.get("compensation"),
        }
    lines = [
        f"model        {args.model} ({loaded.arch}, {loaded.source})",
        f"input        {'x'.join(map(str, shape))}, {loaded.num_classes} classes",
        f"parameters   {params:,} ({_fmt_count(params)})",
        f"FLOPs (MACs) {_fmt_count(flops)}",
        f"prunable layer groups ({len(groups)}):",
        *(f"  {g.name:<28} -> {g.consumer:<28} {g.units:>6} units" for g in groups),
    ]
    if excluded:
        lines.append(f"not pruned ({len(excluded)}):")
        lines += [f"  {e.name:<28} {e.units:>6} units  {e.reason}" for e in excluded]
    if pruning:
        lines.append(
            "pruned by snp: "
            + ", ".join(
                f"{name} {len(kept)}/{pruning['units'].get(name, len(kept))}" for name, kept in pruning["kept"].items()
            )
        )
    return result, lines


def _options(args: argparse.Namespace, ordering: str | None = None) -> AnalysisOptions:
    return AnalysisOptions(
        samples=args.samples,
        batch_size=args.batch_size,
        ordering=ordering or args.ordering or DEFAULT_ORDERING,
        max_positions=args.max_positions,
        seed=args.seed,
    )


def cmd_analyze(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Run the analysis and save its statistics."""
    _check_output(args.out)
    prepared, device = _prepare(args)
    warnings = list(prepared.warnings)
    options = _options(args)

    def step(on: torch.device):
        return workflows.analyse(prepared, options, device=on, reporter=reporter)

    analysis, device = _with_cpu_fallback(args, device, step, warnings)
    singular = analysis.warnings()
    _say(args, singular, "warning")
    warnings += singular
    path = analysis.save(args.out) or Path(args.out)
    summary = analysis.summary()
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(path),
        **_prepared_fields(prepared),
        "samples": analysis.info.get("samples"),
        **summary,
        "warnings": warnings,
    }
    lines = [
        f"analysed {args.model} on {analysis.info.get('samples')} images of {args.data} "
        f"({'x'.join(map(str, prepared.input_shape))})",
        *_dense_line(prepared),
        *(
            f"  {g['name']:<28} {g['units']:>6} units  {g['samples']:>9} samples"
            + ("  (regularised)" if g["regularised"] else "")
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


def _target(args: argparse.Namespace, analysis) -> PlanTarget:
    if args.keep:
        return PlanTarget.parse("keep", _parse_keep(args.keep, analysis))
    for kind, key in (("variance", "variance"), ("flops", "flops_reduction"), ("params", "params_reduction")):
        if getattr(args, key) is not None:
            return PlanTarget.parse(kind, getattr(args, key))
    raise SnpError("give one of --variance, --flops-reduction, --params-reduction or --keep")


def _compensation(args: argparse.Namespace) -> Compensation:
    if args.no_compensation:
        return Compensation.NONE
    return Compensation.ONE_SHOT if args.one_shot else Compensation.SEQUENTIAL


def cmd_prune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Analyse (or load statistics), plan, prune, evaluate and export."""
    from snp_engine import io

    if args.method != "snp" and args.ordering and args.ordering != args.method:
        raise SnpError(f"--method {args.method} is the '{args.method}' ordering; do not combine it with --ordering")
    ordering = (args.ordering or DEFAULT_ORDERING) if args.method == "snp" else args.method
    _check_output(args.out, args.torchscript, args.onnx)
    prepared, device = _prepare(args, require_labels=True)
    io.check_exportable(prepared.model.arch)
    warnings = list(prepared.warnings)
    dense = prepared.model.model.eval()  # analyse and prune move it to the device they run on

    if args.stats:
        analysis = io.load_analysis(args.stats, reporter=Scaled(reporter, 0.0, 0.1))
        io.check_analysis_fits(analysis, dense, prepared.input_shape)
        if analysis.ordering != ordering:
            analysis = analysis.reorder(ordering, reporter=Scaled(reporter, 0.1, 0.2))
    else:

        def analyse_on(on: torch.device):
            return workflows.analyse(prepared, _options(args, ordering), device=on, reporter=Scaled(reporter, 0.0, 0.2))

        analysis, device = _with_cpu_fallback(args, device, analyse_on, warnings)
    singular = analysis.warnings()
    _say(args, singular, "warning")
    warnings += singular
    target = _target(args, analysis)
    plan = workflows.make_plan(analysis, target, round_to=args.round_to, allocation=args.allocation)
    compensation = _compensation(args)

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
        )

    pruned, device = _with_cpu_fallback(args, device, prune_on, warnings)
    comparison = workflows.compare(prepared, pruned, device=device, reporter=Scaled(reporter, 0.7, 0.9))
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
        "base_model": args.model,
        "input_shape": list(prepared.input_shape),
    }
    reporter.update(0.9, "exporting")
    written = workflows.export(
        prepared,
        pruned,
        args.out,
        settings=settings,
        metrics=metrics,
        torchscript=args.torchscript,
        onnx=args.onnx,
        reporter=Scaled(reporter, 0.9, 1.0),
    )
    out = written.pop("snp")
    extra = {kind: str(path) for kind, path in written.items()}
    reporter.update(1.0, "done")
    keep_counts = {name: plan.keep[name] for name in analysis.names}
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(out),
        **extra,
        **metrics,
        **_prepared_fields(prepared),
        "keep": keep_counts,
        "units": analysis.units,
        "ordering": analysis.ordering,
        "method": args.method,
        "threshold": plan.threshold,
        "compensation": compensation.value,
        "warnings": warnings,
    }
    lines = [
        f"pruned {args.model} ({analysis.ordering} ordering, {compensation.value} compensation, "
        f"input {'x'.join(map(str, prepared.input_shape))})",
        f"  parameters   {_change(comparison.params_before, comparison.params_after)}",
        f"  FLOPs (MACs) {_change(comparison.flops_before, comparison.flops_after)}",
        f"  top-1        {comparison.before.top1:.2f}% -> {comparison.after.top1:.2f}%   "
        f"(unpruned -> pruned, on {comparison.evaluation}, {comparison.after.samples} images)",
        f"  fidelity     {comparison.fidelity:.4f} relative logit error",
        "  kept units:",
        *(f"    {name:<28} {k:>6} / {analysis.units[name]}" for name, k in keep_counts.items()),
        f"written to {out}",
        *(f"{kind} written to {path}" for kind, path in extra.items()),
    ]
    return result, lines


def cmd_eval(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Top-1/top-5 on the evaluation data, plus parameters and FLOPs."""
    prepared, device = _prepare(args, require_labels=True)
    evaluation = prepared.evaluation
    found = workflows.score(
        prepared.model.model, evaluation, device=device, batch_size=args.batch_size, reporter=reporter
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
        **_prepared_fields(prepared),
        "warnings": list(prepared.warnings),
    }
    lines = [
        f"{args.model} on {prepared.evaluation_label} ({found.samples} images, "
        f"{'x'.join(map(str, prepared.input_shape))})",
        f"  top-1        {found.top1:.2f}%",
        f"  top-5        {found.top5:.2f}%",
        f"  parameters   {params:,} ({_fmt_count(params)})",
        f"  FLOPs (MACs) {_fmt_count(flops)}",
    ]
    return result, lines


def cmd_finetune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Train on the train (or calibration) split and re-export, keeping the pruning record."""
    from snp_engine import io

    if args.lr <= 0:
        raise SnpError(f"--lr must be positive, got {args.lr}")
    _check_output(args.out)
    prepared, device = _prepare(args, require_labels=True)
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
        **_prepared_fields(prepared),
        "warnings": list(prepared.warnings),
    }
    lines = [
        f"fine-tuned {args.model} for {args.epochs} epoch(s) on the {tuned.split} split of {args.data}",
        *(f"  epoch {row['epoch']:>3}  loss {row['loss']:.4f}  train {row['train_acc']:.2f}%" for row in tuned.history),
        f"  top-1        {tuned.before.top1:.2f}% -> {tuned.after.top1:.2f}%   (on {prepared.evaluation_label})",
        f"written to {out}",
    ]
    return result, lines


if __name__ == "__main__":
    raise SystemExit(main())
