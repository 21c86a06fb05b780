"""Brute-force float64 references and small shared fixtures for the engine tests."""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch


def correlated_samples(samples: int, units: int, seed: int = 0, *, latent: int | None = None) -> np.ndarray:
    """(samples, units) float64 data with correlated units and non-zero means.

    With ``latent < units`` the units are linear combinations of ``latent`` sources (rank-deficient).
    """
    rng = np.random.default_rng(seed)
    latent = units if latent is None else latent
    sources = rng.standard_normal((samples, latent)) * rng.uniform(0.5, 3.0, latent)
    mixing = rng.standard_normal((latent, units))
    return sources @ mixing + rng.standard_normal(units)


def random_covariance(units: int, seed: int = 0, samples: int | None = None) -> torch.Tensor:
    """A well-conditioned float64 covariance of correlated units (from samples, centred, biased)."""
    x = correlated_samples(samples or 20 * units, units, seed)
    return torch.from_numpy(np.cov(x, rowvar=False, bias=True))


def random_metric(units: int, seed: int = 0, outputs: int = 5) -> torch.Tensor:
    """A PSD consumer metric Wᵀ W."""
    w = np.random.default_rng(seed + 1000).standard_normal((outputs, units))
    return torch.from_numpy(w.T @ w)


def conditional_covariance(cov: np.ndarray, kept) -> np.ndarray:
    """Schur complement S|K = C − C₋K C_KK⁻¹ C_K₋ (the residual covariance of all units given K)."""
    cov = np.asarray(cov, dtype=np.float64)
    kept = list(kept)
    if not kept:
        return cov.copy()
    cross = cov[:, kept]
    return cov - cross @ np.linalg.solve(cov[np.ix_(kept, kept)], cross.T)


def explained_reference(cov: np.ndarray, order, metric: np.ndarray | None = None) -> np.ndarray:
    """1 − tr(M S|first k)/tr(M C) for k = 0 … n, by explicit Schur complements."""
    cov = np.asarray(cov, dtype=np.float64)
    m = np.eye(cov.shape[0]) if metric is None else np.asarray(metric, dtype=np.float64)
    total = np.trace(m @ cov)
    order = [int(i) for i in order]
    return np.array([1 - np.trace(m @ conditional_covariance(cov, order[:k])) / total for k in range(len(order) + 1)])


def gram_schmidt(rows: np.ndarray) -> np.ndarray:
    """Unnormalised Gram–Schmidt of the rows (units) in the sample inner product ⟨a, b⟩ = mean(a b).

    Rows are centred first; returns Y with y_i = x_i − Σ_{j<i} (⟨x_i, y_j⟩/⟨y_j, y_j⟩) y_j.
    """
    x = rows - rows.mean(1, keepdims=True)
    y = np.zeros_like(x)
    for i in range(x.shape[0]):
        v = x[i].copy()
        for j in range(i):
            v -= (x[i] @ y[j]) / (y[j] @ y[j]) * y[j]
        y[i] = v
    return y


def is_permutation(order: torch.Tensor, n: int) -> bool:
    return sorted(int(i) for i in order.tolist()) == list(range(n))


# ------------------------------------------------------------------------------------- demo data


@functools.lru_cache(maxsize=1)
def digits():
    from snp_engine.data import load_data

    return load_data("digits")


@functools.lru_cache(maxsize=2)
def _demo(name: str) -> torch.nn.Module:
    from snp_engine.models import load_model

    return load_model(name).model


def demo_model(name: str) -> torch.nn.Module:
    """A fresh copy of a bundled demo model (eval mode, CPU)."""
    return copy.deepcopy(_demo(name)).eval()


def stacked(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of a small in-memory dataset."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.as_tensor(labels)


def outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(images).double()


# ------------------------------------------------------------------------------- distributed workers
# (module-level so that spawned processes can import them)


def _init_process_group(rank: int, world: int, init_method: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)


def moments_worker(rank: int, world: int, init_method: str, samples: torch.Tensor, out_dir: str) -> None:
    """Accumulate the moments of this rank's share of ``samples`` (in batches), then all-reduce them."""
    import torch.distributed as dist

    from snp_engine.statistics import Moments

    _init_process_group(rank, world, init_method)
    try:
        share = samples[rank::world]
        m = Moments.zeros(samples.shape[1])
        for batch in share.split(7):
            m.update(batch)
        local = m.samples
        m.all_reduce()
        torch.save({"local": local, **m.state()}, f"{out_dir}/moments{rank}.pt")
    finally:
        dist.destroy_process_group()


def analyze_worker(rank: int, world: int, init_method: str, model_name: str, out_dir: str) -> None:
    """``analyze(distributed=True)`` with this rank's contiguous share of the digits calibration split."""
    import torch.distributed as dist
    from torch.utils.data import Subset

    from snp_engine import api

    _init_process_group(rank, world, init_method)
    try:
        calibration = digits().calibration
        per_rank = len(calibration) // world
        share = Subset(calibration, range(rank * per_rank, (rank + 1) * per_rank))
        analysis = api.analyze(demo_model(model_name), share, distributed=True)
        torch.save(
            {
                g.name: {"state": g.moments.state(), "order": g.order, "curve": torch.from_numpy(g.curve)}
                for g in analysis.groups
            },
            f"{out_dir}/analysis{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def shared_orders_worker(rank: int, world: int, init_method: str, model_name: str, out_dir: str) -> None:
    """Like :func:`analyze_worker`, but any process other than 0 that tries to order fails."""
    import torch.distributed as dist
    from torch.utils.data import Subset

    from snp_engine import analysis as analysis_module
    from snp_engine import api

    _init_process_group(rank, world, init_method)
    try:
        if rank != 0:

            def refuse(*_args, **_kwargs):
                raise AssertionError("only process 0 orders the units")

            analysis_module._ordered = refuse
        calibration = digits().calibration
        share = Subset(calibration, range(rank, len(calibration), world))
        analysis = api.analyze(demo_model(model_name), share, distributed=True)
        torch.save(
            {g.name: {"order": g.order, "curve": torch.from_numpy(g.curve)} for g in analysis.groups},
            f"{out_dir}/shared{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every floating parameter moved by ``scale`` relative noise (seeded)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=generator))
    return other.eval()


class Recording(torch.utils.data.Dataset):
    """A dataset that notes which indices were read."""

    def __init__(self, dataset) -> None:
        self.dataset, self.read = dataset, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.read.append(int(index))
        return self.dataset[index]


def scoring_worker(rank: int, world: int, init_method: str, model_name: str, out_dir: str) -> None:
    """Which of 7 items this rank's evaluation shard holds, the distributed scores and fidelity, and
    which calibration images the dense check read."""
    import dataclasses

    import torch.distributed as dist

    from snp_engine.distributed import own_shard
    from snp_engine.evaluation import fidelity
    from snp_engine.workflows.measuring import score
    from snp_engine.workflows.preparation import check_dense

    _init_process_group(rank, world, init_method)
    try:
        shard = own_shard(list(range(7)))
        model = demo_model(model_name)
        found = score(model, digits(), batch_size=1, distributed=True)
        error = fidelity(model, perturbed(model), digits(), batch_size=1, distributed=True)
        calibration = Recording(digits().calibration)
        dense = check_dense(model, dataclasses.replace(digits(), calibration=calibration), distributed=True)
        torch.save(
            {
                "items": [shard[i] for i in range(len(shard))],
                "scores": found.to_dict(),
                "fidelity": error,
                "dense": (dense.top1, dense.samples) if dense is not None else None,
                "dense_read": sorted(calibration.read),
            },
            f"{out_dir}/scores{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def rewrite_safetensors(source, target, *, tensors=None, **metadata):
    """Copy a safetensors file, replacing some tensors and/or metadata values (to forge bad files)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        meta = {**handle.metadata(), **metadata}
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    state.update(tensors or {})
    save_file(state, str(target), metadata=meta)
    return target


def randomised_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with random BatchNorm statistics and affine terms, so no norm is the
    identity (a fresh BatchNorm is, and would hide mistakes in folding and removal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model.eval()


def random_images(count: int = 48, shape=(3, 8, 8), seed: int = 1):
    """A TensorDataset of ``count`` Gaussian images of ``shape`` with label 0."""
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, *shape, generator=gen), torch.zeros(count, dtype=torch.long))


def logits_of(model: torch.nn.Module, data) -> torch.Tensor:
    """The model's outputs on every image of a TensorDataset."""
    with torch.no_grad():
        return model(data.tensors[0])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())
