"""Starting ``snp-gui``: the demo is analysed straight away, and missing system libraries are named with the
one apt-get line that installs them instead of a crash."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from types import SimpleNamespace
from typing import ClassVar

import pytest

from snp_gui import app


class Recorder:
    """Stands in for the session: records which actions the start-up asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append(name)


def started(argv: list[str]) -> list[str]:
    session = Recorder()
    app._apply_arguments(SimpleNamespace(session=session), app.build_parser().parse_args(argv))
    return session.calls


def test_the_demo_is_analysed_as_soon_as_the_window_opens():
    assert started(["--demo"])[-2:] == ["open_demo", "analyse"]
    assert started([])[-2:] == ["open_demo", "analyse"]  # nothing given: the demo too
    assert "analyse" not in started(["--model", "demo-resnet"])  # one's own model waits for Analyse
    assert started(["--model", "demo-resnet", "--analyse"])[-1] == "analyse"


def test_missing_libraries_are_named_with_the_apt_get_line():
    absent = {"libEGL.so.1", "libxcb-cursor.so.0"}

    def load(library: str) -> None:
        if library in absent:
            raise OSError(f"{library}: cannot open shared object file")

    missing = app.missing_system_packages(load)
    assert missing == ["libegl1", "libxcb-cursor0"]
    message = app.missing_packages_message(missing)
    assert "libegl1, libxcb-cursor0" in message
    assert "sudo apt-get install libegl1 libxcb-cursor0" in message
    assert app.missing_system_packages(lambda _library: None) == []


def test_start_up_stops_with_the_message_instead_of_crashing(monkeypatch, capsys):
    monkeypatch.setattr(app.sys, "platform", "linux")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(app, "missing_system_packages", lambda load=None: ["libxcb-cursor0"])
    monkeypatch.setattr(app, "_application", lambda *_: pytest.fail("Qt must not be started"))
    assert app.main(["--demo"]) == 1
    assert "sudo apt-get install libxcb-cursor0" in capsys.readouterr().err


def test_no_check_where_no_x11_window_opens(monkeypatch):
    monkeypatch.setattr(app.sys, "platform", "linux")
    monkeypatch.setattr(app, "missing_system_packages", lambda load=None: ["libxcb-cursor0"])
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert app.check_system_libraries() is None
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert app.check_system_libraries() is None


class _Cycle:
    """Garbage only the cyclic collector frees; records the thread its finaliser ran in."""

    freed_in: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        import threading

        _Cycle.freed_in.append(threading.current_thread().name)


def test_garbage_is_collected_in_the_gui_thread_not_in_workers(qapp, qtbot):
    import gc
    import threading

    gc.enable()  # e.g. turned back on by code that ran before: the call turns it off again
    app.collect_garbage_in_gui_thread(qapp)
    assert not gc.isenabled()  # no automatic collection, in any thread
    _Cycle.freed_in.clear()
    _Cycle()  # unreachable at once, but in a cycle

    held: list[list] = []

    def allocate() -> None:  # far past the collector's thresholds, in a worker thread
        held.extend([] for _ in range(50_000))

    worker = threading.Thread(target=allocate, name="worker")
    worker.start()
    worker.join()
    assert _Cycle.freed_in == []
    qtbot.waitUntil(lambda: bool(_Cycle.freed_in), timeout=5000)  # the GUI thread's timer collects it
    assert _Cycle.freed_in == [threading.main_thread().name] and len(held) == 50_000
