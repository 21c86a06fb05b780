"""Background tasks: engine calls run in a QThread so the window keeps answering.

:class:`TaskRunner` runs one task at a time (later ones wait in a queue) and guarantees that every
submitted task ends with exactly one of *finished*, *failed* or *cancelled*. Tasks are plain
functions taking a :class:`TaskReporter`; they never touch widgets. Cancelling sets a flag that
the engine polls between batches, so a run stops within about one batch. The task bodies the
session submits are in :mod:`snp_gui.tasks`.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QThread, Signal, Slot

from snp_engine.errors import SnpError
from snp_engine.progress import Cancelled, Reporter

FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
# Progress from tight engine loops is thinned out so it cannot flood the GUI event queue.
PROGRESS_INTERVAL_S = 0.05


class TaskReporter(Reporter):
    """The engine-facing side of a task: progress, partial results and the cancel flag."""

    def __init__(self, emit_progress: Callable[[float, str], None], emit_partial: Callable[[object], None]) -> None:
        self._cancel = threading.Event()
        self._emit_progress = emit_progress
        self._emit_partial = emit_partial
        self._last = 0.0

    def cancel(self) -> None:
        self._cancel.set()

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def update(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        self._emit_progress(float(min(max(fraction, 0.0), 1.0)), message)

    def partial(self, value: object) -> None:
        """Hand an intermediate result (a sweep point, an epoch of history) to the GUI thread."""
        self._emit_partial(value)


TaskFunction = Callable[[TaskReporter], object]


@dataclass
class Task:
    """A unit of background work and the GUI-thread callbacks for its outcome.

    ``prepare`` runs in the GUI thread right before the task starts and returns the function to
    run in the worker; it reads the state as it is *then*, so queued tasks see earlier results.
    """

    name: str
    prepare: Callable[[], TaskFunction]
    on_finished: Callable[[object], None] | None = None
    on_partial: Callable[[object], None] | None = None
    on_failed: Callable[[str], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    meta: dict = field(default_factory=dict)


class _Job(QObject):
    """Lives in the worker thread; runs the function once and reports how it ended."""

    progress = Signal(float, str)
    partial = Signal(object)
    done = Signal(str, object)  # outcome, result or message

    def __init__(self, function: TaskFunction) -> None:
        super().__init__()
        self._function = function
        self.reporter = TaskReporter(self.progress.emit, self.partial.emit)

    @Slot()
    def run(self) -> None:
        try:
            self._run()
        finally:
            # Stop the thread from inside, so a GUI thread blocked in wait() (window closing) is released
            # without having to process the queued ``done`` signal first.
            self.thread().quit()

    def _run(self) -> None:
        try:
            result = self._function(self.reporter)
        except Cancelled:
            self.done.emit(CANCELLED, None)
        except SnpError as exc:
            self.done.emit(FAILED, str(exc))
        except Exception as exc:  # anything unexpected: one line for the user, the traceback to stderr
            traceback.print_exc(file=sys.stderr)
            self.done.emit(FAILED, _describe(exc))
        else:
            # A result that arrives after Cancel was pressed is dropped: the user asked to keep the old state.
            self.done.emit(CANCELLED if self.reporter.cancel_requested() else FINISHED, result)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error ({type(exc).__name__}{': ' + text if text else ''}); details were written to the log"


class TaskRunner(QObject):
    """Runs :class:`Task` objects one after another in a worker thread."""

    started = Signal(str)
    progress = Signal(str, float, str, object)  # task name, fraction, message, seconds left or None
    ended = Signal(str, str, str)  # task name, outcome, message (error text for failures)
    cancelling = Signal(str)  # task name: Cancel was pressed, the task stops at its next check
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: deque[Task] = deque()
        self._current: Task | None = None
        self._job: _Job | None = None
        self._thread: QThread | None = None
        self._started_at = 0.0
        self._was_busy = False

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> str | None:
        return self._current.name if self._current else None

    def submit(self, task: Task) -> None:
        self._queue.append(task)
        if not self.busy:
            self._start_next()

    def cancel(self) -> None:
        """Stop the running task at its next check and drop everything queued behind it."""
        self._drop_queue()
        if self._job is not None and self._current is not None:
            self._job.reporter.cancel()
            self.cancelling.emit(self._current.name)

    def wait(self, timeout_ms: int = 10_000) -> bool:
        """Block until the worker thread has stopped (used when the window closes)."""
        thread = self._thread
        return thread is None or thread.wait(timeout_ms)

    def _drop_queue(self) -> None:
        while self._queue:
            task = self._queue.popleft()
            self._report(task, CANCELLED, "")

    def _start_next(self) -> None:
        while self._queue and not self.busy:
            task = self._queue.popleft()
            try:
                function = task.prepare()
            except SnpError as exc:
                self._report(task, FAILED, str(exc))
                self._drop_queue()
                continue
            self._launch(task, function)
            break
        self._sync_busy()

    def _sync_busy(self) -> None:
        if self.busy != self._was_busy:
            self._was_busy = self.busy
            self.busyChanged.emit(self.busy)

    def _launch(self, task: Task, function: TaskFunction) -> None:
        self._current, self._started_at = task, time.monotonic()
        job, thread = _Job(function), QThread(self)
        job.moveToThread(thread)
        thread.started.connect(job.run)
        job.progress.connect(self._on_progress)
        job.partial.connect(self._on_partial)
        job.done.connect(self._on_done)
        self._job, self._thread = job, thread
        self.started.emit(task.name)
        thread.start()

    @Slot(float, str)
    def _on_progress(self, fraction: float, message: str) -> None:
        if self._current is None:
            return
        if fraction <= 0.0:  # still preparing (pruning before a fine-tune): time left counts from the real start
            self._started_at = time.monotonic()
        elapsed = time.monotonic() - self._started_at
        left = elapsed * (1 - fraction) / fraction if fraction > 0.02 and elapsed > 0.5 else None
        self.progress.emit(self._current.name, fraction, message, left)

    @Slot(object)
    def _on_partial(self, value: object) -> None:
        if self._current is not None and self._current.on_partial is not None:
            self._current.on_partial(value)

    @Slot(str, object)
    def _on_done(self, outcome: str, value: object) -> None:
        task, job, thread = self._current, self._job, self._thread
        self._current = self._job = self._thread = None
        if thread is not None:
            thread.quit()
            thread.wait()
            thread.deleteLater()
        if job is not None:
            job.deleteLater()
        if task is not None:
            self._report(task, outcome, value)
        if outcome != FINISHED:
            self._drop_queue()
        self._start_next()

    def _report(self, task: Task, outcome: str, value: object) -> None:
        """Call the task's own callback first, then tell listeners how it ended (exactly once)."""
        message = value if outcome == FAILED else ""
        try:
            if outcome == FINISHED and task.on_finished is not None:
                task.on_finished(value)
            elif outcome == FAILED and task.on_failed is not None:
                task.on_failed(str(value))
            elif outcome == CANCELLED and task.on_cancelled is not None:
                task.on_cancelled()
        except SnpError as exc:
            outcome, message = FAILED, str(exc)
        except Exception as exc:  # a bug in a result handler must not take the window down
            traceback.print_exc(file=sys.stderr)
            outcome, message = FAILED, _describe(exc)
        self.ended.emit(task.name, outcome, str(message))
