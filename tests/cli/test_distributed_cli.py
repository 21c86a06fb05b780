"""``torchrun … -m snp_engine.cli … --distributed`` equals one process: same kept units, exported
weights within 1e-8 relative, for sequential and one-shot pruning and for saved statistics; the
evaluation set is shared over the processes (each image once) and its numbers summed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from snp_engine import io
from snp_engine.cli import main
from snp_engine.data import load_data
from snp_engine.statsfile import read_statistics

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)
REPO = Path(__file__).resolve().parents[2]
# One image per batch: a float32 matrix product over a batch of 64 and one of 32 images differs in
# the last bits (BLAS blocks by batch size), ~1e-7 relative; image by image both runs compute alike
# (every process takes process 0's first shifts, so image i's products are those of one process).
COMMON = ("--model", "demo-vgg", "--data", "digits", "--samples", "200", "--batch-size", "1", "--json", "--quiet")


def _snp(*argv: str, world: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if world == 1:
        command = [sys.executable, "-m", "snp_engine.cli", *argv]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
        command = [*launcher, "-m", "snp_engine.cli", *argv, "--distributed"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads("\n".join(lines))  # one JSON object: process 0 alone prints


def _same_export(a: Path, b: Path, rel: float = 1e-8) -> None:
    """The same kept units, and every weight tensor within ``rel`` (relative norm of the difference)."""
    assert io.read_metadata(a)["pruning"] == io.read_metadata(b)["pruning"]
    one, two = load_file(str(a)), load_file(str(b))
    assert one.keys() == two.keys()
    for key in one:
        x, y = one[key].double(), two[key].double()
        assert x.shape == y.shape, key
        assert float((x - y).norm()) <= rel * max(float(x.norm()), 1e-30), key


# One-shot fits solve with the analysis' statistics: the same float32 products per image, their
# float64 sums added in another order over two processes (the solve makes that ~1e-15 round-off
# about 5e-10 relative on demo-vgg). Sequential fits sum fold by fold, and with 2 processes each of
# the 4 folds (image i in fold i mod 4) lies on one process, so they are bit-identical.


# Batches of 16 over 2 processes: each process reads whole batches of one process (batch k on
# process k mod 2), so their float32 products, and the positions drawn per batch, are the same.
BATCHES = ("--batch-size", "16", "--max-positions", "16")


@pytest.mark.parametrize(
    "mode", [(), ("--one-shot",), ("--one-shot", *BATCHES)], ids=["sequential", "one-shot", "one-shot-batches"]
)
def test_distributed_prune_equals_one_process(tmp_path, mode):
    single = _snp("prune", *COMMON, "--flops-reduction", "0.5", *mode, "--out", str(tmp_path / "one.safetensors"))
    split = _snp(
        "prune", *COMMON, "--flops-reduction", "0.5", *mode, "--out", str(tmp_path / "two.safetensors"), world=2
    )
    assert split["keep"] == single["keep"] and split["compensation"] == single["compensation"]
    assert split["fits"].keys() == single["fits"].keys()
    for name, fit in single["fits"].items():  # the same held-out choice: folds are by image, not by process
        assert split["fits"][name]["fit"] == fit["fit"] and split["fits"][name]["folds"] == fit["folds"]
        assert split["fits"][name]["heldout_error"] == pytest.approx(fit["heldout_error"], rel=1e-5)
    _same_export(tmp_path / "one.safetensors", tmp_path / "two.safetensors", 1e-8)
    _same_metrics(single, split)


@pytest.mark.parametrize("count", ["1", "auto"])
def test_distributed_block_removal_equals_one_process(tmp_path, count):
    """Block scores and the refit of the later layers sum fold by fold (image i in fold i mod 4, so
    each fold lies on one of the 2 processes): the same scores, removed blocks and weights, bit for bit."""
    common = tuple("demo-resnet" if arg == "demo-vgg" else arg for arg in COMMON)  # a network with a block
    argv = ("prune", *common, "--flops-reduction", "0.5", "--remove-blocks", count)
    single = _snp(*argv, "--out", str(tmp_path / "one.safetensors"))
    split = _snp(*argv, "--out", str(tmp_path / "two.safetensors"), world=2)
    assert split["keep"] == single["keep"] and split["fits"] == single["fits"]
    one, two = dict(single["blocks"]), dict(split["blocks"])
    assert one["scores"] and two["scores"] == one["scores"]  # u, b, ridge and samples of every block
    assert two["removed"] == one["removed"]
    settings = io.read_metadata(tmp_path / "two.safetensors")["settings"]
    assert settings["remove_blocks"] == (1 if count == "1" else "auto")
    if count == "1":
        assert one["removed"] == ["layer1.0"] and one["refitted"] and two == one
    else:  # the candidates' logit errors: sums of squares over the shards, added in another order
        tried, found = one.pop("candidates"), two.pop("candidates")
        assert [c["blocks"] for c in found] == [c["blocks"] for c in tried] == [[], ["layer1.0"]]
        for c, d in zip(tried, found, strict=True):
            assert d["error"] == pytest.approx(c["error"], rel=1e-12) and d["flops_after"] == c["flops_after"]
        assert two == one
    _same_export(tmp_path / "one.safetensors", tmp_path / "two.safetensors", rel=0.0)
    _same_metrics(single, split)


def _same_metrics(single: dict, split: dict) -> None:
    """The evaluation numbers of the whole set: each process scored its shard, the sums were added."""
    assert split["eval_samples"] == single["eval_samples"] == len(load_data("digits").test)
    for key in ("top1_before", "top1_after", "top5_before", "top5_after", "fidelity"):
        assert split[key] == pytest.approx(single[key], rel=1e-5), key


def _in_process(capsys, *argv: str) -> dict:
    """One process, run inside the test (no second interpreter start-up)."""
    capsys.readouterr()
    assert main([*argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("data", ["digits", "npz"])
def test_distributed_eval_shares_the_set_and_equals_one_process(tmp_path, capsys, data):
    if data == "npz":  # an odd number of images, no test split: evaluated on all of them
        digits = load_data("digits").test
        images = torch.stack([digits[i][0] for i in range(101)]).numpy()
        np.savez(tmp_path / "part.npz", x=images, y=np.array([digits[i][1] for i in range(101)]))
        data = f"npz:{tmp_path / 'part.npz'}"
    argv = ("eval", "--model", "demo-vgg", "--data", data, "--batch-size", "1")
    single = _in_process(capsys, *argv)
    split = _snp(*argv, "--json", "--quiet", world=2)
    assert split["samples"] == single["samples"] == (101 if data.startswith("npz") else 497)  # each image once
    assert split["top1"] == single["top1"] and split["top5"] == single["top5"]
    assert split["loss"] == pytest.approx(single["loss"], rel=1e-12)  # the same sums, added in another order
    assert split["eval_data"] == single["eval_data"]
    assert split["dense_check"]["samples"] == single["dense_check"]["samples"]  # shared too, each image once
    assert split["dense_check"]["top1"] == pytest.approx(single["dense_check"]["top1"], rel=1e-12)


def test_distributed_statistics_file_equals_one_process(tmp_path):
    one = _snp("analyze", *COMMON, "--out", str(tmp_path / "one.stats.safetensors"))
    two = _snp("analyze", *COMMON, "--out", str(tmp_path / "two.stats.safetensors"), world=2)
    assert one["samples"] == two["samples"] == 200  # images over all processes, each read once
    a, b = load_file(str(tmp_path / "one.stats.safetensors")), load_file(str(tmp_path / "two.stats.safetensors"))
    assert a.keys() == b.keys()
    one_stats, two_stats = (
        read_statistics(tmp_path / "one.stats.safetensors"),
        read_statistics(tmp_path / "two.stats.safetensors"),
    )
    for g, h in zip(one_stats.groups, two_stats.groups, strict=True):  # sums are stored around a shift
        for r, q in zip(g.readers, h.readers, strict=True):
            scale = float(r.moments.covariance().abs().max())
            assert r.moments.samples == q.moments.samples
            # the same float32 products (process 0's shifts everywhere), float64 sums in another order
            torch.testing.assert_close(q.moments.covariance(), r.moments.covariance(), rtol=1e-12, atol=1e-12 * scale)
            torch.testing.assert_close(q.moments.mean(), r.moments.mean(), rtol=1e-12, atol=1e-12 * scale**0.5)
            torch.testing.assert_close(q.metric, r.metric, rtol=1e-12, atol=0)
    _snp(
        "prune",
        *COMMON,
        "--stats",
        str(tmp_path / "two.stats.safetensors"),
        "--flops-reduction",
        "0.5",
        "--out",
        str(tmp_path / "p2.safetensors"),
        world=2,
    )
    _snp(
        "prune",
        *COMMON,
        "--stats",
        str(tmp_path / "one.stats.safetensors"),
        "--flops-reduction",
        "0.5",
        "--out",
        str(tmp_path / "p1.safetensors"),
    )
    _same_export(tmp_path / "p1.safetensors", tmp_path / "p2.safetensors")


def test_orderings_are_computed_by_process_zero_alone(tmp_path, capsys):
    """analyze, and prune from saved statistics in another ordering, with process 1 unable to order."""
    stats = tmp_path / "stats.safetensors"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = (
        ["analyze", *COMMON, "--out", str(stats)],
        ["prune", *COMMON, "--stats", str(stats), "--ordering", "greedy", "--one-shot", "--flops-reduction", "0.5"],
    )
    found = []
    for argv in jobs:
        out = [] if argv[0] == "analyze" else ["--out", str(tmp_path / "two.safetensors")]
        command = [*launcher, "-m", "tests.cli.faulty_rank", "order-on-0", *argv, *out, "--distributed"]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        found.append(json.loads(done.stdout))
    single = _in_process(capsys, *jobs[1], "--out", str(tmp_path / "one.safetensors"))
    assert found[1]["keep"] == single["keep"] and found[1]["ordering"] == "greedy"
    _same_export(tmp_path / "one.safetensors", tmp_path / "two.safetensors")


def test_distributed_without_torchrun_is_one_clear_error():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    command = [
        sys.executable,
        "-m",
        "snp_engine.cli",
        "eval",
        "--model",
        "demo-vgg",
        "--data",
        "digits",
        "--distributed",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("snp: error: --distributed needs torchrun")


def _workers_of(launcher_pid: int) -> list[int]:
    """PIDs of the processes torchrun started (its children running snp_engine.cli)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat[3]) == launcher_pid and "snp_engine.cli" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_process_ends_the_job_without_an_output_file(tmp_path):
    import signal

    out = tmp_path / "never.safetensors"
    argv = ["prune", "--model", "demo-resnet", "--data", "digits", "--batch-size", "1", "--flops-reduction", "0.7"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "snp_engine.cli", *argv, "--out", str(out), "--distributed"]
    job = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    assert job.stderr is not None
    err = b""
    while b"%] " not in err:  # process 0's progress: the job is under way, past start-up
        chunk = os.read(job.stderr.fileno(), 4096)
        assert chunk, "the job ended before it reported progress"
        err += chunk
    workers = _workers_of(job.pid)
    assert len(workers) == 2, "torchrun did not start two processes"
    os.kill(max(workers), signal.SIGKILL)
    err += job.communicate(timeout=300)[1]
    assert job.returncode != 0 and b"SIGKILL" in err  # torchrun ends the other process and says which one died
    # the survivor says why in one line: its peer closed the connection, or torchrun's SIGTERM stopped it
    assert b"snp: error: another process of the distributed job failed" in err or b"snp: error: stopped by" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial or temporary file


def _faulty(mode: str, tmp_path: Path, timeout_s: str = "600") -> tuple[subprocess.CompletedProcess, float]:
    """torchrun with process 1 failing or hanging where it would sum its statistics (tests/cli/faulty_rank.py)."""
    import time

    out = tmp_path / "never.safetensors"
    argv = ["prune", "--model", "demo-vgg", "--data", "digits", "--flops-reduction", "0.5", "--out", str(out)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "tests.cli.faulty_rank", mode, *argv, "--quiet", "--distributed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SNP_DISTRIBUTED_TIMEOUT": timeout_s}
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - start


def test_a_failing_process_ends_every_process_with_one_line_each(tmp_path):
    done, _ = _faulty("fail", tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("snp: error:")]
    assert done.returncode != 0
    assert "snp: error: process 1 could not read its shard (injected)" in errors  # the failing process says why
    assert any("another process of the distributed job failed" in line for line in errors)  # the other one too
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file


def test_a_hanging_process_times_out_instead_of_hanging_the_job(tmp_path):
    done, seconds = _faulty("hang", tmp_path, timeout_s="3")
    errors = [line for line in done.stderr.splitlines() if line.startswith("snp: error:")]
    assert done.returncode != 0 and seconds < 120  # the hang sleeps an hour
    assert any("failed or timed out" in line and "Timed out" in line for line in errors)  # process 0 waited 3 s
    assert any(line.startswith("snp: error: stopped by SIGTERM: torchrun ends") for line in errors)  # process 1
    assert list(tmp_path.iterdir()) == []


def test_a_bad_collective_timeout_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("SNP_DISTRIBUTED_TIMEOUT", "soon")
    assert main(["eval", "--model", "demo-vgg", "--data", "digits", "--distributed"]) == 2
    assert capsys.readouterr().err.strip() == (
        "snp: error: SNP_DISTRIBUTED_TIMEOUT must be a positive number of seconds, got 'soon'"
    )
