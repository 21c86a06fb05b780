"""What the default ordering (the output-aware forward greedy) and its curve cost on wide layers,
before and after the lazy greedy, and how far the new curve is from the exact one.

Synthetic layers of n units: C = F Fᵀ + noise (F with n/4 columns and a decaying spectrum, the
shape of real layers' covariances) and a consumer metric M = Wᵀ W with W of n/4 rows (an MLP's
second linear layer). For every width, in one run and alternating between the variants, each
followed by the default (variance) curve ``subspace.explained_curve(C, order)``:

* ``factor``: ``subspace.forward_greedy(C, factor=W)`` — what the analysis runs for a consumer
  with fewer weight rows than inputs (it passes the rows with the metric);
* ``metric``: ``subspace.forward_greedy(C, M)`` — the metric given whole (any consumer);
* ``previous``: the implementation before the lazy greedy (kept below as
  :func:`previous_forward_greedy`), up to ``--previous-up-to`` units;
* ``exact``: ``forward_greedy(C, M, block=1)`` (one unit per step, float64). Deterministic, so
  its order is cached in ``benchmarks/.cache`` (it takes minutes at 4,096 units and about an hour
  of one core at 8,192); ``--exact-up-to`` bounds the widths it runs on.

Reported: seconds (wall and process CPU), the ratios previous / factor and previous / metric, and
the largest gap over every keep count k between each curve and the exact greedy's, for the
variance curve and the output (metric) curve.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/ordering_cost.py   # writes docs/benchmarks/ordering_cost.json
    python benchmarks/ordering_cost.py --device cuda --out /tmp/ordering_cost_cuda.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; see docs/benchmarks.md

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/ordering_cost.py``

from benchmarks import common
from snp_engine.subspace import explained_curve, forward_greedy, regularised, ridge_for

WIDTHS = (2048, 4096, 8192, 16384)


def synthetic_layer(n: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """C = F Fᵀ + diag(noise) with F (n × n/4) of column scales k^-1/2, and M = Wᵀ W, W (n/4 × n)."""
    cov, weight = synthetic_layer_and_weight(n, seed, device)
    return cov, weight.T @ weight


def synthetic_layer_and_weight(n: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """C as in :func:`synthetic_layer` and the consumer weight W (n/4 × n) of its metric."""
    gen = torch.Generator().manual_seed(seed)
    rank = max(n // 4, 1)
    factor = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    factor *= torch.arange(1, rank + 1, dtype=torch.float64) ** -0.5
    cov = factor @ factor.T
    cov.diagonal().add_(0.01 * (torch.rand(n, generator=gen, dtype=torch.float64) + 0.1))
    weight = torch.randn(rank, n, generator=gen, dtype=torch.float64)
    return cov.to(device), weight.to(device)


# ----------------------------------------------------------------------------------------------
# The previous implementation (snp_engine.subspace before the lazy greedy), for one reader


def previous_forward_greedy(cov: torch.Tensor, metric: torch.Tensor, block: int = 128) -> torch.Tensor:
    """The candidate-pool greedy it replaced: each round scores every unit from S₀, G₀, takes the
    2·``block`` best as candidates, picks among them (their gains kept exact) and ends after
    ``block`` picks or as soon as the best candidate falls below 1.05 times the best gain outside
    the candidates; then S₀ ← S₀ − U Uᵀ, Gᵀ ← Gᵀ − U Vᵀ in float32."""
    residual = regularised(cov, ridge_for(cov)).to(torch.float32)
    weighted = residual @ metric.to(torch.float32)  # Gᵀ = S M
    floor = 1e-4 * torch.diagonal(residual).double()
    n, device = residual.shape[0], residual.device
    remaining, available = torch.arange(n, device=device), torch.ones(n, dtype=torch.bool, device=device)
    dropped, order = 0, []
    while True:
        m = remaining.numel()
        if dropped * 8 > m:
            keep = available.nonzero().squeeze(1)
            residual, weighted = residual[keep][:, keep], weighted[keep][:, keep]
            floor, remaining, available, dropped = floor[keep], remaining[keep], available[keep], 0
            m = remaining.numel()
        if not bool(available.any()):
            break
        numerator = torch.cat(
            [(residual[i : i + 512] * weighted[i : i + 512]).sum(1).double() for i in range(0, m, 512)]
        )
        denominator = torch.diagonal(residual).double()
        gains = _previous_gain(numerator, denominator, floor).masked_fill(~available, -torch.inf)
        if not bool((gains > 0).any()):
            left = available.nonzero().squeeze(1)
            order.append(remaining[left[torch.argsort(denominator[left], descending=True, stable=True)]])
            break
        count = min(2 * block + 1, m)
        values, positions = torch.topk(gains, count)
        outside = float(values[-1]) if count < m else -float("inf")
        candidates = positions[:-1] if count < m else positions
        candidates = candidates[values[: candidates.numel()] > 0]
        picked = _previous_round(residual, weighted, candidates, numerator, denominator, floor, block, outside)
        chosen = candidates[picked]
        order.append(remaining[chosen])
        available[chosen] = False
        dropped += chosen.numel()
    return torch.cat(order)


def _previous_gain(numerator: torch.Tensor, denominator: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > floor, numerator / denominator.clamp_min(1e-300), 0.0).clamp_min(0)


def _previous_round(residual, weighted, candidates, numerator, denominator, floor, block, outside) -> torch.Tensor:
    count, m = candidates.numel(), residual.shape[0]
    columns, weighted_columns = residual[candidates], weighted[candidates]
    update, weighted_update = residual.new_empty(m, block), residual.new_empty(m, block)
    update_rows = residual.new_empty(count, block)
    num, den, floor = numerator[candidates].clone(), denominator[candidates].clone(), floor[candidates]
    alive = torch.ones(count, dtype=torch.bool, device=residual.device)
    picked: list[int] = []
    for p in range(min(block, count)):
        gains = _previous_gain(num, den, floor).masked_fill(~alive, -torch.inf)
        best = int(torch.argmax(gains))
        value = float(gains[best])
        if value <= 0 or (p > 0 and value < 1.05 * outside):
            break
        coefficients = update_rows[best, :p]
        pivot = max(float(den[best]), 1e-300)
        u = (columns[best] - update[:, :p] @ coefficients) / pivot**0.5
        mu = (weighted_columns[best] - weighted_update[:, :p] @ coefficients) / pivot**0.5
        uq = u[candidates]
        cross = (columns @ mu - update_rows[:, :p] @ (mu @ update[:, :p])).double()
        update_rows[:, p] = uq
        uq = uq.double()
        num -= 2 * uq * cross - uq**2 * float(torch.dot(u, mu))
        den -= uq**2
        update[:, p], weighted_update[:, p] = u, mu
        alive[best] = False
        picked.append(best)
    p = len(picked)
    weighted.addmm_(update[:, :p], weighted_update[:, :p].T, alpha=-1.0)
    residual.addmm_(update[:, :p], update[:, :p].T, alpha=-1.0)
    return torch.tensor(picked, dtype=torch.long, device=residual.device)


# ----------------------------------------------------------------------------------------------


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[torch.Tensor, dict]:
    common.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    common.synchronize(device)
    return result, {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def with_curve(order_fn: Callable[[], torch.Tensor], cov: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        order = order_fn()
        explained_curve(cov, order)  # the default (variance) curve, as the analysis computes it
        return order

    return run


def curve_gap(cov: torch.Tensor, metric: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> dict:
    variance = explained_curve(cov, first) - explained_curve(cov, second)
    output = explained_curve(cov, first, metric) - explained_curve(cov, second, metric)
    return {"variance": float(variance.abs().max()), "output": float(output.abs().max())}


def exact_order(n: int, cov: torch.Tensor, metric: torch.Tensor, device: str) -> tuple[torch.Tensor, dict]:
    """The exact greedy's order (cached: it is deterministic float64) and what computing it cost."""
    if n < 2048:  # seconds: not worth a file
        order, record = timed(lambda: forward_greedy(cov, metric, block=1), device)
        return order, {**record, "cached": False}
    path = common.CACHE_DIR / f"ordering_exact_n{n}_seed{n}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["order"].to(device), {"seconds": None, "cpu_seconds": stored["cpu_seconds"], "cached": True}
    order, record = timed(lambda: forward_greedy(cov, metric, block=1), device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"order": order.cpu(), "cpu_seconds": record["cpu_seconds"]}, path)
    return order, {**record, "cached": False}


def run_width(n: int, args) -> dict:
    cov, weight = synthetic_layer_and_weight(n, seed=n, device=args.device)
    metric = weight.T @ weight
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "factor": with_curve(lambda: forward_greedy(cov, factor=weight), cov),
        "metric": with_curve(lambda: forward_greedy(cov, metric), cov),
    }
    if n <= args.previous_up_to:
        variants["previous"] = with_curve(lambda: previous_forward_greedy(cov, metric), cov)
    times: dict[str, list[dict]] = {name: [] for name in variants}
    orders: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():  # alternating: a change of load hits every variant
            orders[name], record = timed(fn, args.device)
            record["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            times[name].append(record)
            common.log(f"n={n} {name}: {record['seconds']:.2f} s (cpu {record['cpu_seconds']:.2f} s)")
    row: dict = {"units": n}
    for name, records in times.items():
        row[name] = {
            "seconds": common.mean_std([r["seconds"] for r in records]),
            "cpu_seconds": common.mean_std([r["cpu_seconds"] for r in records]),
            "load_average": [r["load_average"] for r in records],
        }
        assert sorted(orders[name].tolist()) == list(range(n)), name
    if "previous" in times:
        for name in ("factor", "metric"):
            row[f"ratio_previous_over_{name}"] = row["previous"]["seconds"]["min"] / row[name]["seconds"]["min"]
    if n <= args.exact_up_to:
        exact, row["exact"] = exact_order(n, cov, metric, args.device)
        row["max_curve_gap"] = {name: curve_gap(cov, metric, exact, order) for name, order in orders.items()}
    return row


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_args(parser)
    parser.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the variants")
    parser.add_argument("--previous-up-to", type=int, default=8192, help="widest layer the previous one runs on")
    parser.add_argument("--exact-up-to", type=int, default=8192, help="widest layer compared with the exact greedy")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.repeats, args.previous_up_to, args.exact_up_to = [600], 1, 600, 600
    common.default_out(args, "ordering_cost")
    common.set_threads(args.threads)
    data = common.run_header("ordering_cost", args, args.device)
    data["widths"] = {}
    for n in args.widths:
        data["widths"][str(n)] = run_width(n, args)
        common.write_json(args.out, data)  # what finished so far survives an interrupted run
    data["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    common.write_json(args.out, data)
    common.log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
