"""Statistics and evaluation summed over torch.distributed processes equal one process over all the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

from snp_engine import api
from snp_engine.distributed import Numbering, numbering, shard, shard_batch
from snp_engine.evaluation import fidelity
from snp_engine.residual import collect_block_moments, find_blocks
from snp_engine.runtime import batches_of
from snp_engine.statistics import Moments
from snp_engine.workflows.measuring import score
from snp_engine.workflows.preparation import check_dense
from tests.engine.distributed_workers import shifted_moments_worker
from tests.engine.helpers import (
    analyze_worker,
    correlated_samples,
    demo_model,
    digits,
    moments_worker,
    perturbed,
    scoring_worker,
    shared_orders_worker,
    stacked,
)

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available",
)

WORLD = 2


def _spawn(worker, tmp_path, *args) -> None:
    init_method = (tmp_path / "rendezvous").as_uri()
    mp.spawn(worker, args=(WORLD, init_method, *args, str(tmp_path)), nprocs=WORLD, join=True)


def test_all_reduce_equals_single_process(tmp_path):
    samples = torch.from_numpy(correlated_samples(203, 6, seed=0))
    _spawn(moments_worker, tmp_path, samples)

    single = Moments.zeros(6)
    single.update(samples)
    results = [torch.load(tmp_path / f"moments{rank}.pt") for rank in range(WORLD)]
    assert sorted(r["local"] for r in results) == [101, 102], "each process saw only its half"
    for result in results:
        reduced = Moments.from_state(result)
        assert reduced.samples == 203
        torch.testing.assert_close(reduced.mean(), single.mean(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(reduced.covariance(), single.covariance(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            reduced.covariance().numpy(), np.cov(samples.numpy(), rowvar=False, bias=True), rtol=1e-10, atol=1e-10
        )


def test_distributed_analyze_equals_single_process(tmp_path):
    _spawn(analyze_worker, tmp_path, "demo-vgg")

    single = api.analyze(demo_model("demo-vgg"), digits())
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"analysis{rank}.pt")
        assert list(result) == single.names
        for g in single.groups:
            reduced = Moments.from_state(result[g.name]["state"])
            assert reduced.samples == g.samples
            # float32 products on differently composed batches: equal to float32 round-off, not bit for bit
            scale = float(g.moments.covariance().abs().max())
            torch.testing.assert_close(reduced.covariance(), g.moments.covariance(), rtol=1e-6, atol=1e-6 * scale)
            torch.testing.assert_close(reduced.mean(), g.moments.mean(), rtol=1e-6, atol=1e-6 * scale**0.5)
            assert torch.equal(result[g.name]["order"], g.order)
            np.testing.assert_allclose(result[g.name]["curve"].numpy(), g.curve, rtol=1e-6, atol=1e-8)


def test_process_zero_alone_orders_and_shares_the_result(tmp_path):
    _spawn(shared_orders_worker, tmp_path, "demo-resnet")
    single = api.analyze(demo_model("demo-resnet"), digits())
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"shared{rank}.pt")
        for g in single.groups:
            assert torch.equal(result[g.name]["order"], g.order)
            np.testing.assert_allclose(result[g.name]["curve"].numpy(), g.curve, rtol=1e-6, atol=1e-8)


def test_distributed_evaluation_shards_the_set_and_sums_to_one_process(tmp_path):
    _spawn(scoring_worker, tmp_path, "demo-vgg")
    model = demo_model("demo-vgg")
    single = score(model, digits(), batch_size=1)
    error = fidelity(model, perturbed(model), digits(), batch_size=1)
    results = [torch.load(tmp_path / f"scores{rank}.pt") for rank in range(WORLD)]
    assert [r["items"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]  # image i on process i mod N
    for result in results:  # every process holds the numbers of the whole set, each image counted once
        assert result["scores"]["samples"] == single.samples == len(digits().test)
        assert result["scores"]["top1"] == single.top1 and result["scores"]["top5"] == single.top5
        assert result["scores"]["loss"] == pytest.approx(single.loss, rel=1e-12)
        assert result["fidelity"] == pytest.approx(error, rel=1e-12)
    dense = check_dense(model, digits())  # the first 256 calibration images, shared: i on process i mod 2
    assert [r["dense_read"] for r in results] == [list(range(0, 256, 2)), list(range(1, 256, 2))]
    for result in results:
        assert result["dense"][1] == dense.samples == 256 and result["dense"][0] == pytest.approx(dense.top1)


@pytest.mark.parametrize("batch", [1, 5])
def test_block_folds_follow_the_image_not_the_shard(batch):
    """A shard knows its images' numbers in the set: its block moments go to the fold of that image,
    so the shards' fold moments summed are one pass's over all images (3 shards of 37 images,
    sharded image by image or in whole batches of 5, read in batches of 5)."""
    model = demo_model("demo-resnet")
    images = Subset(digits().calibration, range(37))
    blocks = find_blocks(model, stacked(images)[0][:1])
    whole = collect_block_moments(model, blocks, batches_of(images, batch_size=5), folds=4)
    world = 3
    shards = [
        collect_block_moments(model, blocks, batches_of(shard(images, rank, world, batch), batch_size=5), folds=4)
        for rank in range(world)
    ]
    for block in blocks:
        for fold in range(4):
            summed = Moments.union([found[block.name][fold] for found in shards])
            one = whole[block.name][fold]
            assert summed.samples == one.samples == len(range(fold, 37, 4)) * block.shape[1] * block.shape[2]
            scale = float(one.covariance().abs().max())
            torch.testing.assert_close(summed.covariance(), one.covariance(), rtol=1e-6, atol=1e-6 * scale)
            torch.testing.assert_close(summed.mean(), one.mean(), rtol=1e-6, atol=1e-6 * scale**0.5)


@pytest.mark.parametrize(("size", "world", "batch"), [(37, 3, 5), (40, 2, 8), (64, 4, 16), (5, 2, 1), (9, 3, 4)])
def test_shards_are_whole_batches_that_cover_every_image_once(size, world, batch):
    parts = [shard(range(size), rank, world, batch) for rank in range(world)]
    assert sorted(i for part in parts for i in part.indices) == list(range(size))
    for rank, part in enumerate(parts):
        assert part.indices and all((i // batch) % world == rank for i in part.indices)
        chunks = [part.indices[k : k + batch] for k in range(0, len(part.indices), batch)]
        assert all(chunk == list(range(chunk[0], chunk[0] + len(chunk))) for chunk in chunks)  # one batch each
        assert all(chunk[0] % batch == 0 for chunk in chunks)
        assert numbering(batches_of(part, batch_size=batch)).of(0, len(part)).tolist() == list(part.indices)
        first = Subset(part, range(min(3, len(part))))  # a part of a shard keeps the numbers
        assert numbering(batches_of(first, batch_size=2)).of(0, len(first)).tolist() == part.indices[: len(first)]


def test_too_few_batches_for_the_processes_shard_in_smaller_ones():
    assert shard_batch(200, 2, 64) == 64 and shard_batch(65, 2, 64) == 64  # 2 batches: one each
    assert shard_batch(64, 2, 64) == 32 and shard_batch(5, 3, 64) == 2
    assert all(shard(range(5), rank, 3, shard_batch(5, 3, 64)).indices for rank in range(3))


def test_a_plain_loader_is_numbered_in_order_or_by_the_process_stride():
    loader = batches_of(Subset(digits().calibration, range(10)), batch_size=4)
    assert numbering(loader).of(3, 4).tolist() == [3, 4, 5, 6]
    assert Numbering(first=1, step=3).of(2, 2).tolist() == [7, 10]


def test_process_zeros_shifts_make_the_float32_products_those_of_one_process(tmp_path):
    """Images of 80 rows far from zero (their float32 products round visibly): summed image by image
    on 2 processes about process 0's first shift they equal one process to float64 round-off, where
    each process's own shift leaves float32 round-off."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, 8, generator=generator)
    images = 1000 + torch.randn(30, 80, 8, generator=generator) @ mixing
    _spawn(shifted_moments_worker, tmp_path, images)
    single = Moments.zeros(8)
    for image in images:
        single.update(image)
    cov, scale = single.covariance(), float(single.covariance().abs().max())
    results = [torch.load(tmp_path / f"shifted{rank}.pt") for rank in range(WORLD)]
    assert not torch.equal(
        results[0]["own"]["first_shift"], results[1]["own"]["first_shift"]
    )  # image 0's mean, image 1's
    for result in results:
        assert torch.equal(result["shared"]["first_shift"], single.shift)  # image 0's on both
        shared, own = Moments.from_state(result["shared"]), Moments.from_state(result["own"])
        assert shared.samples == own.samples == single.samples == 30 * 80
        assert float((shared.covariance() - cov).abs().max()) <= 1e-13 * scale
        assert float((own.covariance() - cov).abs().max()) > 1e-9 * scale  # what the shared shift removes
