"""TaskRunner: every task ends exactly once (finished, failed or cancelled), in order, off the GUI thread."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading

import pytest
import torch
from PySide6.QtCore import QThread

from snp_engine.errors import SnpError
from snp_engine.latency import measure_latency
from snp_gui.panels.status import format_left
from snp_gui.workers import CANCELLED, FAILED, FINISHED, Task, TaskRunner


@pytest.fixture
def runner(qtbot):
    runner = TaskRunner()
    yield runner
    runner.cancel()
    runner.wait()


def record(runner: TaskRunner) -> list[tuple[str, str, str]]:
    ended: list[tuple[str, str, str]] = []
    runner.ended.connect(lambda *args: ended.append(args))
    return ended


def task(name: str, function, **callbacks) -> Task:
    return Task(name, lambda: function, **callbacks)


def wait_cancellable(started: threading.Event):
    """A task that runs until cancelled, polling like the engine does between batches."""
    gate = threading.Event()

    def run(reporter):
        started.set()
        while True:
            reporter.check()
            reporter.update(0.5, "working")
            gate.wait(0.005)

    return run


def test_finished_result_arrives_in_gui_thread(qtbot, runner):
    ended, results, threads = record(runner), [], []
    gui_thread = QThread.currentThread()

    def work(reporter):
        threads.append(QThread.currentThread())
        return 42

    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("answer", work, on_finished=lambda value: results.append((value, QThread.currentThread()))))
    assert ended == [("answer", FINISHED, "")]
    assert results == [(42, gui_thread)]
    assert threads and threads[0] is not gui_thread
    qtbot.waitUntil(lambda: not runner.busy)


def test_snp_error_fails_with_its_message(qtbot, runner):
    ended, failures = record(runner), []

    def work(reporter):
        raise SnpError("the file is broken")

    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("load", work, on_failed=failures.append))
    assert ended == [("load", FAILED, "the file is broken")]
    assert failures == ["the file is broken"]


def test_unexpected_exception_is_one_line_and_traceback_goes_to_stderr(qtbot, runner, capfd):
    ended = record(runner)

    def work(reporter):
        raise ZeroDivisionError("division by zero")

    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("maths", work))
    ((_name, outcome, message),) = ended
    assert outcome == FAILED and "ZeroDivisionError" in message and "\n" not in message
    assert "Traceback" in capfd.readouterr().err


def test_cancel_stops_a_running_task_and_drops_the_queue(qtbot, runner):
    ended, started, ran_second = record(runner), threading.Event(), []
    runner.submit(task("long", wait_cancellable(started)))
    runner.submit(task("second", lambda reporter: ran_second.append(True)))
    qtbot.waitUntil(started.is_set, timeout=10_000)
    with qtbot.waitSignal(runner.ended, check_params_cb=lambda name, *_: name == "long", timeout=5_000):
        runner.cancel()
    assert sorted(ended) == [("long", CANCELLED, ""), ("second", CANCELLED, "")]
    assert not ran_second
    qtbot.waitUntil(lambda: not runner.busy)


def test_result_after_cancel_counts_as_cancelled(qtbot, runner):
    ended, finished = record(runner), []

    def work(reporter):
        reporter.cancel()  # as if Cancel was pressed just as the work completed
        return "too late"

    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("late", work, on_finished=finished.append))
    assert ended == [("late", CANCELLED, "")]
    assert not finished


def test_tasks_run_in_order_and_prepare_sees_earlier_results(qtbot, runner):
    ended, state = record(runner), {}

    def second_prepare():
        seen = state["first"]
        return lambda reporter: seen + 1

    runner.submit(task("first", lambda reporter: 1, on_finished=lambda v: state.__setitem__("first", v)))
    runner.submit(Task("second", second_prepare, on_finished=lambda v: state.__setitem__("second", v)))
    qtbot.waitUntil(lambda: len(ended) == 2, timeout=10_000)
    assert [e[0] for e in ended] == ["first", "second"]
    assert state == {"first": 1, "second": 2}


def test_prepare_error_fails_without_starting_a_thread(qtbot, runner):
    ended, busy = record(runner), []
    runner.busyChanged.connect(busy.append)

    def prepare():
        raise SnpError("load a model first")

    runner.submit(Task("analysis", prepare))
    assert ended == [("analysis", FAILED, "load a model first")]
    assert not runner.busy


def test_failure_drops_tasks_queued_behind_it(qtbot, runner):
    ended = record(runner)

    def broken(reporter):
        raise SnpError("no such model")

    runner.submit(task("load model", broken))
    runner.submit(task("analysis", lambda reporter: "never"))
    qtbot.waitUntil(lambda: len(ended) == 2, timeout=10_000)
    assert ended == [("load model", FAILED, "no such model"), ("analysis", CANCELLED, "")]


def test_progress_and_partial_results_reach_the_gui(qtbot, runner):
    progress, partial = [], []
    runner.progress.connect(lambda name, fraction, message, left: progress.append((name, fraction, message)))

    def work(reporter):
        reporter.partial(("point", 1))
        reporter.update(1.0, "done")
        return None

    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("steps", work, on_partial=partial.append))
    assert partial == [("point", 1)]
    assert progress[-1] == ("steps", 1.0, "done")


def test_a_broken_result_handler_is_reported_not_raised(qtbot, runner):
    ended = record(runner)
    with qtbot.waitSignal(runner.ended, timeout=10_000):
        runner.submit(task("show", lambda reporter: 1, on_finished=lambda value: 1 / 0))
    assert ended[0][:2] == ("show", FAILED)


def test_busy_changes_once_per_burst(qtbot, runner):
    busy = []
    runner.busyChanged.connect(busy.append)
    runner.submit(task("a", lambda reporter: 1))
    runner.submit(task("b", lambda reporter: 2))
    qtbot.waitUntil(lambda: busy == [True, False], timeout=10_000)


def test_time_left_wording():
    assert format_left(None) == ""
    assert format_left(4.4) == "4 s left"
    assert format_left(150) == "2 min left"
    assert format_left(3900) == "1 h 5 min left"


def test_measure_latency_reports_mean_std_and_throughput():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    model.train()
    result = measure_latency(model, (1, 8, 8), batch_size=4, warmup=1, repeats=3)
    assert set(result) == {"ms_mean", "ms_std", "throughput"}
    assert result["ms_mean"] > 0 and result["ms_std"] >= 0
    assert result["throughput"] == pytest.approx(4 * 1000 / result["ms_mean"])
    assert model.training  # the caller's mode is restored


def test_measure_latency_refuses_bad_arguments():
    with pytest.raises(SnpError):
        measure_latency(torch.nn.Identity(), (1, 2, 2), repeats=0)
