"""Latency of pruned networks as deployed: torch (NCHW and channels_last) and onnxruntime, by round_to.

Each network is pruned physically to 50 % fewer MACs with the default plan (greedy allocation) once
per ``round_to`` (every pruned layer keeps a multiple of 1, 8, 16 or 32 units, or all of them). The
dense and the pruned models are timed at batch 1 and batch 64 in torch, once with NCHW (contiguous)
tensors and once with ``torch.channels_last``, and in onnxruntime from the ONNX file that
:func:`snp_engine.deploy.export_onnx` writes (checked against torch before it is used). Every
variant of a network is timed in the same alternating rounds, so the speed-ups (each runtime's
pruned model against the same runtime's dense model) come from one run. Which units are removed
does not change the speed, only how many per layer, so random weights and 16 random images for the
analysis are used (benchmarks/speedup.py's ``build``).

    .venv/bin/python benchmarks/deploy_speed.py                  # CPU, writes docs/benchmarks/deploy_speed.json
    .venv/bin/python benchmarks/deploy_speed.py --device cuda    # on a GPU (onnxruntime-gpu for the ONNX rows)
    .venv/bin/python benchmarks/deploy_speed.py --quick          # tiny smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from benchmarks.speedup import build
from snp_engine import api
from snp_engine.costs import count
from snp_engine.deploy import export_onnx
from snp_engine.errors import SnpError

NETWORKS = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2")
ROUND_TO = (1, 8, 16, 32)
# the two torch layouts and onnxruntime; ONNX graphs are NCHW, onnxruntime picks its own blocked layout
RUNTIMES = ("torch", "torch-cl", "onnxruntime")
# a pruned model reaches the target when its speed-up is at least this share of its FLOPs ratio
TARGET_SHARE = 0.8


def pruned_variants(arch: str, side: int, args: argparse.Namespace) -> tuple[nn.Module, dict[int, nn.Module], dict]:
    """The dense model, one physically pruned copy per ``round_to`` and their parameters and MACs."""
    model, calibration = build(arch, side)
    shape = tuple(calibration.tensors[0].shape[1:])
    # the ordering decides which units go, not how many per layer: a cheap one is enough here
    analysis = api.analyze(model, calibration, ordering="variance", max_positions=256, device=args.device)
    example = torch.zeros(1, *shape, device=args.device)
    dense_params, dense_macs = count(model.to(args.device), example)
    costs = {"input": list(shape), "dense": {"params": dense_params, "macs": dense_macs}, "pruned": {}}
    pruned = {}
    for step in args.round_to:
        plan = analysis.plan(flops_reduction=args.reduction, round_to=step)
        pruned[step] = api.prune(
            model, analysis, plan, compensate=False, sequential=False, physical=True, device=args.device
        ).model.eval()
        params, macs = count(pruned[step], example)
        costs["pruned"][str(step)] = {
            "params": params,
            "macs": macs,
            "flops_ratio": macs / dense_macs,
            "flops_speedup": dense_macs / macs,
            # every group keeps a multiple of round_to or all of its units (the plan's promise)
            "keep": dict(plan.keep),
        }
    return model.eval(), pruned, costs


def torch_call(model: nn.Module, x: torch.Tensor, channels_last: bool) -> Callable[[], object]:
    """One forward pass of ``model`` on ``x``, both in NCHW or both in channels_last."""
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return call


def onnxruntime_available(device: str) -> str | None:
    """Why the onnxruntime rows cannot be measured here, or None when they can."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        return "onnx and onnxruntime are not installed (pip install -e .[export])"
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
    return None


def onnx_session(model: nn.Module, example: torch.Tensor, device: str, threads: int):
    """An onnxruntime session of the ONNX file ``export_onnx`` writes for ``model`` (the file is
    deleted once loaded). Threads as in torch; no spin-waiting, like ``OMP_WAIT_POLICY=PASSIVE``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cuda = torch.device(device).type == "cuda"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="snp-deploy-speed-") as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", example)
        return onnxruntime.InferenceSession(str(path), options, providers=providers)


def onnx_call(session, x: torch.Tensor) -> Callable[[], object]:
    """One run of ``session`` on ``x``; on CUDA input and output stay on the GPU (I/O binding)."""
    name = session.get_inputs()[0].name
    if x.device.type != "cuda":
        feed = {name: x.cpu().numpy()}
        return lambda: session.run(None, feed)
    import numpy as np

    binding = session.io_binding()
    x = x.contiguous()
    binding.bind_input(name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def time_batch(
    dense: nn.Module, pruned: dict[int, nn.Module], sessions: dict, shape: tuple[int, ...], batch: int, args
) -> dict[str, dict]:
    """Seconds per pass of every (runtime, model) pair at ``batch``, all in the same alternating rounds."""
    x = torch.randn(batch, *shape, device=args.device)
    models = {"dense": dense, **{f"r{step}": model for step, model in pruned.items()}}
    calls: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        calls[f"torch/{name}"] = torch_call(model, x, channels_last=False)
        if not args.no_channels_last:
            calls[f"torch-cl/{name}"] = torch_call(model, x, channels_last=True)
        if name in sessions:
            calls[f"onnxruntime/{name}"] = onnx_call(sessions[name], x)
    rounds, seconds = (args.rounds, args.min_seconds) if batch == 1 else (args.large_rounds, args.large_min_seconds)
    timed = common.alternating_rounds(calls, device=args.device, rounds=rounds, min_seconds=seconds)
    return {name: {**timing, "images_per_second": batch / timing["seconds"]} for name, timing in timed.items()}


def summarise(case: dict) -> None:
    """Speed-ups from a case's timings: each runtime's pruned model against the same runtime's dense
    one (``same_runtime``: medians over rounds; ``same_runtime_min``: fastest single passes, the less
    load-sensitive estimate on a busy machine) and against eager NCHW torch (``vs_torch_dense``);
    ``meets_target``: the median ratio is at least TARGET_SHARE of the FLOPs ratio."""
    case["speedup"], case["meets_target"] = {}, {}
    for key, timed in case["timings"].items():
        speedups = {}
        for name, timing in timed.items():
            runtime, model = name.split("/")
            if model != "dense":
                dense = timed[f"{runtime}/dense"]
                speedups[name] = {
                    "same_runtime": dense["seconds"] / timing["seconds"],
                    "same_runtime_min": dense["min_seconds"] / timing["min_seconds"],
                    "vs_torch_dense": timed["torch/dense"]["seconds"] / timing["seconds"],
                }
        case["speedup"][key] = speedups
        case["meets_target"][key] = {
            name: value["same_runtime"] >= TARGET_SHARE * case["pruned"][name.split("/r")[1]]["flops_speedup"]
            for name, value in speedups.items()
        }


def run_case(arch: str, side: int, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    dense, pruned, row = pruned_variants(arch, side, args)
    shape = tuple(row["input"])
    row["prepare_seconds"] = time.perf_counter() - start
    sessions: dict = {}
    row["onnxruntime"] = onnxruntime_available(args.device) or "measured"
    if row["onnxruntime"] == "measured":
        start = time.perf_counter()
        example = torch.randn(1, *shape)
        for name, model in {"dense": dense, **{f"r{step}": m for step, m in pruned.items()}}.items():
            try:
                sessions[name] = onnx_session(model, example, args.device, args.threads)
            except SnpError as exc:
                row["onnxruntime"] = f"export of {name} failed: {exc}"
                sessions = {}
                break
        row["export_seconds"] = time.perf_counter() - start
    row["timings"] = {}
    for batch in args.batches:
        key = f"batch{batch}"
        timed = time_batch(dense, pruned, sessions, shape, batch, args)
        row["timings"][key] = timed
        summarise(row)
        speedups = row["speedup"][key]
        for name, value in speedups.items():
            common.log(
                f"deploy_speed {arch} {key} {name}: {1e3 * timed[name]['seconds']:.1f} ms, "
                f"{value['same_runtime']:.2f}x (FLOPs {row['pruned'][name.split('/r')[1]]['flops_speedup']:.2f}x)"
            )
    return row


def table(data: dict) -> str:
    """Markdown tables of a results file: speed-ups by network and round_to (each runtime against its
    own dense model, medians with the ratio of the fastest passes in brackets, bold where the median
    meets the target; the FLOPs ratio beside them), then the median times of the dense models."""
    batches = sorted({key for case in data["cases"].values() for key in case["timings"]}, key=lambda k: int(k[5:]))
    header = ["network", "round_to", "FLOPs ratio", f"target ({data['target_share']}x)"]
    header += [f"{key[5:]}: {runtime}" for key in batches for runtime in RUNTIMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(data["cases"], key=lambda arch: NETWORKS.index(arch) if arch in NETWORKS else len(NETWORKS))
    cases = {arch: data["cases"][arch] for arch in order}  # a --merge appends the networks run last
    for arch, case in cases.items():
        for step, costs in case["pruned"].items():
            ratio = costs["flops_speedup"]
            cells = [arch, step, f"{ratio:.2f}x", f"{data['target_share'] * ratio:.2f}x"]
            for key in batches:
                for runtime in RUNTIMES:
                    value = case["speedup"].get(key, {}).get(f"{runtime}/r{step}")
                    met = case["meets_target"].get(key, {}).get(f"{runtime}/r{step}")
                    if value is None:
                        cells.append("–")
                    else:
                        bold = "**" * met
                        cells.append(f"{bold}{value['same_runtime']:.2f}x{bold} ({value['same_runtime_min']:.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    dense = ["", "| network | " + " | ".join(f"dense {key[5:]}: {r} (ms)" for key in batches for r in RUNTIMES) + " |"]
    dense.append("|" + "---|" * (1 + len(batches) * len(RUNTIMES)))
    for arch, case in cases.items():
        cells = [arch]
        for key in batches:
            for runtime in RUNTIMES:
                timing = case["timings"].get(key, {}).get(f"{runtime}/dense")
                cells.append("–" if timing is None else f"{1e3 * timing['seconds']:.0f}")
        dense.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + dense) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), help="torchvision architectures")
    parser.add_argument("--side", type=int, default=224, help="input height and width")
    parser.add_argument("--reduction", type=float, default=0.5, help="FLOPs (MACs) reduction of the pruned models")
    parser.add_argument("--round-to", type=int, nargs="+", default=list(ROUND_TO))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds at batch 1")
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="time each variant this long at batch 1, split over the rounds"
    )
    parser.add_argument("--large-rounds", type=int, default=3, help="alternating rounds at the larger batches")
    parser.add_argument(
        "--large-min-seconds",
        type=float,
        default=0.0,
        help="time each variant this long at the larger batches, split over the rounds (0: one pass a round)",
    )
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels_last torch rows")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other networks of an existing --out file (its header goes under earlier_runs)",
    )
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of --out and stop")
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.networks, args.side, args.round_to, args.batches = ["demo-vgg"], 8, [1, 8], [1, 8]
        args.rounds, args.min_seconds, args.large_rounds = 2, 0.02, 2
    common.default_out(args, "deploy_speed")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.table:
        data = json.loads(Path(args.out).read_text(encoding="utf-8"))
        print(table(data), end="")
        return data
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = {**common.run_header("deploy_speed", args, args.device), "target_share": TARGET_SHARE, "cases": {}}
    if args.merge and Path(args.out).is_file():
        earlier = json.loads(Path(args.out).read_text(encoding="utf-8"))
        kept = {name: case for name, case in earlier["cases"].items() if name not in args.networks}
        header = {key: earlier[key] for key in ("machine", "settings", "wall_seconds", "load_average_end")}
        results["earlier_runs"] = [*earlier.get("earlier_runs", []), {**header, "cases": sorted(kept)}]
        results["cases"] = kept
        for case in kept.values():
            summarise(case)  # the same summary for every network
    for arch in args.networks:
        results["cases"][arch] = run_case(arch, args.side, args)
        results["wall_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]
        common.write_json(args.out, results)
    common.log(f"deploy_speed: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
