"""The torchvision zoo, the way a user meets it: a representative model of each family is found,
pruned to −30 % FLOPs, exported and reloaded with equal logits (refusals in one line are tested in
test_guard.py). The full list runs in benchmarks/zoo.py (results in docs/benchmarks.md); this is the
same check per model."""

from __future__ import annotations

import pytest

from benchmarks.zoo import check_model

# one small member per family; every one of them must prune (the families that refuse are below)
PRUNED = (
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "mnasnet0_5",
    "squeezenet1_1",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "alexnet",
    "googlenet",
    "densenet121",
    "shufflenet_v2_x0_5",  # the block internals; the channels through its split and shuffle are excluded
    "maxvit_t",  # at 224x224 (its smallest input); its residual streams are excluded; small ones: test_maxvit.py
)
SLOW = {"densenet121", "efficientnet_b0", "googlenet", "alexnet", "maxvit_t"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PRUNED])
def test_family_prunes_exports_and_reloads(name):
    row = check_model(name)
    assert row["status"] == "pruned", row.get("message")
    assert row["keep_all_max_diff"] == 0.0
    assert row["reduction"] == pytest.approx(0.3, abs=0.02)
    assert row["reload_max_diff"] == 0.0
    assert row["params_after"] < row["params"]
