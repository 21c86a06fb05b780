"""What the activation statistics cost, relative to a plain forward pass, before and after the
shifted float32 products.

For each network (torchvision resnet18 with random weights at 3x32x32, and the demo networks at
1x8x8), over the same images in batches of 64, in one run and alternating between the variants so
that a change of load hits all of them:

* ``forward``: a plain ``inference_mode`` forward pass;
* ``statistics``: ``snp_engine.activations.collect_moments`` for every unit group that
  ``snp_engine.groups.find_groups`` finds, with the engine's :class:`~snp_engine.statistics.Moments`;
* ``statistics_float64``: the same pass with the previous update (every batch copied to float64,
  checked element by element and multiplied in float64; kept below as :class:`Float64Moments`);
* ``hooks_only``: the same pass whose update does nothing: the hooks and the (samples, units)
  reshaping alone, the floor that no change to the statistics can go below.

Each is reported as seconds (median over the repetitions) and as a ratio to the forward pass, plus
the largest relative (Frobenius) difference between the two covariances of each group.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/statistics_cost.py    # writes docs/benchmarks/statistics_cost.json
    python benchmarks/statistics_cost.py --device cuda --out /tmp/statistics_cost_cuda.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; see docs/benchmarks.md

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/statistics_cost.py``

from benchmarks import common
from snp_engine import activations
from snp_engine import statistics as statistics_module
from snp_engine.errors import AnalysisError
from snp_engine.groups import find_groups

RESNET = "resnet18"  # torchvision resnet18, random weights (seed 0), 10 classes, 3x32x32
MODELS = (RESNET, "demo-vgg", "demo-resnet")


@dataclass
class Float64Moments:
    """The statistics update before the shifted float32 products, for the comparison only."""

    count: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor

    @classmethod
    def zeros(cls, units: int, device: torch.device | str = "cpu") -> Float64Moments:
        f64 = torch.float64
        return cls(
            torch.zeros((), dtype=f64, device=device),
            torch.zeros(units, dtype=f64, device=device),
            torch.zeros(units, units, dtype=f64, device=device),
        )

    def update(self, samples: torch.Tensor, name: str = "") -> None:
        x = samples.detach().to(dtype=torch.float64, device=self.total.device)
        if not torch.isfinite(x).all():
            raise AnalysisError(f"non-finite activations at the input of {name}")
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer.addmm_(x.T, x)

    def covariance(self) -> torch.Tensor:
        mu = self.total / self.count.clamp_min(1)
        cov = self.outer / self.count.clamp_min(1) - torch.outer(mu, mu)
        return (cov + cov.T) / 2


class NoMoments:
    """An update that does nothing: what the hooks and the reshaping cost alone."""

    @classmethod
    def zeros(cls, units: int, device: torch.device | str = "cpu") -> NoMoments:
        return cls()

    def update(self, samples: torch.Tensor, name: str = "") -> None:
        pass


@contextlib.contextmanager
def moments_class(cls):
    """``collect_moments`` with ``cls`` in place of the engine's Moments."""
    engine = activations.Moments
    activations.Moments = cls
    try:
        yield
    finally:
        activations.Moments = engine


def network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == RESNET:
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10), (3, 32, 32)
    return common.benchmark_model(name), (1, 8, 8)


def images_for(name: str, shape: tuple[int, ...], count: int) -> torch.Tensor:
    """``count`` digits images shaped for the network (repeated if the pool is smaller)."""
    pool = common.digits_for("demo-vgg" if name.startswith("demo-") else "resnet18-32")["pool"].tensors[0]
    assert tuple(pool.shape[1:]) == shape, (pool.shape, shape)
    index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    return pool[index.repeat(-(-count // len(pool)))[:count]]


def run_model(name: str, args: argparse.Namespace) -> dict:
    device = args.device
    model, shape = network(name)
    model = model.to(device).eval()
    groups, _ = find_groups(model, torch.zeros(1, *shape, device=device))
    images = images_for(name, shape, args.images)
    batches = [b.to(device) for b in images.split(args.batch_size)]

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch)

    def collect(cls):
        def run():
            with moments_class(cls):
                return activations.collect_moments(model, groups, batches, device=device)[0]

        return run

    variants = {
        "forward": forward,
        "statistics": collect(activations.Moments),
        "statistics_float64": collect(Float64Moments),
        "hooks_only": collect(NoMoments),
    }
    for fn in variants.values():  # warm-up
        fn()
    common.synchronize(device)
    times: dict[str, list[float]] = {key: [] for key in variants}
    start = time.perf_counter()
    while len(times["forward"]) < args.repeats or (
        time.perf_counter() - start < args.min_seconds and len(times["forward"]) < 50
    ):
        for key, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            common.synchronize(device)
            times[key].append(time.perf_counter() - t0)
    seconds = {key: statistics.median(values) for key, values in times.items()}

    new, old = variants["statistics"](), variants["statistics_float64"]()
    differences = {}  # keyed by reader: the consumer's name (a group's own slice behind a concatenation)
    for group_key in new:
        key = group_key[1]
        a, b = new[group_key].covariance().cpu(), old[group_key].covariance().cpu()
        differences[key] = float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))
    products = {}  # which precision each group's per-batch products took, and their size
    for (_, key), m in new.items():
        rows = m.samples // len(batches)
        dtype = statistics_module._compute_dtype(torch.float32, rows, m.units)
        products[key] = {"units": m.units, "rows_per_batch": rows, "dtype": str(dtype).removeprefix("torch.")}
    macs = {key: p["rows_per_batch"] * p["units"] ** 2 for key, p in products.items()}
    float32_macs = sum(macs[key] for key, p in products.items() if p["dtype"] == "float32")
    row = {
        "input_shape": list(shape),
        "images": len(images),
        "batch_size": args.batch_size,
        "groups": {g.name: g.units for g in groups},
        "seconds": {key: {**common.mean_std(values), "median": seconds[key]} for key, values in times.items()},
        "ratio_to_forward": {key: seconds[key] / seconds["forward"] for key in variants if key != "forward"},
        "float64_over_new": seconds["statistics_float64"] / seconds["statistics"],
        "relative_covariance_difference": {"max": max(differences.values()), "by_group": differences},
        "products": products,
        "float32_share_of_product_macs": float32_macs / max(sum(macs.values()), 1),
    }
    ratios = row["ratio_to_forward"]
    common.log(
        f"{name}: forward {seconds['forward']:.3f} s; statistics / forward = {ratios['statistics']:.2f} "
        f"(float64 {ratios['statistics_float64']:.2f}, hooks only {ratios['hooks_only']:.2f})"
    )
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_args(parser)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="at least this many rounds of every variant")
    parser.add_argument("--min-seconds", type=float, default=20.0, help="and repeat rounds for at least this long")
    parser.add_argument(
        "--also-threads", nargs="*", type=int, default=[1], help="further torch thread counts to measure (CPU)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.images, args.repeats, args.min_seconds = ["demo-vgg"], 128, 1, 0.0
    if args.device != "cpu" or args.quick:
        args.also_threads = []
    common.default_out(args, "statistics_cost")
    common.set_threads(args.threads)
    data = common.run_header("statistics_cost", args, args.device)
    data["models"] = {name: run_model(name, args) for name in args.models}
    data["other_threads"] = {}
    for threads in args.also_threads:
        common.set_threads(threads)
        common.log(f"with {threads} thread(s):")
        data["other_threads"][str(threads)] = {name: run_model(name, args) for name in args.models}
    common.set_threads(args.threads)
    data["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    common.write_json(args.out, data)
    common.log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
