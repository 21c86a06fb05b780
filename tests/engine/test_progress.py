"""Progress reporting: terminal vs log output, cancellation, scaling into a parent's range."""

from __future__ import annotations

import io

import pytest

from snp_engine.progress import CancelFlag, Cancelled, Scaled, TextReporter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_rewritten_in_place():
    stream = _Terminal()
    reporter = TextReporter(stream, min_interval=0)
    reporter.update(0.5, "statistics")
    reporter.update(1.0, "done")
    text = stream.getvalue()
    assert "\r" in text and text.endswith("\n") and "[ 50.0%] statistics" in text


def test_a_log_file_gets_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    reporter = TextReporter(stream, min_interval=0)
    reporter.update(0.0, "start")
    reporter.update(0.5, "throttled: within the log interval")
    reporter.update(1.0, "done")
    assert stream.getvalue() == "[  0.0%] start\n[100.0%] done\n"


def test_scaled_progress_and_cancel_reach_the_parent():
    seen = []
    parent = CancelFlag(lambda fraction, message: seen.append((fraction, message)))
    child = Scaled(parent, 0.5, 1.0)
    child.update(0.5, "half of the second half")
    assert seen == [(0.75, "half of the second half")]
    child.check()
    parent.cancel()
    with pytest.raises(Cancelled):
        child.check()
