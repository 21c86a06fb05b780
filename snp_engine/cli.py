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

from snp_engine import __version__
from snp_engine.errors import SnpError
from snp_engine.progress import Cancelled, Reporter, TextReporter

EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_INTERNAL = 1
# torchvision classifiers default to 224x224; the 8x8 digits are upsampled to this instead.
DIGITS_TORCHVISION_SIZE = 32
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
        epilog="Models: demo-vgg, demo-resnet, torchvision:ARCH[@WEIGHTS], or a file written by snp. "
        "Data: digits, an ImageFolder folder, or npz:PATH.",
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
        help="square input size in pixels (default: the model's; 32 for torchvision models on digits)",
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
    prune.add_argument("--stats", metavar="FILE", help="statistics from 'snp analyze' instead of a new analysis")
    prune.add_argument("--eval-data", metavar="D2", help="evaluate on this data's test split instead")
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
    finetune.add_argument("--eval-data", metavar="D2", help="evaluate on this data's test split instead")
    finetune.add_argument("--out", required=True, metavar="FILE", help="fine-tuned model (.safetensors) to write")
    finetune.set_defaults(handler=cmd_finetune)
    return parser


def _model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="M", help="model spec or snp export")
    parser.add_argument("--data", required=True, metavar="D", help="digits, an ImageFolder folder or npz:PATH")


def _analysis_args(parser: argparse.ArgumentParser) -> None:
    from snp_engine.subspace import DEFAULT_ORDERING, ORDERINGS

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


def _setup(args: argparse.Namespace):
    """Resolve the device first (a missing CUDA is reported before any slow loading), then the model."""
    from snp_engine.api import resolve_device
    from snp_engine.models import load_model

    device = resolve_device(args.device)
    torch.manual_seed(getattr(args, "seed", 0))
    loaded = load_model(args.model, trust=args.trust)
    return loaded, device


def _input_shape(loaded, data_spec: str | None, input_size: int | None) -> tuple[int, int, int]:
    """The (C, H, W) to feed the model: ``--input-size`` wins, then the model's own size.

    torchvision classifiers report 224x224 but accept any size; for the 8x8 digits that would mean
    a 28-fold upsampling, so they get 32x32 instead. Fixed-size models (ViT) keep their size.
    """
    channels, height, width = loaded.input_shape
    fixed = isinstance(getattr(loaded.model, "image_size", None), int)
    if input_size is not None and fixed and input_size != height:
        raise SnpError(
            f"{loaded.arch} only takes {height}x{width} inputs (a fixed input size); "
            f"--input-size {input_size} cannot be used with it"
        )
    if input_size is not None:
        return channels, input_size, input_size
    if data_spec is not None and data_spec.strip().lower() == "digits" and (height, width) == (224, 224) and not fixed:
        return channels, DIGITS_TORCHVISION_SIZE, DIGITS_TORCHVISION_SIZE
    return channels, height, width


def _load_data(spec: str, shape: tuple[int, int, int], seed: int = 0):
    from snp_engine.data import adapt_to_model, load_data

    channels, height, width = shape
    bundle = load_data(spec, input_size=height, channels=channels, seed=seed)
    return adapt_to_model(bundle, channels, (height, width))


def _class_warning(loaded, bundle) -> list[str]:
    """For the analysis, labels do not matter: a class mismatch is only worth a warning."""
    warnings = _data_warnings(bundle)
    if bundle.num_classes is not None and bundle.num_classes > loaded.num_classes:
        warnings.append(
            f"the data has {bundle.num_classes} classes but the model predicts {loaded.num_classes}; "
            "accuracies will be meaningless"
        )
    return warnings


def _check_classes(loaded, bundle, spec: str) -> list[str]:
    """Evaluation and training need every label to be a class of the model; refuse early otherwise
    (before a long analysis), and return the data's warnings."""
    if bundle.num_classes is not None and bundle.num_classes > loaded.num_classes:
        raise SnpError(
            f"the data '{spec}' has labels 0..{bundle.num_classes - 1} but the model predicts "
            f"{loaded.num_classes} classes (labels 0..{loaded.num_classes - 1})"
        )
    return _data_warnings(bundle)


def _data_warnings(bundle) -> list[str]:
    if bundle.skipped:
        return [f"skipped {bundle.skipped} unreadable image file(s) in {bundle.name}"]
    return []


def _with_cpu_fallback(args: argparse.Namespace, device: torch.device, step, warnings: list[str]):
    """Run ``step(device)``; after an out-of-memory error, and only with --cpu-fallback, warn and run
    it again on the CPU. Returns the step's result and the device it finally ran on."""
    from snp_engine.errors import OutOfMemoryError

    try:
        return step(device), device
    except OutOfMemoryError as exc:
        if not getattr(args, "cpu_fallback", False) or device.type == "cpu":
            raise
        message = f"{exc}; retrying on the CPU (--cpu-fallback)"
    warnings.append(message)
    _warn(args, [message])
    cpu = torch.device("cpu")
    return step(cpu), cpu


def _check_output(*paths: str | None) -> None:
    """Refuse an output that cannot be written before the work, not after it."""
    from snp_engine import io

    for path in paths:
        if path is not None:
            io.check_writable(path)


def _check_runs(model: torch.nn.Module, shape: Sequence[int], device: torch.device) -> None:
    """One example through the model, so a wrong input size is one clear error."""
    from snp_engine.activations import model_dtype
    from snp_engine.api import _check_forward

    _check_forward(model, torch.zeros((1, *shape), device=device, dtype=model_dtype(model)))


def _warn(args: argparse.Namespace, warnings: list[str]) -> None:
    if not args.quiet:
        for warning in warnings:
            sys.stderr.write(f"snp: warning: {warning}\n")


def _count(model: torch.nn.Module, shape: Sequence[int], device: torch.device) -> tuple[int, float]:
    from snp_engine.activations import model_dtype
    from snp_engine.costs import count

    return count(model, torch.zeros((1, *shape), device=device, dtype=model_dtype(model)))


def _fmt_count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _change(before: float, after: float) -> str:
    return f"{_fmt_count(before)} -> {_fmt_count(after)} ({(1 - after / before) * 100 if before else 0:.1f}% fewer)"


# ----------------------------------------------------------------------------------------------
# Subcommands


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Prunable groups, excluded groups, parameters and FLOPs of a model."""
    from snp_engine.groups import execution_order, find_groups

    loaded, device = _setup(args)
    shape = _input_shape(loaded, None, args.input_size)
    model = loaded.model.to(device).eval()
    from snp_engine.activations import model_dtype

    example = torch.zeros((1, *shape), device=device, dtype=model_dtype(model))
    reporter.update(0.0, "finding prunable layers")
    _check_runs(model, shape, device)
    groups, excluded = find_groups(model, example)
    groups = execution_order(model, groups, example)
    params, flops = _count(model, shape, device)
    reporter.update(1.0, "done")
    pruning = getattr(model, "snp_pruning", None)
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


def cmd_analyze(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Run the analysis and save its statistics."""
    from snp_engine.api import analyze
    from snp_engine.subspace import DEFAULT_ORDERING

    _check_output(args.out)
    loaded, device = _setup(args)
    shape = _input_shape(loaded, args.data, args.input_size)
    data = _load_data(args.data, shape, args.seed)
    warnings = _class_warning(loaded, data)
    _warn(args, warnings)

    def step(on: torch.device):
        return analyze(
            loaded.model,
            data,
            samples=args.samples,
            batch_size=args.batch_size,
            device=on,
            ordering=args.ordering or DEFAULT_ORDERING,
            max_positions=args.max_positions,
            seed=args.seed,
            reporter=reporter,
            info={"model": args.model, "data": args.data},
        )

    analysis, device = _with_cpu_fallback(args, device, step, warnings)
    singular = analysis.warnings()
    _warn(args, singular)
    warnings += singular
    path = analysis.save(args.out) or Path(args.out)
    summary = analysis.summary()
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(path),
        "input_shape": list(shape),
        "samples": analysis.info.get("samples"),
        **summary,
        "warnings": warnings,
    }
    lines = [
        f"analysed {args.model} on {analysis.info.get('samples')} images of {args.data} ({'x'.join(map(str, shape))})",
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


def cmd_prune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Analyse (or load statistics), plan, prune, evaluate and export."""
    from snp_engine import api, io
    from snp_engine.progress import Scaled
    from snp_engine.subspace import DEFAULT_ORDERING

    if args.method != "snp" and args.ordering and args.ordering != args.method:
        raise SnpError(f"--method {args.method} is the '{args.method}' ordering; do not combine it with --ordering")
    ordering = (args.ordering or DEFAULT_ORDERING) if args.method == "snp" else args.method
    _check_output(args.out, args.torchscript, args.onnx)
    loaded, device = _setup(args)
    io.check_exportable(loaded.arch)
    shape = _input_shape(loaded, args.data, args.input_size)
    data = _load_data(args.data, shape, args.seed)
    eval_data = _load_data(args.eval_data, shape, args.seed) if args.eval_data else data
    warnings = _check_classes(loaded, eval_data, args.eval_data or args.data)
    if args.eval_data:
        warnings += _data_warnings(data)
    _warn(args, warnings)
    dense = loaded.model.eval()  # analyze and prune move it to the device they run on

    if args.stats:
        analysis = io.load_analysis(args.stats, reporter=Scaled(reporter, 0.0, 0.1))
        io.check_analysis_fits(analysis, dense, shape)
        if analysis.ordering != ordering:
            analysis = analysis.reorder(ordering, reporter=Scaled(reporter, 0.1, 0.2))
    else:

        def analyse_on(on: torch.device):
            return api.analyze(
                dense,
                data,
                samples=args.samples,
                batch_size=args.batch_size,
                device=on,
                ordering=ordering,
                max_positions=args.max_positions,
                seed=args.seed,
                reporter=Scaled(reporter, 0.0, 0.2),
                info={"model": args.model, "data": args.data},
            )

        analysis, device = _with_cpu_fallback(args, device, analyse_on, warnings)
    singular = analysis.warnings()
    _warn(args, singular)
    warnings += singular
    if args.keep:
        plan = analysis.plan(keep=_parse_keep(args.keep, analysis), round_to=args.round_to)
    else:
        plan = analysis.plan(
            variance=args.variance,
            flops_reduction=args.flops_reduction,
            params_reduction=args.params_reduction,
            round_to=args.round_to,
        )
    compensate = not args.no_compensation
    sequential = compensate and not args.one_shot

    def prune_on(on: torch.device):
        return api.prune(
            dense,
            analysis,
            plan,
            data=data if sequential else None,
            compensate=compensate,
            sequential=sequential,
            batch_size=args.batch_size,
            samples=args.samples,
            device=on,
            reporter=Scaled(reporter, 0.2, 0.7),
        )

    pruned, device = _with_cpu_fallback(args, device, prune_on, warnings)
    before = api.evaluate(dense, eval_data, device=device, reporter=Scaled(reporter, 0.7, 0.8))
    after = api.evaluate(pruned, eval_data, device=device, reporter=Scaled(reporter, 0.8, 0.9))
    fidelity = api.fidelity(dense, pruned, eval_data, device=device)
    params_before, flops_before = _count(dense, shape, device)
    params_after, flops_after = _count(pruned, shape, device)
    compensation = pruned.snp_pruning["compensation"]
    metrics = {
        "params_before": params_before,
        "params_after": params_after,
        "flops_before": flops_before,
        "flops_after": flops_after,
        "top1_before": before["top1"],
        "top1_after": after["top1"],
        "top5_before": before["top5"],
        "top5_after": after["top5"],
        "fidelity": fidelity,
        "eval_data": args.eval_data or args.data,
    }
    settings = {
        "method": args.method,
        "ordering": analysis.ordering,
        "threshold": plan.threshold,
        "compensation": compensation,
        "samples": analysis.info.get("samples"),
        "data": args.data,
        "target": _target(args),
        "round_to": args.round_to,
        "base_model": args.model,
    }
    reporter.update(0.9, "exporting")
    cpu_model = pruned.cpu()
    out = io.export_model(
        cpu_model,
        args.out,
        arch=loaded.arch,
        num_classes=loaded.num_classes,
        input_shape=shape,
        settings=settings,
        metrics=metrics,
        reporter=Scaled(reporter, 0.9, 1.0),
    )
    extra = {}
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    if args.torchscript:
        extra["torchscript"] = str(io.export_torchscript(cpu_model, args.torchscript, example))
    if args.onnx:
        extra["onnx"] = str(io.export_onnx(cpu_model, args.onnx, example))
    reporter.update(1.0, "done")
    keep_counts = {name: plan.keep[name] for name in analysis.names}
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(out),
        **extra,
        **metrics,
        "keep": keep_counts,
        "units": analysis.units,
        "ordering": analysis.ordering,
        "method": args.method,
        "threshold": plan.threshold,
        "compensation": compensation,
        "input_shape": list(shape),
        "warnings": warnings,
    }
    lines = [
        f"pruned {args.model} ({analysis.ordering} ordering, {compensation} compensation)",
        f"  parameters   {_change(params_before, params_after)}",
        f"  FLOPs (MACs) {_change(flops_before, flops_after)}",
        f"  top-1        {before['top1']:.2f}% -> {after['top1']:.2f}%   (on {args.eval_data or args.data})",
        f"  fidelity     {fidelity:.4f} relative logit error",
        "  kept units:",
        *(f"    {name:<28} {k:>6} / {analysis.units[name]}" for name, k in keep_counts.items()),
        f"written to {out}",
        *(f"{kind} written to {path}" for kind, path in extra.items()),
    ]
    return result, lines


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.keep:
        return {"keep": list(args.keep)}
    for key in ("variance", "flops_reduction", "params_reduction"):
        if getattr(args, key) is not None:
            return {key: getattr(args, key)}
    return {}


def cmd_eval(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Top-1/top-5 on the test split, plus parameters and FLOPs."""
    from snp_engine.api import evaluate

    loaded, device = _setup(args)
    shape = _input_shape(loaded, args.data, args.input_size)
    data = _load_data(args.data, shape)
    warnings = _check_classes(loaded, data, args.data)
    _warn(args, warnings)
    scores = evaluate(loaded.model, data, batch_size=args.batch_size, device=device, reporter=reporter)
    params, flops = _count(loaded.model, shape, device)
    result = {
        "model": args.model,
        "data": args.data,
        "top1": scores["top1"],
        "top5": scores["top5"],
        "samples": len(data.test),
        "params": params,
        "flops": flops,
        "input_shape": list(shape),
        "warnings": warnings,
    }
    lines = [
        f"{args.model} on {args.data} ({len(data.test)} test images, {'x'.join(map(str, shape))})",
        f"  top-1        {scores['top1']:.2f}%",
        f"  top-5        {scores['top5']:.2f}%",
        f"  parameters   {params:,} ({_fmt_count(params)})",
        f"  FLOPs (MACs) {_fmt_count(flops)}",
    ]
    return result, lines


def cmd_finetune(args: argparse.Namespace, reporter: Reporter) -> Result:
    """Train on the train (or calibration) split and re-export, keeping the pruning record."""
    from snp_engine import io
    from snp_engine.api import evaluate
    from snp_engine.data import make_loader
    from snp_engine.progress import Scaled
    from snp_engine.training import train

    if args.lr <= 0:
        raise SnpError(f"--lr must be positive, got {args.lr}")
    _check_output(args.out)
    loaded, device = _setup(args)
    io.check_exportable(loaded.arch)
    shape = _input_shape(loaded, args.data, args.input_size)
    data = _load_data(args.data, shape, args.seed)
    eval_data = _load_data(args.eval_data, shape, args.seed) if args.eval_data else data
    warnings = _check_classes(loaded, data, args.data)
    if args.eval_data:
        warnings += _check_classes(loaded, eval_data, args.eval_data)
    _warn(args, warnings)
    split = "train" if data.train is not None else "calibration"
    loader = make_loader(
        data.train if data.train is not None else data.calibration, args.batch_size, shuffle=True, seed=args.seed
    )
    model = loaded.model.to(device)
    before = evaluate(model, eval_data, device=device)
    history = train(
        model,
        loader,
        epochs=args.epochs,
        lr=args.lr,
        device=device,
        optimizer=args.optimizer,
        reporter=Scaled(reporter, 0.0, 0.95),
    )
    after = evaluate(model, eval_data, device=device)
    earlier = getattr(model, "snp_metadata", None) or {}
    settings = {
        **earlier.get("settings", {}),
        "finetune": {
            "data": args.data,
            "split": split,
            "epochs": args.epochs,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "batch_size": args.batch_size,
            "seed": args.seed,
        },
    }
    metrics = {
        **earlier.get("metrics", {}),
        "finetune_top1_before": before["top1"],
        "finetune_top1_after": after["top1"],
        "finetune_top5_after": after["top5"],
        "finetune_eval_data": args.eval_data or args.data,
    }
    reporter.update(0.95, "exporting")
    out = io.export_model(
        model.cpu(),
        args.out,
        arch=loaded.arch,
        num_classes=loaded.num_classes,
        input_shape=shape,
        settings=settings,
        metrics=metrics,
    )
    reporter.update(1.0, "done")
    result = {
        "model": args.model,
        "data": args.data,
        "out": str(out),
        "split": split,
        "epochs": args.epochs,
        "top1_before": before["top1"],
        "top1_after": after["top1"],
        "top5_after": after["top5"],
        "history": history,
        "warnings": warnings,
    }
    lines = [
        f"fine-tuned {args.model} for {args.epochs} epoch(s) on the {split} split of {args.data}",
        *(f"  epoch {row['epoch']:>3}  loss {row['loss']:.4f}  train {row['train_acc']:.2f}%" for row in history),
        f"  top-1        {before['top1']:.2f}% -> {after['top1']:.2f}%   (on {args.eval_data or args.data})",
        f"written to {out}",
    ]
    return result, lines


if __name__ == "__main__":
    raise SystemExit(main())
