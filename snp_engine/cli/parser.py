"""The argument parser of ``snp``: subcommands, and choices generated from the engine's registries."""

from __future__ import annotations

import argparse

from snp_engine.cli import commands
from snp_engine.data import data_help
from snp_engine.models import models_help
from snp_engine.subspace import DEFAULT_ORDERING, ORDERINGS
from snp_engine.version import __version__
from snp_engine.workflows import ALLOCATIONS, COMPENSATION_HELP, Compensation

METHODS = ("snp", "l1", "random", "variance")


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
    common.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="nothing on stderr but errors: no progress, notes or warnings (--json still lists the notes and warnings)",
    )
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
    info.set_defaults(handler=commands.cmd_info)

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
    analyze.set_defaults(handler=commands.cmd_analyze)

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
    prune.add_argument(
        "--compensation",
        choices=[c.value for c in Compensation],
        help="how the next layers are repaired: "
        + "; ".join(f"{c.value}: {tip}" for c, (_label, tip) in COMPENSATION_HELP.items())
        + " (default: sequential)",
    )
    prune.add_argument("--no-compensation", action="store_true", help="the same as --compensation none")
    prune.add_argument("--one-shot", action="store_true", help="the same as --compensation one-shot")
    prune.add_argument(
        "--round-to",
        type=_positive_int,
        default=1,
        metavar="N",
        help="every layer keeps a multiple of N units (or all of them); 8 or 16 gave the fastest pruned "
        "networks on CPU (docs/benchmarks.md, section 3)",
    )
    layers = prune.add_argument_group(
        "per-layer constraints",
        "rules for single layers (LAYER is a prunable layer's name, see 'snp info'); repeatable",
    )
    layers.add_argument(
        "--lock",
        action="append",
        metavar="LAYER=K",
        help="LAYER keeps exactly K units whatever the target says (the target is met by the other layers)",
    )
    layers.add_argument("--min-units", action="append", metavar="LAYER=N", help="LAYER keeps at least N units")
    layers.add_argument(
        "--layer-round-to",
        action="append",
        metavar="LAYER=N",
        help="LAYER keeps a multiple of N units (or all of them); overrides --round-to for that layer",
    )
    prune.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=ALLOCATIONS[0],
        help="how a FLOPs/parameter target is split across layers: greedy (default) or one global threshold",
    )
    prune.add_argument(
        "--remove-blocks",
        type=_block_count,
        default=0,
        metavar="N|auto",
        help="first remove the N residual blocks that add least beyond a linear map of their input, refitting "
        "the later layers (unless --no-compensation), then prune channels of what remains; a FLOPs/parameter "
        "reduction counts from the network with its blocks. 'auto' lets a FLOPs/parameter target choose: 0, 1, "
        "2, ... of the least important blocks are tried (each a removal, analysis and prune) and the plan whose "
        "logits are closest to the dense network's on the calibration images is kept (default: 0)",
    )
    prune.add_argument("--stats", metavar="FILE", help="statistics from 'snp analyze' instead of a new analysis")
    prune.add_argument(
        "--eval-data",
        metavar="D2",
        help="held-out data for the reported accuracies (default: the data's test split, or the calibration data)",
    )
    prune.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="pruned model to write: .safetensors (snp's file: rebuilds torchvision, timm and demo architectures "
        "and records the pruning), .pt/.ts (TorchScript) or .onnx; a network of one's own class needs .pt or .onnx",
    )
    prune.add_argument("--torchscript", metavar="FILE", help="also write a traced TorchScript file")
    prune.add_argument(
        "--onnx", metavar="FILE", help="also write an ONNX file, checked in onnxruntime (pip install onnx onnxruntime)"
    )
    prune.set_defaults(handler=commands.cmd_prune)

    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="top-1/top-5 accuracy, parameters and FLOPs",
        description="Evaluate a model on the test split of the data.",
    )
    _model_data_args(evaluate)
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, metavar="B")
    _distributed_arg(evaluate)
    evaluate.add_argument(
        "--eval-data",
        metavar="D2",
        help="evaluate on this data instead (its test split, or all of it when it has none)",
    )
    evaluate.set_defaults(handler=commands.cmd_eval)

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
    finetune.set_defaults(handler=commands.cmd_finetune)
    return parser


def _model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="M", help="model spec or snp export")
    parser.add_argument(
        "--data",
        required=True,
        metavar="D",
        help="calibration data: digits, an image folder or npz:PATH (a plain folder or x/y npz is used whole)",
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
        "--no-coupled",
        action="store_true",
        help="leave coupled channels alone: residual streams, gated channels and channels read by several layers "
        "(default: prune them too, compensated at every layer that reads them)",
    )
    _distributed_arg(parser)
    parser.add_argument(
        "--cpu-fallback",
        action="store_true",
        help="if the GPU runs out of memory, warn and redo the analysis/pruning on the CPU",
    )


def _distributed_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="run as one of torchrun's processes: each reads its shard of the calibration images and the "
        "statistics are summed over all processes (gloo on CPU, NCCL on GPU); process 0 writes and prints",
    )


def _block_count(text: str) -> int | str:
    """--remove-blocks: a count (checked by the command, for a one-line error) or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks or 'auto', got '{text}'") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
