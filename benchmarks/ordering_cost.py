"""What the default ordering (the output-aware forward greedy) and its curve cost on wide layers,
before and after the blocked float32 greedy, and how far the new curve is from the exact one.

Synthetic layers of n units: C = F Fᵀ + noise (F with n/4 columns and a decaying spectrum, the
shape of real layers' covariances) and a consumer metric M = Wᵀ W with W of n/4 rows (an MLP's
second linear layer). For every width, in one run and alternating between the variants:

* ``new``: ``subspace.forward_greedy(C, M)`` plus the default (variance) curve
  ``subspace.explained_curve(C, order)``;
* ``old``: the previous implementation (kept below as :func:`old_forward_greedy`: float64, blocks
  of n/128 mutually uncorrelated units per step) plus the same curve;
* ``exact``: ``forward_greedy(C, M, block=1)`` (one unit per step, float64), where affordable.

Reported: seconds (wall and process CPU), the ratio old / new, and the largest gap over every keep
count k between the new curve and the exact greedy's (or, where the exact one is not run, the
old one's), for the variance curve and the output (metric) curve.

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
    gen = torch.Generator().manual_seed(seed)
    rank = max(n // 4, 1)
    factor = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    factor *= torch.arange(1, rank + 1, dtype=torch.float64) ** -0.5
    cov = factor @ factor.T + torch.diag(0.01 * (torch.rand(n, generator=gen, dtype=torch.float64) + 0.1))
    weight = torch.randn(rank, n, generator=gen, dtype=torch.float64)
    return cov.to(device), (weight.T @ weight).to(device)


# ----------------------------------------------------------------------------------------------
# The previous implementation (snp_engine.subspace before the blocked float32 greedy)


def old_forward_greedy(
    cov: torch.Tensor,
    metric: torch.Tensor | None = None,
    block: int | None = None,
    more: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
) -> torch.Tensor:
    """Greedy forward selection minimising E(K) = tr(M S|K), S|K the residual covariance given K.

    Keeping unit j lowers E by s_jᵀ M s_j / S_jj (s_j = S₋ⱼ): pick the largest, then update
    S ← S − s_j s_jᵀ / S_jj and G = M S ← G − (M s_j) s_jᵀ / S_jj. O(n²) per step, O(n³) in all.
    With M = I it keeps the unit that explains most of the remaining total variance.

    A group read by several layers (``more`` holds the further readers' (C_r, M_r), ``None`` for
    M_r = I) minimises Σ_r tr(M_r S_r|K) / tr(M_r C_r): every reader's share of lost output
    energy, summed — the gain of unit j is the weighted sum of its gains at the readers, and each
    reader's S_r, G_r is updated as above. O(R n²) per step.

    Rows and columns of kept units are zero in S (their residual is nil), so the matrices are
    compacted to the still-available units from time to time. Layers wider than
    ``EXACT_GREEDY_UNITS`` take the ``block`` best mutually uncorrelated units per step (default
    n / 128, rounded up) with one block update S ← S − S₋B S_BB⁻¹ S_B₋, which keeps thousands of
    units tractable; on redundant synthetic layers of 1,024 units the curve moved by < 1e-4.
    """
    residuals, weighteds, scales = [], [], []
    for c, m in [(cov, metric), *more]:
        residual = regularised(c, ridge_for(c))
        weighted = residual.clone() if m is None else m.to(residual) @ residual
        residuals.append(residual)
        weighteds.append(weighted)
        scales.append(1.0 if not more else 1.0 / max(float(torch.diagonal(weighted).sum()), 1e-300))
    n = residuals[0].shape[0]
    if block is None:
        block = 1 if n <= 512 else -(-n // 128)
    remaining = torch.arange(n, device=cov.device)  # original index of each row
    available = torch.ones(n, dtype=torch.bool, device=cov.device)
    order: list[int] = []
    while available.any():
        if (~available).sum() * 4 > available.numel():
            keep = available.nonzero().squeeze(1)
            residuals = [r[keep][:, keep] for r in residuals]
            weighteds = [w[keep][:, keep] for w in weighteds]
            remaining, available = remaining[keep], available[keep]
        gains = sum(
            scale * (r * w).sum(0) / torch.diagonal(r).clamp_min(1e-300)
            for r, w, scale in zip(residuals, weighteds, scales, strict=True)
        )
        gains = gains.masked_fill(~available, -torch.inf)
        chosen = _diverse_top(gains, residuals[0], min(block, int(available.sum())))
        if chosen.numel() == 0:  # no finite gain left (round-off on a singular covariance): keep index order
            chosen = available.nonzero().squeeze(1)[:1]
        order.extend(int(i) for i in remaining[chosen])
        available[chosen] = False
        for r, w in zip(residuals, weighteds, strict=True):
            _condition_on(r, w, chosen)
    return torch.tensor(order, device=cov.device)


def _diverse_top(gains: torch.Tensor, residual: torch.Tensor, count: int, max_correlation: float = 0.3) -> torch.Tensor:
    """The best ``count`` candidates by gain, skipping any whose residual correlates with one already
    taken in this block — two copies of a redundant pair have the top gains together, and taking
    both at once is exactly the mistake a one-shot ranking makes."""
    candidates = torch.topk(gains, min(4 * count, int(torch.isfinite(gains).sum()))).indices
    if count == 1:
        return candidates[:1]
    scale = torch.diagonal(residual).clamp_min(1e-300).sqrt()
    correlation = (residual[candidates][:, candidates] / scale[candidates, None] / scale[None, candidates]).abs()
    taken: list[int] = []
    for position in range(len(candidates)):
        if all(correlation[position, other] < max_correlation for other in taken):
            taken.append(position)
            if len(taken) == count:
                break
    return candidates[taken]


def _condition_on(residual: torch.Tensor, weighted: torch.Tensor, chosen: torch.Tensor) -> None:
    """In place: S ← S − S₋B S_BB⁻¹ S_B₋ and G ← G − G₋B S_BB⁻¹ S_B₋ (rank-|B| Schur update)."""
    pivot = residual[chosen][:, chosen]
    if chosen.numel() == 1:
        # rank-one, in place: no n×n temporaries (a large share of the time on wide layers)
        column, weighted_column = residual[:, chosen[0]].clone(), weighted[:, chosen[0]].clone()
        alpha = -1.0 / float(pivot.clamp_min(1e-300))
        weighted.addr_(weighted_column, column, alpha=alpha)
        residual.addr_(column, column, alpha=alpha)
        return
    else:
        pivot = pivot + 1e-12 * torch.diagonal(pivot).mean() * torch.eye(
            len(chosen), dtype=pivot.dtype, device=pivot.device
        )
        update = torch.linalg.solve(pivot, residual[chosen])
    weighted.sub_(weighted[:, chosen] @ update)
    residual.sub_(residual[:, chosen] @ update)


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


def run_width(n: int, args) -> dict:
    cov, metric = synthetic_layer(n, seed=n, device=args.device)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "new": with_curve(lambda: forward_greedy(cov, metric), cov),
    }
    if n <= args.old_up_to:
        variants["old"] = with_curve(lambda: old_forward_greedy(cov, metric), cov)
    if n <= args.exact_up_to:
        variants["exact"] = with_curve(lambda: forward_greedy(cov, metric, block=1), cov)
    times: dict[str, list[dict]] = {name: [] for name in variants}
    orders: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        for name, fn in variants.items():  # alternating: a change of load hits every variant
            if name == "exact" and repeat > 0:
                continue
            orders[name], record = timed(fn, args.device)
            times[name].append(record)
            common.log(f"n={n} {name}: {record['seconds']:.2f} s (cpu {record['cpu_seconds']:.2f} s)")
    row: dict = {"units": n}
    for name, records in times.items():
        row[name] = {
            "seconds": common.mean_std([r["seconds"] for r in records]),
            "cpu_seconds": common.mean_std([r["cpu_seconds"] for r in records]),
        }
        assert sorted(orders[name].tolist()) == list(range(n)), name
    if "old" in times:
        row["ratio_old_over_new"] = row["old"]["seconds"]["min"] / row["new"]["seconds"]["min"]
        row["cpu_ratio_old_over_new"] = row["old"]["cpu_seconds"]["min"] / row["new"]["cpu_seconds"]["min"]
    reference = "exact" if "exact" in orders else "old" if "old" in orders else None
    if reference is not None:
        row["gap_reference"] = reference
        row["max_curve_gap"] = curve_gap(cov, metric, orders[reference], orders["new"])
    if "old" in orders and reference == "exact":
        row["old_max_curve_gap"] = curve_gap(cov, metric, orders["exact"], orders["old"])
    return row


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_args(parser)
    parser.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the new and old variants")
    parser.add_argument("--old-up-to", type=int, default=8192, help="widest layer the old implementation runs on")
    parser.add_argument("--exact-up-to", type=int, default=2048, help="widest layer the exact greedy runs on")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.repeats, args.old_up_to, args.exact_up_to = [600], 1, 600, 600
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
