"""What the app's tests share: running one background task to its end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TIMEOUT = 60_000  # ms: a task on the demo network on a busy two-core machine


def run(qtbot, target: Any, name: str, start: Callable[[], Any], timeout: int = TIMEOUT) -> tuple[str, str]:
    """Call ``start`` and wait for the one ``ended`` signal of task ``name`` on the runner of
    ``target`` (a Session, or a MainWindow's); returns (outcome, message)."""
    session = getattr(target, "session", target)
    with qtbot.waitSignal(
        session.runner.ended, timeout=timeout, check_params_cb=lambda task, *_: task == name
    ) as blocker:
        start()
    return blocker.args[1], blocker.args[2]
