"""Progress reporting and cooperative cancellation shared by the CLI and the GUI workers.

Long engine calls take a :class:`Reporter`. They call ``update`` between batches/steps and
``check`` (which raises :class:`Cancelled`) where stopping is safe, so the same function drives
a terminal progress line or a Qt progress bar without knowing which.
"""

from __future__ import annotations

import sys
import threading
import time


class Cancelled(Exception):
    """Raised inside engine code when the user asked to stop; no partial result is kept."""


class Reporter:
    """Receives progress; the base class ignores it and never cancels."""

    def update(self, fraction: float, message: str = "") -> None:
        """``fraction`` in [0, 1] of the current task, ``message`` a short human-readable stage."""

    def cancel_requested(self) -> bool:
        return False

    def check(self) -> None:
        """Raise :class:`Cancelled` if a cancel was requested."""
        if self.cancel_requested():
            raise Cancelled("cancelled by the user")


class CancelFlag(Reporter):
    """A reporter whose cancel flag can be set from another thread; forwards updates to a callback."""

    def __init__(self, callback=None) -> None:
        self._event = threading.Event()
        self._callback = callback

    def cancel(self) -> None:
        self._event.set()

    def cancel_requested(self) -> bool:
        return self._event.is_set()

    def update(self, fraction: float, message: str = "") -> None:
        if self._callback is not None:
            self._callback(fraction, message)


class TextReporter(Reporter):
    """Writes a throttled one-line progress display to a stream (stderr by default)."""

    def __init__(self, stream=None, min_interval: float = 0.2) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._last = 0.0
        # A terminal gets one line rewritten in place; a log file gets a plain line now and then.
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = min_interval if self._tty else max(min_interval, 5.0)

    def update(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self._interval:
            return
        self._last = now
        line = f"[{fraction * 100:5.1f}%] {message}"
        if self._tty:
            self._stream.write(line.ljust(78) + ("\n" if fraction >= 1.0 else "\r"))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


class Scaled(Reporter):
    """Maps a sub-task's [0, 1] progress into ``[start, stop]`` of a parent reporter."""

    def __init__(self, parent: Reporter, start: float, stop: float) -> None:
        self._parent, self._start, self._stop = parent, start, stop

    def update(self, fraction: float, message: str = "") -> None:
        self._parent.update(self._start + (self._stop - self._start) * fraction, message)

    def cancel_requested(self) -> bool:
        return self._parent.cancel_requested()
