"""Quick run of ``benchmarks/blocks.py --combined``: channel-only against blocks-then-channels plans
at one FLOPs target."""

from __future__ import annotations

import json


def test_combined_plans_quick(tmp_path, capsys):
    from benchmarks import blocks

    out = tmp_path / "combined.json"
    blocks.main(["--quick", "--threads", "1", "--combined", "0.5", "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    model = data["models"]["demo-resnet"]
    assert model["target"] == 0.5 and set(model["by_count"]) == {"0", "1"}
    assert model["by_count"]["1"]["removed"] == ["layer1.0"] and model["by_count"]["0"]["removed"] == []
    assert all(abs(row["flops_reduction"] - 0.5) < 0.03 for row in model["by_count"].values())
    capsys.readouterr()
    blocks.main(["--table", "--out", str(out)])
    table = capsys.readouterr().out
    assert "| demo-resnet | 50 % | 0 (channels only) |" in table and "| demo-resnet | 50 % | 1: layer1.0 |" in table
