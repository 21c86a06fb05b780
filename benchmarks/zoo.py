"""The torchvision zoo: for every classification model, what snp finds and whether it prunes.

Each model is built with random weights (nothing downloads) at a small input and checked the way a
user would use it: its unit groups are found within bounded time and memory, a −30 % FLOPs plan is
pruned (one-shot, a few random images), the result is exported and reloaded with equal logits, and
keep-all reproduces the dense logits. A model that cannot be pruned must refuse in one line (an
``SnpError``); any other exception is a failure. Every model runs in its own process with a
wall-clock and address-space limit, so one runaway model cannot take the others down.

    .venv/bin/python benchmarks/zoo.py                  # all models, writes docs/benchmarks/zoo.json
    .venv/bin/python benchmarks/zoo.py --quick          # a few small models
    .venv/bin/python benchmarks/zoo.py resnet18 swin_t  # chosen models
    .venv/bin/python benchmarks/zoo.py maxvit_t --rerun "why"  # replace these rows in zoo.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

TARGET = 0.3
IMAGES = 4
QUICK = ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5")
# inputs smaller than this fail inside the network itself (pooling to nothing; MaxViT: its maps after
# the stem and each of its four stages, side/32 at the last, must be whole multiples of its partition
# size 7, so 224 is its smallest input)
MIN_SIDE = {"inception_v3": 96, "googlenet": 64, "maxvit_t": 224, "vit_h_14": 56}


def side_for(name: str) -> int:
    return MIN_SIDE.get(name, 64)


def build(name: str, side: int):
    import torchvision

    kwargs: dict = {"num_classes": 10}
    if name.startswith("vit_"):
        kwargs["image_size"] = side
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def check_model(name: str, side: int | None = None, target: float = TARGET) -> dict:
    """Run the whole user path on one torchvision model; returns what happened at each step."""
    import torch
    from torch.utils.data import TensorDataset

    from snp_engine import api, io
    from snp_engine.errors import SnpError
    from snp_engine.groups import find_groups

    side = side or side_for(name)
    torch.manual_seed(0)
    row: dict = {"model": name, "input": [3, side, side]}
    start = time.perf_counter()
    model = build(name, side)
    row["params"] = sum(p.numel() for p in model.parameters())
    example = torch.randn(1, 3, side, side)
    try:
        groups, excluded = find_groups(model, example)
    except SnpError as exc:
        row.update(status="refused", step="groups", message=str(exc), seconds=time.perf_counter() - start)
        return row
    row["groups"] = len(groups)
    row["coupled"] = sum(g.coupled for g in groups)
    row["excluded"] = len(excluded)
    row["excluded_reasons"] = sorted({e.reason.split(" (")[0] for e in excluded})
    row["find_seconds"] = time.perf_counter() - start
    images = torch.randn(IMAGES, 3, side, side)
    data = TensorDataset(images, torch.zeros(IMAGES, dtype=torch.long))
    step = "analysis"
    try:
        analysis = api.analyze(model, data, batch_size=IMAGES, max_positions=64)
        row["max_reduction"] = 1 - analysis.cost({n: 1 for n in analysis.units})[1] / analysis.cost()[1]
        with torch.no_grad():
            dense = model(images)
        step = "keep-all"
        exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False)
        with torch.no_grad():
            row["keep_all_max_diff"] = float((exact.model(images) - dense).abs().max())
        step = "plan"
        plan = analysis.plan(flops_reduction=target)
        row["reduction"] = plan.flops_reduction
        step = "prune"
        run = api.prune(model, analysis, plan, sequential=False)
        with torch.no_grad():
            pruned = run.model(images)
        step = "export"
        with tempfile.TemporaryDirectory() as folder:
            path = io.export_model(
                run,
                Path(folder) / "m.safetensors",
                arch=f"torchvision:{name}",
                num_classes=10,
                input_shape=(3, side, side),
            )
            again = io.load_exported(path).model
        with torch.no_grad():
            row["reload_max_diff"] = float((again(images) - pruned).abs().max())
        row["params_after"] = sum(p.numel() for p in again.parameters())
        row["status"] = "pruned"
    except SnpError as exc:
        row.update(status="refused", step=step, message=str(exc))
    row["seconds"] = time.perf_counter() - start
    return row


def _run_isolated(name: str, timeout: float, memory_gib: float) -> dict:
    """:func:`check_model` in a child process under a time and address-space limit."""
    code = (
        "import json, resource, sys, torch; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({int(memory_gib * (1 << 30))},) * 2); "
        "torch.set_num_threads(1); "
        "sys.path.insert(0, sys.argv[2]); "
        "from benchmarks.zoo import check_model; "
        "print('ZOO ' + json.dumps(check_model(sys.argv[1])))"
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, name, str(common.ROOT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "failed", "message": f"no result within {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("ZOO "):
            return json.loads(line[4:])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "status": "failed", "message": last[:300], "seconds": time.perf_counter() - start}


def parameters_of(name: str) -> int:
    """The model's parameter count, from a build on the meta device (allocates nothing)."""
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build(name, side_for(name)).parameters())
    except (NotImplementedError, RuntimeError):  # a constructor that computes with real tensors (RegNet)
        return sum(p.numel() for p in build(name, side_for(name)).parameters())


def table(rows: list[dict]) -> str:
    """The results as a markdown table for docs/benchmarks.md."""
    lines = [
        "| model | params | groups (coupled) | excluded | max reduction | −30 % plan, export, reload |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r["model"]):
        params = f"{row['params'] / 1e6:.1f} M" if "params" in row else "—"
        if "groups" in row:
            groups = f"{row['groups']} ({row['coupled']})"
            excluded = str(row["excluded"])
        else:
            groups = excluded = "—"
        reach = f"{row['max_reduction']:.1%}" if "max_reduction" in row else "—"
        if row["status"] == "pruned":
            outcome = f"pruned −{row['reduction']:.1%}, reload max Δ {row['reload_max_diff']:.0e}"
        else:
            outcome = f"{row['status']}: {row.get('message', '')[:110]}"
        lines.append(f"| {row['model']} | {params} | {groups} | {excluded} | {reach} | {outcome} |")
    return "\n".join(lines)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="torchvision model names (default: every classifier)")
    parser.add_argument("--quick", action="store_true", help="a few small models")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model")
    parser.add_argument("--memory-gib", type=float, default=16, help="address-space limit per model")
    parser.add_argument(
        "--max-params", type=float, default=None, help="skip models with more parameters (millions) than this"
    )
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "zoo.json")
    parser.add_argument("--resume", action="store_true", help="keep the models already in --out, run the rest")
    parser.add_argument("--table", action="store_true", help="print --out as a markdown table and stop")
    parser.add_argument(
        "--rerun",
        metavar="WHY",
        help="replace the chosen models' rows in --out and keep the others; WHY and this machine's state "
        "are added to its 'reruns'",
    )
    args = parser.parse_args()
    if args.rerun is not None:
        if not args.models or not args.out.is_file():
            parser.error("--rerun needs the models to rerun and an existing --out")
        _rerun(args.models, args.out, args.rerun, args.timeout, args.memory_gib)
        return
    if args.table:
        print(table(json.loads(args.out.read_text())["models"]))
        return
    names = args.models or (list(QUICK) if args.quick else torchvision.models.list_models(module=torchvision.models))
    rows: list[dict] = []
    if args.resume and args.out.is_file():  # keep what an interrupted run already measured
        rows = [row for row in json.loads(args.out.read_text())["models"] if row["model"] in names]
    done = {row["model"] for row in rows}
    settings = {
        "target": TARGET,
        "images": IMAGES,
        "quick": args.quick,
        "timeout_s": args.timeout,
        "max_params": args.max_params,
    }
    for name in names:
        if name in done:
            continue
        size = parameters_of(name)
        if args.max_params is not None and size > args.max_params * 1e6:
            row = {
                "model": name,
                "params": size,
                "status": "skipped",
                "message": f"over {args.max_params:g} M parameters",
            }
        else:
            row = _run_isolated(name, args.timeout, args.memory_gib)
        rows.append(row)
        detail = row.get("message", "")[:100] if row["status"] != "pruned" else f"−{row['reduction']:.0%} FLOPs"
        print(f"{name:<24} {row['status']:<8} {detail}", flush=True)
        # written after every model, so an interrupted run keeps its results (--resume goes on)
        common.write_json(
            args.out, {"benchmark": "zoo", "machine": common.machine_info(), "settings": settings, "models": rows}
        )


def _rerun(names: list[str], out: Path, why: str, timeout: float, memory_gib: float) -> None:
    """Run ``names`` again and put their rows into the results file ``out`` in place of the old ones."""
    results = json.loads(out.read_text())
    fresh = []
    for name in names:
        row = _run_isolated(name, timeout, memory_gib)
        fresh.append(row)
        print(f"{name:<24} {row['status']:<8} {row.get('message', '')[:100]}", flush=True)
    by_name = {row["model"]: row for row in fresh}
    rows = [by_name.pop(row["model"], row) for row in results["models"]]  # in place, in the file's order
    results["models"] = rows + list(by_name.values())
    results.setdefault("reruns", []).append({"models": sorted(names), "machine": common.machine_info(), "why": why})
    common.write_json(out, results)


if __name__ == "__main__":
    main()
