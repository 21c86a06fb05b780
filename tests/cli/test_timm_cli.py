"""The command line on timm models: ``timm:NAME`` specs for info and prune, and the export they give."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import assert_one_line_error, run, run_json

pytest.importorskip("timm")


def test_info_on_a_timm_model(capsys):
    result = run_json(capsys, "info", "--model", "timm:resnet18")
    assert result["arch"] == "timm:resnet18" and result["source"] == "random init"
    assert result["num_classes"] == 1000 and result["input_shape"] == [3, 224, 224]
    assert result["params"] == 11_689_512 and result["flops"] > 0
    assert result["groups"][0]["name"] == "conv1" and len(result["groups"]) >= 10


def test_prune_a_timm_model_to_an_export_that_loads_without_code(tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    result = run_json(
        capsys,
        "prune",
        "--model",
        "timm:mobilenetv3_small_100",
        "--data",
        "digits",
        "--input-size",
        "32",
        "--samples",
        "64",
        "--flops-reduction",
        "0.3",
        "--one-shot",
        "--out",
        str(out),
    )
    assert result["flops_after"] <= 0.71 * result["flops_before"]
    again = run_json(capsys, "info", "--model", str(out))
    assert again["arch"] == "timm:mobilenetv3_small_100" and again["input_shape"] == [3, 32, 32]
    assert again["params"] == result["params_after"] < result["params_before"]


def test_an_unknown_timm_model_is_one_line_with_close_names(capsys):
    code, out, err = run(capsys, "info", "--model", "timm:resnet1")
    assert_one_line_error(code, out, err, "unknown timm model 'resnet1'; did you mean: resnet18")
