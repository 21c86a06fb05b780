"""Bounded tracing: runaway work stops with one clear error, and torch-pruning's internal errors
become messages that name the architecture."""

from __future__ import annotations

import contextlib
import sys
import time

import pytest
import torch
import torchvision

from snp_engine import groups as groups_module
from snp_engine.errors import AnalysisError
from snp_engine.groups import find_groups
from snp_engine.guard import bounded, resident_bytes


def _spin(seconds: float) -> int:
    end, calls = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        calls += len(str(calls))  # Python-level calls, which the watch sees
    return calls


def test_time_limit_stops_a_runaway_block_with_a_clear_error():
    start = time.monotonic()
    with (
        pytest.raises(AnalysisError, match=r"^counting sheep did not finish within 0 s; try fewer"),
        bounded("counting sheep", seconds=0.2, memory_bytes=None, hint="try fewer"),
    ):
        _spin(30)
    assert time.monotonic() - start < 5
    assert sys.getprofile() is None


def test_the_block_cannot_swallow_the_stop():
    def stubborn():
        while True:
            try:
                _spin(30)
            except Exception:
                continue

    with (
        pytest.raises(AnalysisError, match="did not finish"),
        bounded("a stubborn loop", seconds=0.2, memory_bytes=None),
    ):
        stubborn()


@pytest.mark.skipif(resident_bytes() is None, reason="resident memory is read from /proc")
def test_memory_limit_stops_a_growing_block():
    kept = []
    with (
        pytest.raises(AnalysisError, match=r"used more than 0\.1 GiB of memory"),
        bounded("hoarding", seconds=None, memory_bytes=100 << 20),
    ):
        for _ in range(10_000):
            kept.append(torch.ones(1 << 20, dtype=torch.uint8).numpy().tobytes())  # 1 MiB each
            len(str(kept[-1][:8]))
    kept.clear()


def test_the_watched_code_runs_without_a_hook_and_another_thread_can_be_watched():
    import threading

    with bounded("quick work", seconds=10):
        assert sys.getprofile() is None and sys.gettrace() is None  # full speed: nothing per call
    stopped: list[str] = []

    def worker() -> None:
        try:
            with bounded("a worker's loop", seconds=0.2, memory_bytes=None):
                _spin(30)
        except AnalysisError as exc:
            stopped.append(str(exc))

    thread = threading.Thread(target=worker)
    thread.start()
    assert _spin(0.5) > 0  # this thread is not stopped
    thread.join(timeout=10)
    assert stopped == ["a worker's loop did not finish within 0 s"]


def test_a_block_within_bounds_runs_normally_and_restores_the_previous_profile():
    def previous(*_args):
        return None

    sys.setprofile(previous)
    try:
        with bounded("quick work", seconds=10):
            assert _spin(0.01) > 0
        assert sys.getprofile() is previous
    finally:
        sys.setprofile(None)


def test_swin_is_traced_well_within_the_bound():
    """Swin once made torch-pruning recurse until it ran out of memory; its window attention is now
    traced in an equivalent form (snp_engine.adapters) and the whole network in seconds."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=10).eval()
    start = time.monotonic()
    groups, _ = find_groups(model, torch.zeros(1, 3, 64, 64))
    assert time.monotonic() - start < 60
    assert sum(g.kind == "heads" for g in groups) == 12 and sum(g.kind == "channels" for g in groups) == 12


def test_internal_torch_pruning_errors_name_the_architecture(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()

    def fails(*_args, **_kwargs):
        return 1 // 0  # what torch-pruning's index mapping raised on ShuffleNetV2's channel shuffle

    monkeypatch.setattr(groups_module, "build_dependency_graph", fails)
    with pytest.raises(
        AnalysisError, match=r"^tracing the layers of ShuffleNetV2 failed inside torch-pruning \(ZeroDivisionError"
    ):
        find_groups(model, torch.zeros(1, 3, 64, 64))


def test_a_block_that_swallows_the_stop_is_stopped_again():
    """torch-pruning retries a failed forward pass under a bare ``except``: a stop that lands there is
    lost, so the watchdog sends it again until the block has ended."""

    def stubborn() -> None:
        with contextlib.suppress(BaseException):  # what the traced library does
            _spin(5)
        _spin(30)

    start = time.monotonic()
    with (
        pytest.raises(AnalysisError, match=r"^stubborn work did not finish within 0 s"),
        bounded("stubborn work", seconds=0.2, memory_bytes=None),
    ):
        stubborn()
    assert time.monotonic() - start < 5
    assert _spin(0.3) > 0  # no stop is left over for the code that runs afterwards
