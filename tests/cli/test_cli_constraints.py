"""``snp prune --lock / --min-units / --layer-round-to``: per-layer constraints on the plan, and one-line
errors for bad ones."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import run, run_json
from tests.cli.test_cli_errors import assert_error

BASE = ("prune", "--model", "demo-vgg", "--data", "digits", "--samples", "64", "--one-shot")


def test_constraints_shape_the_plan_and_are_reported(tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    result = run_json(
        capsys,
        *BASE,
        "--flops-reduction",
        "0.5",
        "--lock",
        "features.0=20",
        "--min-units",
        "features.7=60",
        "--layer-round-to",
        "classifier.1=16",
        "--out",
        str(out),
    )
    keep = result["keep"]
    assert keep["features.0"] == 20 and keep["features.7"] >= 60 and keep["classifier.1"] % 16 == 0
    assert result["flops_after"] <= 0.5 * result["flops_before"] + 1
    assert result["constraints"] == {
        "features.0": {"locked": 20},
        "features.7": {"min_units": 60},
        "classifier.1": {"round_to": 16},
    }
    assert out.exists()


def test_without_constraints_the_lock_is_not_there(tmp_path, capsys):
    result = run_json(capsys, *BASE, "--flops-reduction", "0.5", "--out", str(tmp_path / "m.safetensors"))
    assert result["constraints"] == {} and result["keep"]["features.0"] != 20


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--lock", "features.0"), r"--lock expects LAYER=N, got 'features.0'"),
        (("--min-units", "features.0=lots"), r"--min-units features.0=lots: N must be a whole number"),
        (("--layer-round-to", "features.0=0"), r"--layer-round-to features.0=0: N must be at least 1"),
        (("--lock", "features.0=4", "--lock", "features.0=5"), r"--lock features.0= given twice"),
        (("--lock", "nope=4"), r"--lock nope=4: 'nope' is not a prunable layer; prunable layers: features.0"),
        (("--min-units", "classifier.4=2"), r"layer 'classifier.4' cannot be pruned \(network output\)"),
        (("--lock", "features.0=99"), r"'features.0' has 32 units; it cannot be locked at 99"),
        (("--lock", "features.0=4", "--min-units", "features.0=8"), r"locked at 4, below its minimum of 8"),
    ],
)
def test_bad_constraints_are_one_line_errors(flags, message, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code, stdout, err = run(capsys, *BASE, "--flops-reduction", "0.5", *flags, "--out", str(out))
    assert_error(code, stdout, err, message)
    assert not out.exists()


def test_locks_that_leave_the_target_out_of_reach_say_so(tmp_path, capsys):
    locks = [
        item
        for name, units in (("features.0", 32), ("features.3", 32), ("features.7", 64), ("features.10", 64))
        for item in ("--lock", f"{name}={units}")
    ]
    out = tmp_path / "m.safetensors"
    code, stdout, err = run(capsys, *BASE, "--flops-reduction", "0.8", *locks, "--out", str(out))
    assert_error(code, stdout, err, r"not reachable with these constraints: 4 locked layer")
