"""``snp prune --remove-blocks N`` and the residual blocks ``snp info`` lists."""

from __future__ import annotations

import pytest
import torch

from snp_engine import io
from tests.cli.test_cli import assert_one_line_error, run, run_json


def test_info_lists_the_removable_blocks(capsys):
    result = run_json(capsys, "info", "--model", "demo-resnet")
    assert result["blocks"] == [{"name": "layer1.0", "units": 32, "layout": "conv"}]
    code, out, _ = run(capsys, "info", "--model", "torchvision:resnet18", "--input-size", "32")
    assert code == 0 and "removable residual blocks (5): layer1.0, layer1.1, layer2.1, layer3.1, layer4.1" in out


def test_prune_removes_a_block_then_channels_and_the_export_reloads(tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    result = run_json(
        capsys,
        "prune",
        "--model",
        "demo-resnet",
        "--data",
        "digits",
        "--samples",
        "128",
        "--remove-blocks",
        "1",
        "--flops-reduction",
        "0.5",
        "--out",
        str(out),
    )
    blocks = result["blocks"]
    assert blocks["removed"] == ["layer1.0"] and blocks["compensated"] and "fc" in blocks["refitted"]
    assert [s["name"] for s in blocks["scores"]] == ["layer1.0"] and 0 <= blocks["scores"][0]["unexplained"] <= 1
    assert 0 <= blocks["scores"][0]["reader_energy"] <= 1  # layer2.0's conv1 and downsample read it
    assert blocks["flops_after"] < blocks["flops_before"]
    assert abs(result["flops_after"] / result["flops_before"] - 0.5) < 0.05  # the target counts from the dense network
    assert not any(name.startswith("layer1.0.") for name in result["keep"])  # the block's channels are gone
    loaded = io.load_exported(out)
    assert isinstance(loaded.model.layer1[0], torch.nn.Identity) and loaded.pruning.blocks == ("layer1.0",)
    assert io.read_metadata(out)["settings"]["remove_blocks"] == 1
    info = run_json(capsys, "info", "--model", str(out))
    assert info["pruning"]["blocks"] == ["layer1.0"] and info["blocks"] == []


@pytest.mark.parametrize(
    ("count", "message"),
    [
        ("-1", "--remove-blocks must be 0 or more, got -1"),
        ("2", "cannot remove 2 blocks: the network has 1 removable blocks (layer1.0)"),
    ],
)
def test_bad_block_counts_are_one_line_errors(count, message, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "prune",
        "--model",
        "demo-resnet",
        "--data",
        "digits",
        "--samples",
        "32",
        "--remove-blocks",
        count,
        "--variance",
        "0.99",
        "--out",
        str(tmp_path / "x.safetensors"),
        "--quiet",
    )
    assert_one_line_error(code, out, err, message)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_network_without_blocks_and_statistics_files_are_refused(tmp_path, capsys):
    common = ["--data", "digits", "--samples", "32", "--variance", "0.99", "--out", str(tmp_path / "x.safetensors")]
    code, out, err = run(capsys, "prune", "--model", "demo-vgg", "--remove-blocks", "1", *common, "--quiet")
    assert_one_line_error(code, out, err, "cannot remove 1 blocks: the network has 0 removable blocks")
    stats = tmp_path / "s.safetensors"
    code, out, err = run(
        capsys, "prune", "--model", "demo-resnet", "--remove-blocks", "1", "--stats", str(stats), *common
    )
    assert_one_line_error(code, out, err, "do not combine it with --remove-blocks")


def test_auto_lets_the_flops_target_choose_the_blocks(tmp_path, capsys):
    out = tmp_path / "auto.safetensors"
    common = ["--model", "demo-resnet", "--data", "digits", "--samples", "128", "--flops-reduction", "0.5"]
    result = run_json(capsys, "prune", *common, "--remove-blocks", "auto", "--out", str(out))
    blocks = result["blocks"]
    assert blocks["mode"] == "auto" and [c["blocks"] for c in blocks["candidates"]] == [[], ["layer1.0"]]
    errors = {tuple(c["blocks"]): c["error"] for c in blocks["candidates"]}
    assert blocks["removed"] == list(min(errors, key=errors.get))  # the candidate closest to the dense logits
    assert all(abs(c["flops_after"] / result["flops_before"] - 0.5) < 0.03 for c in blocks["candidates"])
    assert abs(result["flops_after"] / result["flops_before"] - 0.5) < 0.03
    loaded = io.load_exported(out)
    assert loaded.pruning.blocks == tuple(blocks["removed"])
    assert io.read_metadata(out)["settings"]["remove_blocks"] == "auto"
    if blocks["removed"]:
        assert not any(name.startswith("layer1.0.") for name in result["keep"])
    code, text, _ = run(capsys, "prune", *common, "--remove-blocks", "auto", "--out", str(out))
    assert code == 0 and "the target chose" in text and "relative logit error on the calibration images" in text


def test_the_combined_plan_is_the_one_the_app_makes(tmp_path, capsys):
    """``--remove-blocks 1`` analyses what remains; the app plans on the network with its blocks
    (plan_with_blocks): both meet the target and remove the same block."""
    from snp_engine import workflows

    result = run_json(
        capsys,
        "prune",
        "--model",
        "demo-resnet",
        "--data",
        "digits",
        "--samples",
        "128",
        "--remove-blocks",
        "1",
        "--flops-reduction",
        "0.5",
        "--out",
        str(tmp_path / "one.safetensors"),
    )
    prepared = workflows.prepare("demo-resnet", "digits", dense_check=False)
    analysis = workflows.analyse(prepared, workflows.AnalysisOptions(samples=128))
    plan = workflows.plan_with_blocks(analysis, workflows.PlanTarget("flops", 0.5), result["blocks"]["removed"])
    after = analysis.cost(plan.keep)[1] - workflows.blocks_cost(analysis, result["blocks"]["removed"], plan.keep)[1]
    assert abs(after / result["flops_before"] - result["flops_after"] / result["flops_before"]) < 0.03


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variance", "0.99"], "--remove-blocks auto needs a --flops-reduction or --params-reduction target"),
    ],
)
def test_auto_needs_a_cost_target(args, message, tmp_path, capsys):
    common = ["--model", "demo-resnet", "--data", "digits", "--samples", "32", "--remove-blocks", "auto"]
    code, out, err = run(capsys, "prune", *common, *args, "--out", str(tmp_path / "x.safetensors"), "--quiet")
    assert_one_line_error(code, out, err, message)


@pytest.mark.parametrize(
    ("args", "given"),
    [
        (["--keep", "layer1.0.conv1=8"], "--keep layer1.0.conv1=8"),
        (["--flops-reduction", "0.6", "--lock", "layer1.0.conv1=8"], "--lock layer1.0.conv1=8"),
        (["--flops-reduction", "0.6", "--min-units", "layer1.0.conv1=4"], "--min-units layer1.0.conv1=4"),
    ],
)
def test_a_layer_of_a_removed_block_named_by_a_flag_is_a_one_line_error(args, given, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    code, text, err = run(
        capsys,
        "prune",
        *["--model", "demo-resnet", "--data", "digits", "--samples", "32", "--remove-blocks", "1"],
        *args,
        *["--out", str(out), "--quiet"],
    )
    message = f"{given}: 'layer1.0.conv1' is inside the residual block layer1.0, which --remove-blocks removed"
    assert_one_line_error(code, text, err, message)
    assert not out.exists()


def test_the_text_report_gives_the_removed_blocks_scores_with_their_readers_share(tmp_path, capsys):
    common = ["--model", "demo-resnet", "--data", "digits", "--samples", "64", "--remove-blocks", "1"]
    code, text, _ = run(capsys, "prune", *common, "--flops-reduction", "0.6", "--out", str(tmp_path / "x.safetensors"))
    (line,) = [line for line in text.splitlines() if line.strip().startswith("layer1.0 ") and "unexplained" in line]
    assert code == 0 and "branch" in line and "readers 0." in line
