"""Bounds on work that can run away: a time and memory limit for a block of Python code.

Tracing a network's channel couplings (torch-pruning's dependency graph) is exact on the
architectures it knows and can, on others, recurse for minutes while its memory grows until the
operating system kills the process (torchvision's Swin grew past 19 GB). :func:`bounded` stops such
a block with a clear :class:`~snp_engine.errors.AnalysisError` instead: a profile hook on the
current thread looks at the clock and, every few thousand calls, at the process' resident memory.
Only the current thread is watched, so the app's event loop and other workers run on untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from snp_engine.errors import AnalysisError

DEFAULT_SECONDS = 120.0
_CHECK_EVERY = 4096  # profile events between memory checks
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
    events = 0
    reason: list[str] = []

    def watch(_frame, _event, _arg):
        nonlocal events
        events += 1
        if deadline is not None and events % 64 == 0 and time.monotonic() > deadline:
            reason.append(f"did not finish within {seconds:.0f} s")
            raise _Exceeded
        if memory_bytes is not None and start_memory is not None and events % _CHECK_EVERY == 0:
            now = resident_bytes()
            if now is not None and now - start_memory > memory_bytes:
                reason.append(f"used more than {memory_bytes / (1 << 30):.1f} GiB of memory")
                raise _Exceeded

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield
    except _Exceeded:
        raise AnalysisError(f"{what} {reason[0] if reason else 'was stopped'}; {hint}".rstrip("; ")) from None
    finally:
        sys.setprofile(previous)
