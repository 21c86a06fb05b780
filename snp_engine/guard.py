"""Bounds on work that can run away: a time and memory limit for a block of Python code.

Tracing a network's channel couplings (torch-pruning's dependency graph) is exact on the
architectures it knows and can, on others, recurse for minutes while its memory grows until the
operating system kills the process (torchvision's Swin grew past 19 GB). :func:`bounded` stops such
a block with a clear :class:`~snp_engine.errors.AnalysisError` instead: a watchdog thread looks at
the clock and the process' resident memory every few milliseconds and, past a limit, raises an
exception in the watched thread (``PyThreadState_SetAsyncExc``), which arrives at its next Python
instruction. The watched code runs at full speed (a profile hook on every call made torch-pruning's
pure-Python tracing several times slower), and only that thread is stopped, so the app's event loop
and other workers run on untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Iterator

from snp_engine.errors import AnalysisError

DEFAULT_SECONDS = 120.0
_POLL_SECONDS = 0.02  # how often the watchdog looks
_RESEND_SECONDS = 0.5  # how often a stop is sent again while the watched block still runs
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process' resident memory in bytes (Linux /proc), ``None`` where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int | None:
    """Memory the system can still give (``MemAvailable``), ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_memory_limit() -> int | None:
    """How much the resident memory may grow: half of what is available now (at most 16 GiB)."""
    available = available_bytes()
    return None if available is None else min(available // 2, 16 << 30)


class _Exceeded(BaseException):
    """Raised inside the watched block; turned into an AnalysisError at its boundary. A
    BaseException, so that the watched code's own ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def bounded(
    what: str,
    *,
    seconds: float | None = DEFAULT_SECONDS,
    memory_bytes: int | None = None,
    hint: str = "",
) -> Iterator[None]:
    """Run the block, stopping it with an :class:`AnalysisError` naming ``what`` when it runs longer
    than ``seconds`` or its resident memory grows by more than ``memory_bytes`` (default: half of
    the memory available when it starts). ``None`` disables a limit. ``hint`` ends the message."""
    if memory_bytes is None:
        memory_bytes = default_memory_limit()
    start_memory = resident_bytes()
    deadline = None if seconds is None else time.monotonic() + seconds
    reason: list[str] = []
    target = threading.get_ident()
    finished = threading.Event()
    lock = threading.Lock()  # the stop is sent only while the block still runs

    def over_limit() -> str:
        if deadline is not None and time.monotonic() > deadline:
            return f"did not finish within {seconds:.0f} s"
        if memory_bytes is not None and start_memory is not None:
            now = resident_bytes()
            if now is not None and now - start_memory > memory_bytes:
                return f"used more than {memory_bytes / (1 << 30):.1f} GiB of memory"
        return ""

    def watch() -> None:
        while not finished.wait(_POLL_SECONDS):
            why = over_limit()
            if why:
                break
        # the stop is sent again until the block has ended: code that catches every exception
        # (torch-pruning retries a failed forward pass under a bare ``except``) may swallow one
        while not finished.is_set():
            with lock:
                if finished.is_set():
                    return
                if not reason:
                    reason.append(why)
                _raise_in(target, _Exceeded)
            finished.wait(_RESEND_SECONDS)

    def end_watch() -> None:
        """Stop the watchdog (idempotent); a stop it sent just before may still arrive: absorb it."""
        with lock:
            finished.set()
        watchdog.join()
        if reason:
            with contextlib.suppress(_Exceeded):
                for _ in range(10_000):
                    pass

    watchdog = threading.Thread(target=watch, name=f"bounds of {what}"[:60], daemon=True)
    watchdog.start()
    try:
        try:
            yield
        finally:
            end_watch()
    except _Exceeded:
        end_watch()  # again, in case a second stop interrupted the first end_watch
        raise AnalysisError(f"{what} {reason[0] if reason else 'was stopped'}; {hint}".rstrip("; ")) from None


def _raise_in(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception))
