"""Every benchmark script runs in its tiny ``--quick`` setting and writes strict, finite JSON with the
keys the docs read. In-process (imports are shared), one thread, nothing written under docs/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def _strict_load(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{path.name}: non-finite number {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _check(path: Path, keys: tuple[str, ...]) -> dict:
    data = _strict_load(path)
    assert all(math.isfinite(x) for x in _numbers(data))
    for key in ("benchmark", "machine", "settings", *keys):
        assert key in data, f"{path.name} lacks '{key}'"
    assert data["machine"]["torch"] and data["machine"]["cores"] >= 1
    return data


def _args(tmp_path: Path, name: str) -> list[str]:
    return ["--quick", "--threads", "1", "--out", str(tmp_path / f"{name}.json")]


def test_quality_quick(tmp_path):
    from benchmarks import quality

    quality.main(_args(tmp_path, "quality"))
    data = _check(tmp_path / "quality.json", ("models",))
    model = data["models"]["demo-vgg"]
    assert set(model["methods"]) == {"output+seq", "tp-magnitude"}
    for method in model["methods"].values():
        row = method["0.5"]
        assert 0 <= row["top1"]["mean"] <= 100 and row["fidelity"]["mean"] >= 0
        assert abs(row["flops_reduction"]["mean"] - 0.5) < 0.03  # torch-pruning matched within its granularity
    assert set(model["allocation"]) == {"threshold", "uniform", "greedy"}
    assert "32" in model["samples_sweep"]
    assert set(model["finetune"]) == {"output+seq"}
    assert {"top1_before", "top1_after"} <= set(model["finetune"]["output+seq"]["0.5"])


def test_cost_quick(tmp_path):
    from benchmarks import cost

    cost.main(_args(tmp_path, "cost"))
    data = _check(tmp_path / "cost.json", ("models", "width", "orderings"))
    row = data["models"]["demo-vgg"]["by_samples"]["32"]
    assert row["ratio"] > 0 and row["forward"]["seconds"] > 0
    assert set(data["width"]) == {"mlp", "conv"}
    assert set(data["orderings"]["by_ordering"]) == {"output", "zca"}
    assert data["orderings"]["by_ordering"]["output"]["by_width"]["64"]["status"] == "done"


def test_speedup_quick(tmp_path):
    from benchmarks import speedup

    speedup.main(_args(tmp_path, "speedup"))
    data = _check(tmp_path / "speedup.json", ("cases",))
    variants = data["cases"]["demo-vgg"]["variants"]
    assert set(variants) == {"dense", "threshold", "uniform"}
    assert variants["threshold"]["flops_ratio"] < 0.55
    assert variants["threshold"]["speedup_batch1"] > 0 and variants["uniform"]["speedup_batch8"] > 0


def test_distributed_quick(tmp_path):
    from benchmarks import distributed

    distributed.main(_args(tmp_path, "distributed"))
    data = _check(tmp_path / "distributed.json", ("runs",))
    worst = data["runs"]["1"]["comparison"]["worst"]
    assert worst["all_orders_equal"] and worst["same_sample_counts"]
    assert worst["max_abs_diff_covariance"] < 1e-9


def test_gui_latency_quick(tmp_path):
    pytest.importorskip("PySide6")
    import gc

    from benchmarks import gui_latency

    automatic = gc.isenabled()
    gui_latency.main(_args(tmp_path, "gui_latency"))  # collects garbage in the GUI thread only, as the app
    assert gc.isenabled() == automatic  # and leaves the collector as it found it
    data = _check(tmp_path / "gui_latency.json", ("event_loop_idle", "event_loop_during_analysis", "interactions"))
    interactions = data["interactions"]
    assert interactions["groups"] > 0
    for kind in ("drag", "threshold_variance", "threshold_flops"):
        assert interactions[kind]["keep_updates"] >= 1
        assert interactions[kind]["render"]["median_ms"] >= interactions[kind]["handlers"]["median_ms"]


def test_holdout_quick(tmp_path):
    from benchmarks import holdout

    holdout.main(_args(tmp_path, "holdout"))
    data = _check(tmp_path / "holdout.json", ("models",))
    cell = data["models"]["demo-vgg"]["by_samples"]["32"]["0.5"]
    assert set(cell) == {"one-shot", "sequential-fixed", "sequential-heldout", "heldout_fits"}
    assert 0 <= cell["sequential-heldout"]["top1"]["mean"] <= 100
    assert sum(cell["heldout_fits"].values()) >= 1


def test_calibration_quick(tmp_path):
    from benchmarks import calibration

    calibration.main(_args(tmp_path, "calibration"))
    data = _check(tmp_path / "calibration.json", ("models",))
    cell = data["models"]["demo-vgg"]["by_samples"]["32"]["0.5"]
    assert {"one-shot", "sequential", "default", "flops_reduction", "keep", "default_fits"} <= set(cell)
    for variant in ("one-shot", "sequential", "default"):
        assert 0 <= cell[variant]["top1"]["mean"] <= 100 and cell[variant]["fidelity"]["mean"] >= 0
    assert abs(cell["flops_reduction"]["mean"] - 0.5) < 0.05 and sum(cell["default_fits"].values()) >= 1


def test_distributed_cli_quick(tmp_path):
    from benchmarks import distributed_cli

    distributed_cli.main(_args(tmp_path, "distributed_cli"))
    data = _check(tmp_path / "distributed_cli.json", ("runs",))
    two = data["runs"]["prune-sequential"]["2"]
    assert two["same_kept_units"] and two["max_relative_weight_difference"] < 1e-8 and two["same_reported"]
    assert two["seconds"] > 0 and two["keep"] == data["runs"]["prune-sequential"]["1"]["keep"]
    assert data["runs"]["eval"]["2"]["same_reported"] and data["runs"]["eval"]["2"]["reported"]["samples"] == 497


def test_statistics_cost_quick(tmp_path):
    from benchmarks import statistics_cost

    statistics_cost.main(_args(tmp_path, "statistics_cost"))
    data = _check(tmp_path / "statistics_cost.json", ("models",))
    row = data["models"]["demo-vgg"]
    assert set(row["ratio_to_forward"]) == {"statistics", "statistics_float64", "hooks_only"}
    assert all(ratio > 0 for ratio in row["ratio_to_forward"].values())
    assert row["relative_covariance_difference"]["max"] < 1e-5
    assert {p["dtype"] for p in row["products"].values()} <= {"float32", "float64"}


def test_streams_quick(tmp_path):
    from benchmarks import streams

    streams.main(_args(tmp_path, "streams"))
    data = _check(tmp_path / "streams.json", ("models", "goal"))
    model = data["models"]["demo-resnet"]
    assert set(model["methods"]) <= set(streams.ALL_METHODS)
    assert {"snp-coupled+seq", "tp-magnitude"} <= set(model["methods"])
    assert set(model["analyses"]) == {"coupled", "excluded"}
    assert len(model["analyses"]["coupled"]["groups"]) > len(model["analyses"]["excluded"]["groups"])
    for method, by_target in model["status"].items():
        cell = by_target["0.8"]
        assert cell["reached"] + bool(cell["unreachable"]) >= 1
        if cell["reached"]:
            row = model["methods"][method]["0.8"]
            assert 0 <= row["top1"]["mean"] <= 100 and row["fidelity"]["mean"] >= 0
            assert abs(row["flops_reduction"]["mean"] - 0.8) < 0.03


def test_blocks_quick(tmp_path):
    from benchmarks import blocks

    blocks.main(_args(tmp_path, "blocks"))
    data = _check(tmp_path / "blocks.json", ("models",))
    model = data["models"]["demo-resnet"]
    assert [b["name"] for b in model["blocks"]] == ["layer1.0"]
    row = model["by_count"]["1"]
    assert row["removed"] == ["layer1.0"] and set(blocks.VARIANTS) <= set(row)
    for variant in blocks.VARIANTS:
        assert 0 <= row[variant]["top1"] <= 100 and row[variant]["ms_batch1"] > 0
    assert abs(row["channels"]["flops_reduction"] - row["compensated"]["flops_reduction"]) < 0.03
    assert row["compensated"]["fidelity"] < row["dropped"]["fidelity"]


def test_ordering_cost_quick(tmp_path):
    from benchmarks import ordering_cost

    ordering_cost.main(_args(tmp_path, "ordering_cost"))
    data = _check(tmp_path / "ordering_cost.json", ("widths",))
    row = data["widths"]["600"]
    assert {"factor", "metric", "previous", "exact"} <= set(row) and row["ratio_previous_over_factor"] > 0
    for name in ("factor", "metric", "previous"):
        assert 0 <= row["max_curve_gap"][name]["output"] < 0.005


def test_families_quick(tmp_path):
    from benchmarks import families

    families.main(_args(tmp_path, "families"))
    data = _check(tmp_path / "families.json", ("models",))
    model = data["models"]["squeezenet1_1"]
    assert set(model["methods"]) == {families.SNP_METHOD, families.TP_METHOD}
    for method in model["methods"].values():
        row = method["0.5"]
        assert 0 <= row["top1"]["mean"] <= 100 and row["fidelity"]["mean"] >= 0
        assert abs(row["flops_reduction"]["mean"] - 0.5) < 0.03
    assert model["reload"]["status"] == "reloaded" and model["reload"]["max_abs_diff"] < 1e-4
    assert model["speed"]["batch1"]["snp"]["speedup"] > 0 and "batch8" in model["speed"]
    assert families.table(data).count("\n") == 3


def test_deploy_speed_quick(tmp_path):
    from benchmarks import deploy_speed

    deploy_speed.main(_args(tmp_path, "deploy_speed"))
    data = _check(tmp_path / "deploy_speed.json", ("cases", "target_share"))
    case = data["cases"]["demo-vgg"]
    assert set(case["pruned"]) == {"1", "8"} and all(p["flops_ratio"] < 0.55 for p in case["pruned"].values())
    assert all(count % 8 == 0 for count in case["pruned"]["8"]["keep"].values())  # demo-vgg: 32-128 units
    runtimes = ["torch", "torch-cl"] + (["onnxruntime"] if case["onnxruntime"] == "measured" else [])
    for batch in ("batch1", "batch8"):
        names = {f"{runtime}/{model}" for runtime in runtimes for model in ("dense", "r1", "r8")}
        assert set(case["timings"][batch]) == names
        assert all(s["same_runtime"] > 0 and s["vs_torch_dense"] > 0 for s in case["speedup"][batch].values())
        assert set(case["meets_target"][batch]) == names - {f"{runtime}/dense" for runtime in runtimes}


def test_transformer_quick(tmp_path):
    pytest.importorskip("timm")
    from benchmarks import transformer

    transformer.main(_args(tmp_path, "transformer"))
    data = _check(tmp_path / "transformer.json", ("vit", "cost"))
    vit = data["vit"]
    assert vit["timm_copy_max_abs_logit_diff"] < 1e-4
    assert {g["kind"] for g in vit["groups"].values()} == {"heads", "channels"}
    for kind in transformer.KINDS:
        assert {"snp", "snp-nocomp", transformer.TP_METHOD} <= set(vit["results"][kind])
        row = vit["results"][kind]["snp"]["0.3"]
        assert 0 <= row["top1"]["mean"] <= 100 and row["fidelity"]["mean"] >= 0
        # the plan's cost is what the counter finds on the pruned network
        assert abs(row["flops_reduction"]["mean"] - row["plan_reduction"]["mean"]) < 1e-6
    heads, mlp = vit["results"]["heads"]["snp"]["0.3"], vit["results"]["mlp"]["snp"]["0.3"]
    assert mlp["heads_kept"]["mean"] == sum(g["units"] for g in vit["groups"].values() if g["kind"] == "heads")
    assert heads["mlp_kept"]["mean"] == sum(g["units"] for g in vit["groups"].values() if g["kind"] == "channels")
    assert data["cost"]["ratio"] > 0 and {"output", "greedy"} <= set(data["cost"]["reorder_seconds_one_layer"])
    assert transformer.table(data).count("\n") == 4


def test_allocation_quick(tmp_path):
    from benchmarks import allocation

    allocation.main(_args(tmp_path, "allocation"))
    data = _check(tmp_path / "allocation.json", ("models", "targets"))
    cells = data["models"]["demo-resnet"]["cells"]
    assert set(cells) == {f"0.5/{v}/{m}" for v in allocation.VARIANTS for m in ("sequential", "one-shot")}
    assert data["models"]["demo-resnet"]["readers"]  # the residual stream is read by several layers
    plans = {v: cells[f"0.5/{v}/sequential"]["multi_reader_keep"] for v in allocation.VARIANTS}
    assert sum(plans["per reader"].values()) >= sum(plans["pooled"].values())  # streams cut less
