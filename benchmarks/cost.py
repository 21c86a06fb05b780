"""What the analysis costs: wall time relative to a plain forward pass, peak memory, and how both
grow with the number of calibration samples and with layer width.

* ``models``: the full ``snp_engine.analyze`` (tracing, statistics, default ordering, curves) on the
  benchmark networks, divided by the time of one plain forward pass over the same images, measured
  in the same run; plus the time of every other ordering on the same statistics.
* ``width``: synthetic MLP (Linear 64→n→64) and conv (3x3, 16→n→16 channels) layers of n units:
  statistics + curve vs forward time and memory.
* ``orderings``: each ordering on the n×n covariance of the synthetic MLP, timed alone. Large widths
  run in a child process with a time limit; a run that hits the limit is reported as such and its
  time extrapolated from the power law fitted to the widths that finished.

    .venv/bin/python benchmarks/cost.py            # full run, writes docs/benchmarks/cost.json
    .venv/bin/python benchmarks/cost.py --quick    # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from snp_engine import api
from snp_engine.subspace import ORDERINGS, OrderingInputs, explained_curve, forward_greedy, order_units

ORDERING_NAMES = tuple(name for name in ORDERINGS if name != "identity")
# the output-aware greedy with one unit per step at every width (the engine takes blocks of
# several units per step above subspace.EXACT_GREEDY_UNITS); only for the ordering timings
EXACT = "output-exact"


def run_ordering(name: str, inputs: OrderingInputs) -> torch.Tensor:
    if name == EXACT:
        return forward_greedy(inputs.covariance, inputs.metric, block=1)
    return order_units(name, inputs)


# ----------------------------------------------------------------------------------------------
# Helpers


def forward_all(model: nn.Module, images: torch.Tensor, device: str, batch_size: int = 64) -> None:
    """One plain inference pass over ``images`` in the analysis' batch size."""
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size].to(device))


def measured(fn, device: str) -> tuple[float, int, object]:
    """(seconds, peak extra bytes, result) of one call."""
    with common.peak_memory(device) as memory:
        start = time.perf_counter()
        result = fn()
        common.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, memory["peak_bytes"], result


def forward_cost(model: nn.Module, images: torch.Tensor, device: str) -> dict:
    timing = common.time_call(lambda: forward_all(model, images, device), device=device, min_reps=3, min_seconds=0.5)
    _, peak, _ = measured(lambda: forward_all(model, images, device), device)
    return {"seconds": timing["median"], "reps": timing["reps"], "peak_bytes": peak}


def analysis_cost(model: nn.Module, data: TensorDataset, device: str, ordering: str) -> tuple[dict, api.Analysis]:
    seconds, peak, analysis = measured(lambda: api.analyze(model, data, ordering=ordering, device=device), device)
    return {"seconds": seconds, "peak_bytes": peak}, analysis


def fit_power_law(points: dict[int, float]) -> dict | None:
    """Least-squares fit of log t = log a + p log n over the widths that finished."""
    usable = [(n, t) for n, t in points.items() if t > 0]
    if len(usable) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in usable], [math.log(t) for _, t in usable]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return {"exponent": slope, "log_a": my - slope * mx, "fitted_on": sorted(n for n, _ in usable)}


def extrapolate(fit: dict | None, n: int) -> float | None:
    return None if fit is None else math.exp(fit["log_a"] + fit["exponent"] * math.log(n))


# ----------------------------------------------------------------------------------------------
# Real networks


def run_models(args: argparse.Namespace) -> dict:
    out = {}
    for name in args.models:
        splits = common.digits_for(name)
        model = common.benchmark_model(name, splits, device=args.device).to(args.device).eval()
        pool = splits["pool"]
        api.analyze(model, common.random_subset(pool, 16, 0), device=args.device)  # warm-up, not timed
        rows = {}
        for samples in args.samples:
            data = common.random_subset(pool, samples, 0)
            forward = forward_cost(model, data.tensors[0], args.device)
            full, analysis = analysis_cost(model, data, args.device, "output")
            stats_only, _ = analysis_cost(model, data, args.device, "identity")
            orderings = {}
            for ordering in [o for o in args.orderings if o in ORDERINGS]:
                start = time.perf_counter()
                analysis.reorder(ordering)
                orderings[ordering] = time.perf_counter() - start
            rows[str(samples)] = {
                "samples": samples,
                "forward": forward,
                "analysis": full,
                "analysis_identity_ordering": stats_only,
                "ratio": full["seconds"] / forward["seconds"],
                "ratio_identity_ordering": stats_only["seconds"] / forward["seconds"],
                "reorder_seconds": orderings,
                "statistic_samples": {g.name: g.samples for g in analysis.groups},
            }
            common.log(f"cost {name} {samples}: analysis/forward = {rows[str(samples)]['ratio']:.1f}")
        out[name] = {"groups": {g.name: g.units for g in analysis.groups}, "by_samples": rows}
    return out


# ----------------------------------------------------------------------------------------------
# Synthetic layers


def synthetic(kind: str, width: int, samples: int, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """One prunable group of ``width`` units: Linear 64→n→64 or Conv 16→n→16 (3x3, 8x8 maps)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 10))
        images = torch.randn(samples, 64)
    else:
        model = nn.Sequential(
            nn.Conv2d(16, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
        images = torch.randn(samples, 16, 8, 8)
    return model.eval(), TensorDataset(images, torch.zeros(samples, dtype=torch.long))


def run_widths(args: argparse.Namespace) -> tuple[dict, dict[int, torch.Tensor]]:
    """Statistics + curve cost per width; returns the MLP covariances for the ordering timings."""
    out: dict = {}
    covariances: dict[int, torch.Tensor] = {}
    for kind, widths, samples in (
        ("mlp", args.mlp_widths, args.mlp_samples),
        ("conv", args.conv_widths, args.conv_images),
    ):
        rows = {}
        for width in widths:
            model, data = synthetic(kind, width, samples)
            model = model.to(args.device)
            forward = forward_cost(model, data.tensors[0], args.device)
            # "variance" ordering: a sort, so this is statistics + consumer metric + Cholesky curve
            analysis_row, analysis = analysis_cost(model, data, args.device, "variance")
            group = next(g for g in analysis.groups if g.units == width)
            rows[str(width)] = {
                "width": width,
                "images": samples,
                "statistic_samples": group.samples,
                "forward": forward,
                "analysis": analysis_row,
                "ratio": analysis_row["seconds"] / forward["seconds"],
                "statistics_bytes_per_group": 8 * (width * width + width + 1),
            }
            if kind == "mlp":
                covariances[width] = group.moments.covariance()
            common.log(
                f"cost width {kind} {width}: analysis {analysis_row['seconds']:.2f} s, "
                f"ratio {rows[str(width)]['ratio']:.1f}"
            )
        out[kind] = rows
    return out, covariances


_CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
from snp_engine.subspace import OrderingInputs, explained_curve
from benchmarks.cost import run_ordering
cov = torch.load({path!r})
n = cov.shape[0]
gen = torch.Generator().manual_seed(0)
metric_factor = torch.randn(64, n, generator=gen, dtype=torch.float64)
inputs = OrderingInputs(cov, metric_factor.T @ metric_factor, torch.rand(n, generator=gen, dtype=torch.float64), 0)
start = time.perf_counter()
order = run_ordering({ordering!r}, inputs)
seconds = time.perf_counter() - start
start = time.perf_counter()
explained_curve(cov, order)
print(json.dumps({{"seconds": seconds, "curve_seconds": time.perf_counter() - start}}))
"""


_STARTUP: dict[str, float] = {}


def child_startup(path: Path, env: dict) -> float:
    """Seconds a child needs to import the engine and load ``path`` (measured once per file)."""
    if str(path) not in _STARTUP:
        code = f"import torch\nfrom benchmarks.cost import run_ordering\ntorch.load({str(path)!r})"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        _STARTUP[str(path)] = time.perf_counter() - start
    return _STARTUP[str(path)]


def time_ordering(ordering: str, cov: torch.Tensor, args: argparse.Namespace, workdir: Path) -> dict:
    """Seconds of one ordering (and of the curve it implies) on ``cov``; in a child process with a time
    limit once the width exceeds ``--inprocess-width``. The consumer metric is a random rank-64 PSD
    matrix (an MLP consumer with 64 outputs), the L1 norms random: neither changes the cost."""
    n = cov.shape[0]
    if n <= args.inprocess_width:
        gen = torch.Generator().manual_seed(0)
        factor = torch.randn(64, n, generator=gen, dtype=torch.float64)
        inputs = OrderingInputs(cov, factor.T @ factor, torch.rand(n, generator=gen, dtype=torch.float64), 0)
        seconds, peak, order = measured(lambda: run_ordering(ordering, inputs), "cpu")
        start = time.perf_counter()
        explained_curve(cov, order)
        row = {"status": "done", "seconds": seconds, "curve_seconds": time.perf_counter() - start, "peak_bytes": peak}
        if ordering == "output" and args.compare_exact:
            # what the block steps cost in quality: output-energy curves of both greedy variants
            exact = run_ordering(EXACT, inputs)
            gap = explained_curve(cov, exact, inputs.metric) - explained_curve(cov, order, inputs.metric)
            row["curve_gap_vs_exact"] = float(gap.abs().max())
        return row
    path = workdir / f"cov{n}.pt"
    if not path.is_file():
        torch.save(cov, path)
    code = _CHILD.format(threads=args.threads, path=str(path), ordering=ordering)
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    # the limit is for the ordering itself: add the child's measured start-up (imports, loading cov)
    limit = (args.timeout if n < max(args.order_widths) else args.timeout_largest) + child_startup(path, env)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=limit, env=env, check=True
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "limit_seconds": limit - child_startup(path, env)}
    except subprocess.CalledProcessError as exc:
        return {"status": "failed", "error": exc.stderr.strip().splitlines()[-1] if exc.stderr else str(exc)}
    return {"status": "done", **json.loads(done.stdout.strip().splitlines()[-1])}


def run_orderings(args: argparse.Namespace, covariances: dict[int, torch.Tensor]) -> dict:
    widths = [w for w in args.order_widths if w in covariances]
    out: dict = {"widths": widths, "by_ordering": {}}
    with tempfile.TemporaryDirectory(prefix="snp-cost-") as tmp:
        for ordering in args.orderings:
            rows: dict = {}
            skip = False
            for width in widths:
                if skip:  # a smaller width already hit the limit: a larger one would too
                    rows[str(width)] = {"status": "skipped (smaller width timed out)"}
                    continue
                rows[str(width)] = time_ordering(ordering, covariances[width], args, Path(tmp))
                skip = rows[str(width)]["status"] == "timeout"
                common.log(f"cost ordering {ordering} n={width}: {rows[str(width)]}")
            finished = {
                int(w): r["seconds"] for w, r in rows.items() if r["status"] == "done" and int(w) >= args.fit_from
            }
            fit = fit_power_law(finished)
            extrapolated = {str(n): extrapolate(fit, n) for n in args.extrapolate}
            out["by_ordering"][ordering] = {"by_width": rows, "fit": fit, "extrapolated_seconds": extrapolated}
    # memory the python-loop orderings hold: S, M S (and M) as n×n float64 matrices
    out["loop_memory_bytes"] = {str(n): 3 * 8 * n * n for n in [*widths, *args.extrapolate]}
    return out


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(common.MODELS), choices=list(common.MODELS))
    parser.add_argument("--samples", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--orderings", nargs="+", default=[*ORDERING_NAMES, EXACT], choices=[*ORDERING_NAMES, EXACT])
    parser.add_argument(
        "--no-compare-exact",
        dest="compare_exact",
        action="store_false",
        help="skip the output-energy curve gap between blocked and exact greedy",
    )
    parser.add_argument("--mlp-widths", nargs="*", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--mlp-samples", type=int, default=2048, help="rows fed to the synthetic MLP")
    parser.add_argument("--conv-widths", nargs="*", type=int, default=[256, 1024, 4096])
    parser.add_argument("--conv-images", type=int, default=32, help="8x8 maps fed to the synthetic conv")
    parser.add_argument("--order-widths", nargs="*", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument(
        "--inprocess-width", type=int, default=2048, help="larger widths time orderings in a child process with a limit"
    )
    parser.add_argument("--timeout", type=float, default=150.0, help="limit per ordering below the largest width")
    parser.add_argument("--timeout-largest", type=float, default=60.0, help="limit per ordering at the largest width")
    parser.add_argument("--fit-from", type=int, default=512, help="fit the power law on widths >= this")
    parser.add_argument("--extrapolate", nargs="*", type=int, default=[8192, 10000, 16384, 32768])
    common.add_run_args(parser, plot="docs/cost.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.samples, args.orderings = ["demo-vgg"], [32], ["output", "zca"]
        args.mlp_widths, args.conv_widths, args.order_widths = [32, 64], [32], [32, 64]
        args.mlp_samples, args.conv_images, args.fit_from, args.extrapolate = 256, 4, 0, [1024]
    common.default_out(args, "cost")
    if args.plot is None and not args.quick:
        args.plot = common.PLOTS_DIR / "cost.png"
    return args


def plot(results: dict, path: Path) -> Path:
    """Analysis/forward ratio vs samples, and ordering time vs width (log-log) with extrapolations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, data in results["models"].items():
        rows = sorted(data["by_samples"].values(), key=lambda r: r["samples"])
        line = left.plot(
            [r["samples"] for r in rows], [r["ratio"] for r in rows], marker="o", label=f"{name} (output ordering)"
        )[0]
        left.plot(
            [r["samples"] for r in rows],
            [r["ratio_identity_ordering"] for r in rows],
            marker=".",
            linestyle=":",
            color=line.get_color(),
            label=f"{name} (no ordering)",
        )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("calibration images")
    left.set_ylabel("analysis time / plain forward time")
    left.legend(fontsize=7)
    sorts = ("variance", "l1", "random")  # a sort of n numbers: microseconds, not worth a line
    for ordering, data in results["orderings"]["by_ordering"].items():
        done = sorted((int(w), r["seconds"]) for w, r in data["by_width"].items() if r["status"] == "done")
        if not done or ordering in sorts:
            continue
        line = right.plot(*zip(*done, strict=True), marker="o", label=ordering)[0]
        extra = sorted((int(n), t) for n, t in data["extrapolated_seconds"].items() if t is not None)
        if extra:
            right.plot(
                [done[-1][0], *[n for n, _ in extra]],
                [done[-1][1], *[t for _, t in extra]],
                linestyle=":",
                color=line.get_color(),
            )
    curve = sorted(
        (int(w), r["curve_seconds"])
        for w, r in results["orderings"]["by_ordering"].get("variance", {}).get("by_width", {}).items()
        if r["status"] == "done"
    )
    if curve:
        right.plot(*zip(*curve, strict=True), marker="s", color="black", label="curve (Cholesky), any ordering")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("units n in the layer")
    right.set_ylabel("seconds (dotted: extrapolated)")
    right.set_title("one ordering on an n×n covariance")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = common.run_header("cost", args, args.device)
    results["models"] = run_models(args)
    results["width"], covariances = run_widths(args)
    results["orderings"] = run_orderings(args, covariances)
    results["wall_seconds"] = time.perf_counter() - start
    results["load_average_end"] = os.getloadavg()[0]
    common.write_json(args.out, results)
    if args.plot is not None:
        plot(results, args.plot)
    common.log(f"cost: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
