"""What sequential calibration costs, relative to the analysis, with and without the segment cache.

For each network (resnet18-32: torchvision resnet18 trained on the 3x32x32 digits, cached under
benchmarks/.cache; the demo networks at 1x8x8), over the same 1,024 digits images in batches of 64,
in one run and alternating between the variants so that a change of load hits all of them:

* ``forward``: a plain ``inference_mode`` forward pass over the images;
* ``analysis``: ``snp_engine.analyze`` (statistics, metrics, default ordering and curve);
* ``before``: ``snp_engine.prune`` to −50 % FLOPs, sequential (the default), with ``cache_mb=0``:
  two forward passes from the images up to each reader, as before the cache;
* ``after``: the same prune with the default cache (each network segment computed once);
* ``over_budget``: the same prune with a budget of a third of what ``after`` held at most, so that
  most batches are computed from their images.

Reported per variant: wall seconds (median over rounds) and CPU seconds (``time.process_time``,
all threads of the process), the ratios to the analysis, the 1-minute load average at the start
and end of each network, whether the three prunes gave identical weights, kept units and fits, and
for ``before``/``after`` where the time goes (in ``collect_joint_folds``: the forward passes and the
joint statistics; in ``fit_reader``: the held-out choice and the fit), from one extra run each.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sequential_cost.py    # docs/benchmarks/sequential_cost.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; see docs/benchmarks.md

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/sequential_cost.py``

from benchmarks import common
from snp_engine import api, pruning, segments

MODELS = (common.TRAINED_RESNET, "demo-vgg", "demo-resnet")


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _identical(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return (
        a.record.kept == b.record.kept
        and a.record.fits == b.record.fits
        and sa.keys() == sb.keys()
        and all(torch.equal(sa[k], sb[k]) for k in sa)
    )


def _peak_cache_bytes(fn: Callable[[], object]) -> int:
    """The most bytes the segment cache held during ``fn()``."""
    keep = segments.SegmentCache._keep
    peak = [0]

    def watched(self, key, entry):
        keep(self, key, entry)
        peak[0] = max(peak[0], self.used)

    segments.SegmentCache._keep = watched
    try:
        fn()
    finally:
        segments.SegmentCache._keep = keep
    return peak[0]


def _breakdown(fn: Callable[[], object]) -> dict:
    """Wall seconds inside ``collect_joint_folds`` and ``fit_reader`` during ``fn()``, and in all."""
    spent = {"collect_joint_folds": 0.0, "fit_reader": 0.0}
    originals = {name: getattr(pruning, name) for name in spent}

    def timer(name):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return call

    for name in spent:
        setattr(pruning, name, timer(name))
    try:
        wall, _, _ = _timed(fn)
    finally:
        for name, original in originals.items():
            setattr(pruning, name, original)
    return {**spent, "total": wall, "rest": wall - sum(spent.values())}


def run_model(name: str, args: argparse.Namespace) -> dict:
    load_start = _load()
    splits = common.digits_for(name)
    model = common.benchmark_model(name, splits).eval()
    pool = splits["pool"]
    index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    index = index.repeat(-(-args.images // len(pool)))[: args.images]  # repeated if the pool is smaller
    data = torch.utils.data.TensorDataset(*(t[index] for t in pool.tensors))
    batches = [x for x, _ in torch.utils.data.DataLoader(data, batch_size=args.batch_size)]
    analysis = api.analyze(model, data, batch_size=args.batch_size)
    plan = analysis.plan(flops_reduction=args.flops_reduction)

    def forward():
        with torch.inference_mode():
            for batch in batches:
                model(batch)

    def prune(cache_mb):
        return lambda: api.prune(model, analysis, plan, data=data, batch_size=args.batch_size, cache_mb=cache_mb)

    peak = _peak_cache_bytes(prune(segments.DEFAULT_CACHE_MB))
    over = peak / 3 / 2**20
    variants = {
        "forward": forward,
        "analysis": lambda: api.analyze(model, data, batch_size=args.batch_size),
        "before": prune(0),
        "after": prune(segments.DEFAULT_CACHE_MB),
        "over_budget": prune(over),
    }
    results = {key: fn() for key, fn in variants.items()}  # warm-up, and the prunes to compare
    wall: dict[str, list[float]] = {key: [] for key in variants}
    cpu: dict[str, list[float]] = {key: [] for key in variants}
    start = time.perf_counter()
    while len(wall["forward"]) < args.repeats or (
        time.perf_counter() - start < args.min_seconds and len(wall["forward"]) < 20
    ):
        for key, fn in variants.items():
            w, c, _ = _timed(fn)
            wall[key].append(w)
            cpu[key].append(c)
    seconds = {key: statistics.median(v) for key, v in wall.items()}
    cpu_seconds = {key: statistics.median(v) for key, v in cpu.items()}
    row = {
        "input_shape": list(analysis.input_shape),
        "images": len(data),
        "batch_size": args.batch_size,
        "flops_reduction": args.flops_reduction,
        "readers_fitted": len(results["after"].record.fits) or None,
        "rounds": len(wall["forward"]),
        "seconds": {key: {**common.mean_std(v), "median": seconds[key]} for key, v in wall.items()},
        "cpu_seconds": {key: {**common.mean_std(v), "median": cpu_seconds[key]} for key, v in cpu.items()},
        "over_analysis": {key: seconds[key] / seconds["analysis"] for key in ("before", "after", "over_budget")},
        "cpu_over_analysis": {
            key: cpu_seconds[key] / cpu_seconds["analysis"] for key in ("before", "after", "over_budget")
        },
        "analysis_over_forward": seconds["analysis"] / seconds["forward"],
        "before_over_after": seconds["before"] / seconds["after"],
        "cache_peak_mib": peak / 2**20,
        "over_budget_mib": over,
        "identical": {
            "after": _identical(results["after"], results["before"]),
            "over_budget": _identical(results["over_budget"], results["before"]),
        },
        "breakdown": {"before": _breakdown(prune(0)), "after": _breakdown(prune(segments.DEFAULT_CACHE_MB))},
        "load_average": {"start": load_start, "end": _load()},
    }
    ratios = row["over_analysis"]
    common.log(
        f"{name}: analysis {seconds['analysis']:.2f} s; sequential / analysis before {ratios['before']:.2f}, "
        f"after {ratios['after']:.2f}, over budget {ratios['over_budget']:.2f} (cache {peak / 2**20:.0f} MiB); "
        f"identical {row['identical']}; load {row['load_average']}"
    )
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_args(parser)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="at least this many rounds of every variant")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="and repeat rounds for at least this long")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.images, args.repeats, args.min_seconds = ["demo-vgg"], 128, 1, 0.0
    if args.device != "cpu":
        parser.error("the sequential cost is measured on CPU only for now")
    common.default_out(args, "sequential_cost")
    common.set_threads(args.threads)
    data = common.run_header("sequential_cost", args, args.device)
    data["load_average_start"] = _load()
    data["models"] = {name: run_model(name, args) for name in args.models}
    data["load_average_end"] = _load()
    common.write_json(args.out, data)
    common.log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
