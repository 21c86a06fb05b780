"""benchmarks/sequential_cost.py runs in its ``--quick`` setting and writes the keys the docs read."""

from __future__ import annotations

import json
import math


def test_sequential_cost_quick(tmp_path):
    from benchmarks import sequential_cost

    out = tmp_path / "sequential_cost.json"
    sequential_cost.main(["--quick", "--threads", "1", "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    row = data["models"]["demo-vgg"]
    assert data["machine"]["torch"] and data["load_average_start"] is not None
    assert row["identical"] == {"after": True, "over_budget": True}
    for key in ("before", "after", "over_budget"):
        assert math.isfinite(row["over_analysis"][key]) and row["cpu_seconds"][key]["median"] > 0
    assert 0 < row["over_budget_mib"] < row["cache_peak_mib"]
