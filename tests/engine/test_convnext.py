"""ConvNeXt's residual streams, read through layer norms over their channels
(:mod:`snp_engine.layernorm_streams`), against brute force on small ConvNeXt networks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from snp_engine import api
from snp_engine.analysis import Analysis
from snp_engine.costs import count
from snp_engine.groups import find_groups
from snp_engine.layernorm_streams import (
    kept_channels_norm,
    linearised_moments,
    restrict_norms,
    restricted,
    stream_norms,
)

STEM = "features.0.0"  # the first stage's stream group: the stem conv is its first producer
STAGE2 = "features.2.1"  # the second stage's: the downsample conv


def _randomise_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Layer norms with γ, β away from (1, 0), so that restricting them is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
    return model


def tiny_convnext(width: int = 8, seed: int = 0) -> ConvNeXt:
    torch.manual_seed(seed)
    config = [CNBlockConfig(width, 16, 2), CNBlockConfig(16, None, 1)]
    return _randomise_norms(ConvNeXt(config, num_classes=5, layer_scale=0.5).eval(), seed + 1)


def _data(images: int = 48, side: int = 32, seed: int = 0) -> TensorDataset:
    x = torch.randn(images, 3, side, side, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, torch.zeros(images, dtype=torch.long))


def _outputs(model: nn.Module, data: TensorDataset) -> torch.Tensor:
    with torch.no_grad():
        return model(data.tensors[0])


def test_stream_groups_are_found_with_their_layer_norms():
    model = tiny_convnext()
    groups, excluded = find_groups(model, torch.randn(1, 3, 32, 32))
    by_name = {g.name: g for g in groups}
    assert [e.reason for e in excluded] == ["network output"]
    stem = by_name[STEM]
    assert stem.units == 8
    assert stream_norms(model, stem) == (
        "features.0.1",
        "features.1.0.block.2",
        "features.1.1.block.2",
        "features.2.0",
    )
    assert [r.consumer for r in stem.readers] == ["features.1.0.block.3", "features.1.1.block.3", "features.2.1"]
    assert set(stem.all_producers) == {"features.0.0", "features.1.0.block.5", "features.1.1.block.5"}
    second = by_name[STAGE2]
    assert [r.consumer for r in second.readers] == ["features.3.0.block.3", "classifier.2"]
    assert "classifier.0" in stream_norms(model, second)
    assert stream_norms(model, by_name["features.1.0.block.3"]) == ()  # an MLP's hidden units: no norm


def test_restricted_norm_is_the_layer_norm_of_the_kept_channels():
    """LN_K(y_K): a layer norm over the kept channels alone, as physical removal leaves it."""
    model = tiny_convnext()
    kept = torch.tensor([0, 2, 3, 7])
    for name, shape in (("features.1.0.block.2", (4, 5, 5, 8)), ("features.0.1", (4, 8, 5, 5))):
        norm = model.get_submodule(name)
        y = torch.randn(shape)
        channels_last = y if name.endswith("block.2") else y.movedim(1, -1)
        small = nn.LayerNorm(4, eps=norm.eps)
        with torch.no_grad():
            small.weight.copy_(norm.weight[kept])
            small.bias.copy_(norm.bias[kept])
            expected = small(channels_last[..., kept])
        with torch.no_grad():
            got = kept_channels_norm(norm, y, kept)
            full = norm(y)
        got_last = got if name.endswith("block.2") else got.movedim(1, -1)
        torch.testing.assert_close(got_last[..., kept], expected, rtol=1e-5, atol=1e-6)
        removed = torch.tensor([i for i in range(8) if i not in kept.tolist()])
        assert float(got_last[..., removed].abs().max()) == 0.0
        # not channel-wise: the kept channels differ from the full layer norm's
        assert (
            float(
                (got_last[..., kept] - (full if name.endswith("block.2") else full.movedim(1, -1))[..., kept])
                .abs()
                .max()
            )
            > 1e-3
        )


@pytest.fixture(scope="module")
def analysed():
    model = tiny_convnext()
    data = _data()
    return model, data, api.analyze(model, data, batch_size=24)


@pytest.mark.parametrize("mode", ["one-shot", "sequential"])
def test_keep_all_reproduces_the_dense_network_exactly(analysed, mode):
    model, data, analysis = analysed
    kwargs = {"sequential": False} if mode == "one-shot" else {"data": data, "refit_unpruned": False}
    run = api.prune(model, analysis, analysis.plan(keep={}), **kwargs)
    assert float((_outputs(run.model, data) - _outputs(model, data)).abs().max()) == 0.0
    assert not restricted(run.model)


@pytest.mark.parametrize(
    "kwargs", [{"sequential": False}, {"sequential": False, "with_data": True}, {"with_data": True}]
)
def test_functional_and_physical_pruning_of_the_streams_agree(analysed, kwargs):
    """The restricted layer norms compute what the shrunk ones do; every shape loses the channels."""
    model, data, analysis = analysed
    kwargs = dict(kwargs)
    if kwargs.pop("with_data", False):
        kwargs["data"] = data
    plan = analysis.plan(keep={STEM: 5, STAGE2: 11})
    functional = api.prune(model, analysis, plan, physical=False, **kwargs).model
    assert restricted(functional)
    physical = api.prune(model, analysis, plan, **kwargs).model
    assert not restricted(physical)
    torch.testing.assert_close(_outputs(physical, data), _outputs(functional, data), rtol=1e-5, atol=1e-6)
    stage1, stage2 = physical.features[1][0], physical.features[3][0]
    assert physical.features[0][1].normalized_shape == (5,)
    assert stage1.layer_scale.shape == (5, 1, 1) and stage1.block[0].weight.shape[0] == 5
    assert stage1.block[2].weight.shape == (5,) and stage1.block[3].in_features == 5
    assert stage1.block[5].out_features == 5 and physical.features[2][0].weight.shape == (5,)
    assert physical.features[2][1].weight.shape[:2] == (11, 5)
    assert stage2.block[3].in_features == 11 and physical.classifier[0].weight.shape == (11,)
    assert physical.classifier[2].in_features == 11
    params, flops = count(physical, data.tensors[0][:1])
    planned_params, planned_flops = analysis.cost(plan.keep)
    assert flops == pytest.approx(planned_flops, rel=1e-9)
    assert params == planned_params  # layer norms and layer-scale vectors included


def _least_squares_output(pruned, dense, reader: str, kept: torch.Tensor, data) -> torch.Tensor:
    """Brute force: the reader's output W (c + A z̃_K) + b with [c, A] from numpy-style least squares
    of the dense reader input z on [1, z̃_K], z̃ the pruned network's reader input."""
    seen = {}

    def grab(key):
        def hook(_module, inputs):
            seen[key] = inputs[0].reshape(-1, inputs[0].shape[-1]).double()

        return hook

    handles = [
        pruned.get_submodule(reader).register_forward_pre_hook(grab("pruned")),
        dense.get_submodule(reader).register_forward_pre_hook(grab("dense")),
    ]
    with torch.no_grad():
        pruned(data.tensors[0])
        dense(data.tensors[0])
    for handle in handles:
        handle.remove()
    inputs = torch.cat([torch.ones(seen["pruned"].shape[0], 1, dtype=torch.float64), seen["pruned"][:, kept]], 1)
    # z'_K sums to a constant over K (a layer norm's output): one direction is null up to round-off
    solution = torch.linalg.lstsq(inputs, seen["dense"], rcond=1e-7, driver="gelsd").solution
    layer = dense.get_submodule(reader)
    return (inputs @ solution) @ layer.weight.double().T + layer.bias.double()


def test_the_first_reader_is_the_least_squares_fit_from_the_kept_normalised_channels(analysed):
    """One-shot with data: the stream's first reader reads z ≈ c + A z'_K, the least-squares fit from
    the kept channels' own layer norm towards the dense layer norm's output (brute force: lstsq on
    the samples of what the reader reads after pruning)."""
    model, data, analysis = analysed
    plan = analysis.plan(keep={STEM: 5})
    kept = torch.tensor(plan.kept[STEM])
    pruned = api.prune(model, analysis, plan, sequential=False, data=data, physical=False).model
    reader = "features.1.0.block.3"
    expected = _least_squares_output(pruned, model, reader, kept, data)
    fitted = _reader_output(pruned, reader, data)
    torch.testing.assert_close(fitted, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # the dense layer norm's statistics alone (one-shot without data) give a worse fit here
    plain = _reader_output(api.prune(model, analysis, plan, sequential=False, physical=False).model, reader, data)
    dense = _reader_output(model, reader, data)
    assert float((fitted - dense).pow(2).mean()) < float((plain - dense).pow(2).mean())


def _reader_output(model: nn.Module, reader: str, data) -> torch.Tensor:
    seen = {}

    def hook(_module, _inputs, output):
        seen["y"] = output.reshape(-1, output.shape[-1]).double()

    handle = model.get_submodule(reader).register_forward_hook(hook)
    with torch.no_grad():
        model(data.tensors[0])
    handle.remove()
    return seen["y"]


def _doubled(small: ConvNeXt) -> ConvNeXt:
    """The same network with its first stream written twice: channel m + i is a copy of channel i in
    every tensor of the stream (and each block's hidden units twice, so every layer's output is the
    small network's). A layer norm over [y; y] is [LN(y); LN(y)] (same mean and variance), so the
    doubled network computes what the small one does."""
    m = small.features[0][0].out_channels
    big = ConvNeXt([CNBlockConfig(2 * m, 16, 2), CNBlockConfig(16, None, 1)], num_classes=5, layer_scale=0.5).eval()
    state, twice = small.state_dict(), {}
    for key, value in state.items():
        twice[key] = value
    stream_rows = ["features.0.0.weight", "features.0.0.bias", "features.0.1.weight", "features.0.1.bias"]
    for b in range(2):
        p = f"features.1.{b}."
        stream_rows += [p + "layer_scale", p + "block.0.weight", p + "block.0.bias"]
        stream_rows += [p + "block.2.weight", p + "block.2.bias"]
        stream_rows += [p + "block.5.bias", p + "block.3.bias"]
        w1, w2 = state[p + "block.3.weight"], state[p + "block.5.weight"]
        twice[p + "block.3.weight"] = torch.cat([w1, w1], 1).repeat(2, 1) / 2  # hidden units twice, inputs twice
        twice[p + "block.5.weight"] = torch.cat([w2, w2], 1).repeat(2, 1) / 2
    stream_rows += ["features.2.0.weight", "features.2.0.bias"]
    for key in stream_rows:
        twice[key] = torch.cat([state[key], state[key]], 0)
    down = state["features.2.1.weight"]
    twice["features.2.1.weight"] = torch.cat([down, down], 1) / 2
    big.load_state_dict(twice)
    return big


@pytest.mark.parametrize("mode", ["one-shot", "sequential"])
def test_a_stream_written_twice_loses_its_copies_with_no_output_change(mode):
    """Removing every copy keeps the mean and variance the layer norms see: LN_K(y_K) = LN(y)_K, and
    each reader's refit folds the copies' weights into the kept ones; the ordering puts the copies
    last. (Removing one duplicate alone moves the kept channels' mean: not exact, and not asserted.)"""
    small = tiny_convnext()
    big = _doubled(small)
    data = _data()
    torch.testing.assert_close(_outputs(big, data), _outputs(small, data), rtol=1e-4, atol=1e-5)
    analysis = api.analyze(big, data, batch_size=24)
    plan = analysis.plan(keep={STEM: 8})
    kept = set(plan.kept[STEM])
    assert {i % 8 for i in kept} == set(range(8)), "one channel of each copy pair is kept"
    kwargs = {"sequential": False} if mode == "one-shot" else {"data": data}
    pruned = api.prune(big, analysis, plan, **kwargs).model
    assert pruned.features[0][1].normalized_shape == (8,)
    dense = _outputs(small, data)
    error = float((_outputs(pruned, data) - dense).abs().max()) / float(dense.abs().max())
    assert error < 1e-3
    # the same count kept at random (copies of some channels, others lost) changes the outputs
    other = analysis.plan_for({STEM: 8})
    lossy = dict(other.kept)
    lossy[STEM] = tuple(range(4)) + tuple(range(8, 12))
    pruned = api.prune(big, analysis, dataclasses.replace(other, kept=lossy), **kwargs).model
    assert float((_outputs(pruned, data) - dense).abs().max()) / float(dense.abs().max()) > 100 * error


def test_sequential_fit_keeps_its_restriction_per_group_only(analysed):
    """Pruning one stream restricts only that stream's layer norms."""
    model, data, analysis = analysed
    plan = analysis.plan(keep={STAGE2: 10})
    pruned = api.prune(model, analysis, plan, data=data, physical=False).model
    names = {n for n, m in pruned.named_modules() if "_snp_kept_channels" in vars(m)}
    assert names == {"features.3.0.block.2", "classifier.0"}
    untouched = copy.deepcopy(pruned)
    restrict_norms(untouched, names, range(16))  # keep-all releases them
    assert not restricted(untouched)


@pytest.mark.parametrize("conv_mlp", [True, False])
def test_timm_convnext_streams_prune_and_shrink(conv_mlp):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=5, conv_mlp=conv_mlp).eval()
    _randomise_norms(model)
    data = _data(images=16)
    analysis = api.analyze(model, data, batch_size=16, max_positions=32)
    streams = [g.name for g in analysis.groups if stream_norms(model, g.group)]
    assert streams == ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"]
    exact = api.prune(model, analysis, analysis.plan(keep={}), sequential=False).model
    assert float((_outputs(exact, data) - _outputs(model, data)).abs().max()) == 0.0
    plan = analysis.plan(keep={"stem.0": 30, "stages.3.downsample.1": 200})
    functional = api.prune(model, analysis, plan, sequential=False, physical=False).model
    physical = api.prune(model, analysis, plan, sequential=False).model
    torch.testing.assert_close(_outputs(physical, data), _outputs(functional, data), rtol=1e-5, atol=1e-6)
    assert physical.stem[1].weight.shape == (30,) and physical.head.norm.weight.shape == (200,)
    assert physical.stages[0].blocks[0].gamma.shape == (30,)
    assert physical.head.fc.in_features == 200
    assert count(physical, data.tensors[0][:1]) == pytest.approx(analysis.cost(plan.keep), rel=1e-9)


@pytest.mark.slow
def test_torchvision_convnext_prunes_its_streams_exports_and_reloads():
    from benchmarks.zoo import check_model

    row = check_model("convnext_tiny", side=32)
    assert row["status"] == "pruned", row.get("message")
    assert row["excluded_reasons"] == ["network output"]
    assert row["coupled"] == 4
    assert row["keep_all_max_diff"] == 0.0
    assert row["reduction"] == pytest.approx(0.3, abs=0.02)
    assert row["reload_max_diff"] == 0.0


def test_streams_prune_the_same_from_a_statistics_file(analysed, tmp_path):
    """The stream's layer norms travel with its group in the statistics file (as channel-wise
    modules), so pruning from saved statistics restricts and refits the same way."""
    model, data, analysis = analysed
    analysis.save(tmp_path / "stats.safetensors")
    loaded = Analysis.load(tmp_path / "stats.safetensors")
    group = next(g for g in loaded.groups if g.name == STEM)
    assert "features.2.0" in stream_norms(model, group.group)
    plan = analysis.plan(keep={STEM: 6})
    again = loaded.plan(keep={STEM: 6})
    assert again.kept == plan.kept
    first = _outputs(api.prune(model, analysis, plan, data=data).model, data)
    second = _outputs(api.prune(model, loaded, again, data=data).model, data)
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-6)


def test_without_coupled_groups_the_streams_are_left_alone():
    model = tiny_convnext()
    groups, excluded = find_groups(model, torch.randn(1, 3, 32, 32), coupled=False)
    assert {g.name for g in groups} == {"features.1.0.block.3", "features.1.1.block.3", "features.3.0.block.3"}
    reasons = {e.name: e.reason for e in excluded}
    assert reasons[STEM].startswith("coupled across 3 layers")
    assert reasons[STAGE2].startswith("coupled across 2 layers")


def test_the_data_free_moments_are_those_of_the_linearised_kept_norm():
    """linearised_moments against samples: z'_K ≈ γ_K ⊙ P u_K / ŝ + β_K computed entry by entry, and
    equal to LN_K(y_K) itself where every position's kept entries have the same spread (a stream
    written twice, keeping one copy of each channel: P u_K = u_K, ŝ = s_K = 1)."""
    gen = torch.Generator().manual_seed(0)
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(6, generator=gen))
        norm.bias.copy_(0.2 * torch.randn(6, generator=gen))
    y = torch.randn(4000, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 5])
    with torch.no_grad():
        z = norm.double()(y)
    cross, kept_cov, kept_mean = linearised_moments(
        torch.cov(z.T, correction=0), z.mean(0), norm.weight, norm.bias, kept
    )
    u = (z - norm.bias) / norm.weight
    centred = u[:, kept] - u[:, kept].mean(1, keepdim=True)
    scale = centred.pow(2).mean()  # ŝ² = E‖P u_K‖² / k
    linear = norm.weight[kept] * centred / scale.sqrt() + norm.bias[kept]
    joint = torch.cov(torch.cat([z, linear], 1).T, correction=0)
    torch.testing.assert_close(kept_mean, linear.mean(0).detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kept_cov, joint[6:, 6:].detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cross, joint[:6, 6:].detach(), rtol=1e-9, atol=1e-9)
    # a stream written twice: the linearisation is LN_K exactly
    half = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    twice = torch.cat([half, half], 1)
    with torch.no_grad():
        z = norm(twice)
        exact = kept_channels_norm(norm, twice, torch.tensor([0, 1, 2]))[:, :3]
    cross, kept_cov, kept_mean = linearised_moments(
        torch.cov(z.T, correction=0), z.mean(0), norm.weight, norm.bias, torch.tensor([0, 1, 2])
    )
    # up to the norm's ε: ŝ² = E[σ²/(σ² + ε)], not 1
    torch.testing.assert_close(kept_mean, exact.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kept_cov, torch.cov(exact.T, correction=0), rtol=1e-4, atol=1e-4)


def test_one_shot_without_data_fits_the_linearised_norm(analysed):
    """One-shot without data refits the stream's readers from the linearised LN_K: far better than
    dropping the channels, close to the fit from data."""
    model, data, analysis = analysed
    plan = analysis.plan(keep={STAGE2: 10})
    dense = _outputs(model, data)

    def error(**kwargs) -> float:
        out = _outputs(api.prune(model, analysis, plan, sequential=False, **kwargs).model, data)
        return float((out - dense).pow(2).mean() / dense.pow(2).mean())

    dropped, data_free, from_data = error(compensate=False), error(), error(data=data)
    assert data_free < 0.5 * dropped
    assert data_free < 1.5 * from_data


class PreNorm(nn.Module):
    """x + fc(LN(x)): a pre-norm residual block whose stream is also read without a norm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


@pytest.mark.parametrize("mode", ["one-shot", "one-shot with data", "sequential"])
def test_a_stream_read_with_and_without_a_layer_norm(mode):
    """The last layer reads the stream itself (no norm): it is compensated as any stream reader,
    the blocks' layers from their restricted norms; the functional and physical results agree."""
    torch.manual_seed(0)
    model = _randomise_norms(nn.Sequential(nn.Linear(6, 8), *[PreNorm(8) for _ in range(3)], nn.Linear(8, 3)).eval())
    x = torch.randn(256, 6) @ torch.randn(6, 6)
    data = TensorDataset(x, torch.zeros(256, dtype=torch.long))
    analysis = api.analyze(model, data, batch_size=64)
    stream = analysis.group("0")
    assert sorted(stream_norms(model, stream.group)) == ["1.norm", "2.norm", "3.norm"]
    assert [r.consumer for r in stream.group.readers] == ["1.fc", "2.fc", "3.fc", "4"]
    kwargs = {"one-shot": {"sequential": False}, "one-shot with data": {"sequential": False, "data": data}}
    kwargs = kwargs.get(mode, {"data": data})
    exact = api.prune(model, analysis, analysis.plan(keep={}), **kwargs).model
    assert float((_outputs(exact, data) - _outputs(model, data)).abs().max()) == 0.0
    plan = analysis.plan(keep={"0": 6})
    functional = api.prune(model, analysis, plan, physical=False, **kwargs).model
    physical = api.prune(model, analysis, plan, **kwargs).model
    torch.testing.assert_close(_outputs(physical, data), _outputs(functional, data), rtol=1e-5, atol=1e-6)
    assert physical[1].norm.normalized_shape == (6,) and physical[4].in_features == 6
    dropped = _outputs(api.prune(model, analysis, plan, compensate=False, sequential=False).model, data)
    dense = _outputs(model, data)
    assert float((_outputs(physical, data) - dense).pow(2).mean()) < float((dropped - dense).pow(2).mean())


def test_the_workflows_one_shot_fits_the_streams_from_the_calibration_data(analysed):
    """What the command line and the app run (workflows.prune, one-shot) hands the calibration data
    to the streams' fit: the same network as api.prune with data, not the data-free linearised fit."""
    from snp_engine.architectures import LoadedModel
    from snp_engine.datasources.base import DataBundle
    from snp_engine.workflows.jobs import prune as prune_job
    from snp_engine.workflows.preparation import Prepared

    model, data, analysis = analysed
    plan = analysis.plan(keep={STAGE2: 10})
    bundle = DataBundle("made", None, data, data, 10, 3, (32, 32))
    loaded = LoadedModel(model, "made", "convnext", 10, (3, 32, 32), "random init")
    prepared = Prepared(loaded, bundle, bundle, (3, 32, 32))
    job = _outputs(prune_job(prepared, analysis, plan, compensation="one-shot", batch_size=24).model, data)
    with_data = _outputs(api.prune(model, analysis, plan, sequential=False, data=data, batch_size=24).model, data)
    data_free = _outputs(api.prune(model, analysis, plan, sequential=False).model, data)
    torch.testing.assert_close(job, with_data, rtol=0, atol=0)
    assert not torch.equal(job, data_free)


def test_info_names_the_layer_norms_a_stream_is_read_through(tmp_path, capsys):
    import json

    from snp_engine.cli import main

    path, model = tmp_path / "tiny_convnext.pt", tiny_convnext()
    torch.save(model, path)
    main(["info", "--model", str(path), "--trust", "--input-size", "32", "--json", "--quiet"])
    groups = {g["name"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    norms = groups[STAGE2]["layer_norms"]
    assert norms and all(isinstance(model.get_submodule(name), nn.LayerNorm) for name in norms)
    assert "layer_norms" not in groups["features.3.0.block.3"]  # an MLP's hidden units: no stream
    main(["info", "--model", str(path), "--trust", "--input-size", "32", "--quiet"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith(STAGE2))
    assert f"through {len(groups[STAGE2]['layer_norms'])} layer norms" in line
