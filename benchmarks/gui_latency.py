"""How quickly the GUI answers: marker drag / threshold change → updated curves, table and read-outs,
and how responsive the event loop stays while an analysis runs in the background.

Runs the real main window offscreen (``QT_QPA_PLATFORM=offscreen``). The analysis is torchvision's
resnet50 (random weights) on a few random 224x224 images, run by the GUI's own task runner; while it
runs a 10 ms timer measures how late the event loop delivers its ticks. Its curves (one per prunable
group) then feed the interaction timings:

* ``drag``: move one layer's marker by a unit, as a mouse drag does (``sigPositionChanged``), a
  different layer each step (so each step also selects its layer: restyles two curves, refocuses);
* ``drag_one_layer``: a slow drag of one marker, a unit a step, ten steps a layer (the first of the ten
  selects it, as the first mouse move of a drag does);
* ``threshold``: move the threshold slider while it is held down (explained variance and FLOPs modes);
* ``architecture``: the Architecture tab's first (folded) view of the network, Unfold all / Fold all, and
  a layer selected while the tab is shown (its block unfolded, the view redrawn and scrolled to it).

Each interaction is timed three ways: the signal handlers alone (controller → curves, table, summary),
plus the queued events (``processEvents``: scene and table repaints), and plus a full render of the
window (``grab``), an upper bound since a real drag repaints only what changed. The GUI thread's CPU
time for handlers + events is recorded too (``events_cpu``): on a shared machine the wall time also
counts the time spent waiting for a core, the CPU time mostly does not.

    .venv/bin/python benchmarks/gui_latency.py           # writes docs/benchmarks/gui_latency.json
    .venv/bin/python benchmarks/gui_latency.py --quick   # tiny smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import torch
import torchvision
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from snp_engine import api

TARGET_MS = 50.0
# The longest the event loop may answer late while an analysis runs in the background. The GUI tests
# check that it keeps answering at all; how quickly is a timing, and timings are measured here.
STALL_LIMIT_MS = 500.0


def summarise(values_ms: list[float]) -> dict:
    ordered = sorted(values_ms)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max_ms": ordered[-1],
        "mean_ms": statistics.fmean(ordered),
        "n": len(ordered),
    }


class LoopProbe:
    """A precise timer at ``interval_ms``; records how late each tick arrives (event-loop latency)."""

    def __init__(self, interval_ms: int = 10) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.late_ms: list[float] = []
        self._last = None
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.late_ms.append(max(0.0, (now - self._last - self.interval) * 1000))
        self._last = now

    def start(self) -> None:
        self.late_ms, self._last = [], None
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        return summarise(self.late_ms or [0.0])


def wait_until(app, condition, timeout: float) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the background analysis did not finish in time")
        app.processEvents()
        time.sleep(0.001)
    return time.perf_counter() - start


def resnet50_data(images: int, side: int) -> tuple[torch.nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(images, 3, side, side)
    return model, TensorDataset(x, torch.zeros(images, dtype=torch.long))


def background_analysis(app, window, args) -> tuple[dict, dict, api.Analysis]:
    """Event-loop latency while idle and while the runner analyses resnet50; returns the analysis."""
    from snp_gui.workers import Task

    probe = LoopProbe(args.tick_ms)
    probe.start()
    end = time.perf_counter() + args.idle_seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    idle = probe.stop()

    model, data = resnet50_data(args.images, args.side)
    result: dict = {}

    def prepare():
        return lambda reporter: api.analyze(
            model,
            data,
            batch_size=args.images,
            ordering=args.ordering,
            max_positions=args.max_positions,
            reporter=reporter,
        )

    def finished(analysis):
        result["analysis"] = analysis
        window.controller.set_analysis(analysis)

    probe.start()
    window.controller.runner.submit(Task("analysis", prepare, on_finished=finished))
    seconds = wait_until(app, lambda: "analysis" in result, args.analysis_timeout)
    busy = probe.stop()
    busy["analysis_seconds"] = seconds
    return idle, busy, result["analysis"]


def time_interaction(app, window, action, repeats: int) -> dict:
    """Three timings per interaction: handlers only, + queued events (also as CPU time), + a full render."""
    out = {"handlers": [], "events": [], "events_cpu": [], "render": []}
    for index in range(repeats):
        start, cpu = time.perf_counter(), time.thread_time()
        action(index)
        out["handlers"].append(1000 * (time.perf_counter() - start))
        app.processEvents()
        out["events"].append(1000 * (time.perf_counter() - start))
        out["events_cpu"].append(1000 * (time.thread_time() - cpu))
        window.grab()
        out["render"].append(1000 * (time.perf_counter() - start))
        app.processEvents()  # settle before the next step
    return {kind: summarise(values) for kind, values in out.items()}


def interactions(app, window, analysis: api.Analysis, repeats: int) -> dict:
    curves, controller, slider = window.curves, window.controller, window.threshold.slider
    names = [g.name for g in analysis.groups]

    def drag(index: int) -> None:
        name = names[index % len(names)]
        marker = curves.marker(name)
        k = marker.units()
        marker.setValue(float(k - 1 if k > 1 else k + 1))  # one unit, as a slow drag would

    def drag_one_layer(index: int) -> None:
        run = index // 10
        marker = curves.marker(names[(7 * run) % len(names)])  # layers from all over the network
        k = marker.units()
        step = -1 if run % 2 == 0 else 1  # the runs alternate between fewer and more units
        if not 1 <= k + step <= marker.n:
            step = -step
        marker.setValue(float(k + step))

    def threshold(mode: str, low: float, high: float):
        window.threshold.set_value(mode, low)
        controller.set_threshold(mode, low)
        slider.setSliderDown(True)  # a held slider: every move is a continuous change

        def move(index: int) -> None:
            fraction = low + (high - low) * ((index % 20) / 19)
            slider.setValue(round(fraction * slider.maximum()))

        return move

    updates = []
    controller.keepChanged.connect(lambda keep, final: updates.append(final))
    out = {"groups": len(names), "excluded": len(analysis.excluded), "units": int(sum(analysis.units.values()))}
    kinds = (
        ("drag", lambda: drag),
        ("drag_one_layer", lambda: drag_one_layer),
        ("threshold_variance", lambda: threshold("variance", 0.90, 0.999)),
        ("threshold_flops", lambda: threshold("flops", 0.2, 0.7)),
    )
    for kind, make in kinds:
        action = make()
        updates.clear()
        out[kind] = time_interaction(app, window, action, repeats)
        out[kind]["keep_updates"] = len(updates)  # how many of the steps reached the controller's signal
        slider.setSliderDown(False)
    return out


def architecture_view(app, window, analysis: api.Analysis, args) -> dict:
    """The Architecture tab on the same resnet50: drawing its first (folded) view, unfolding and folding
    every block, and a layer selected in the table while the tab is shown (its block unfolded, the view
    redrawn and scrolled), each until the queued events are handled."""
    from snp_engine.workflows.architecture import architecture

    model, _data = resnet50_data(1, args.side)
    graph = architecture(model, (3, args.side, args.side), analysis)
    panel, session = window.architecture_panel, window.controller
    window.tabs.setCurrentWidget(panel)
    app.processEvents()
    view = panel.view

    def timed(action) -> float:
        start = time.perf_counter()
        action()
        app.processEvents()
        return 1000 * (time.perf_counter() - start)

    out: dict = {"layer_calls": len(graph.nodes) - 1, "edges": len(graph.edges)}
    out["first_view_ms"] = timed(lambda: panel.set_graph(graph, session.keep))
    out["first_view_boxes"] = len(view.boxes)
    out["unfold_all_ms"] = timed(view.unfold_all)
    out["unfolded_boxes"] = len(view.boxes)
    out["fold_all_ms"] = timed(view.fold_all)
    out["folded_boxes"] = len(view.boxes)
    panel.set_graph(graph, session.keep)
    app.processEvents()
    names = [g.name for g in analysis.groups if "." in g.name]  # layers inside a (folded) block
    reveal = []
    for index in range(min(args.repeats, 2 * len(names))):
        name = names[(index * 7) % len(names)]  # hopping between blocks: each selection refolds and unfolds
        reveal.append(timed(lambda name=name: session.select_layer(name)))
    out["select_in_folded_block"] = summarise(reveal)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="random images for the resnet50 analysis")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--max-positions", type=int, default=256, help="spatial positions sampled per image")
    parser.add_argument("--ordering", default="output")
    parser.add_argument("--repeats", type=int, default=60, help="interactions timed per kind")
    parser.add_argument("--tick-ms", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--analysis-timeout", type=float, default=900.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting for the test suite")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.side, args.repeats, args.idle_seconds, args.ordering = 1, 32, 3, 0.2, "variance"
    common.default_out(args, "gui_latency")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    from PySide6.QtWidgets import QApplication

    from snp_gui.app import collect_garbage_in_gui_thread
    from snp_gui.main_window import MainWindow
    from snp_gui.settings import Settings

    app = QApplication.instance() or QApplication([])
    load_start = os.getloadavg()  # the machine may be shared: the timings are read against its load
    automatic_collection = gc.isenabled()
    collect_garbage_in_gui_thread(app)  # as the app does: a collection in a worker can hang Qt
    with tempfile.TemporaryDirectory(prefix="snp-gui-bench-") as tmp:
        window = MainWindow(settings=Settings(Path(tmp) / "settings.ini"))
        window.resize(1400, 900)
        window.show()
        app.processEvents()
        try:
            idle, busy, analysis = background_analysis(app, window, args)
            timings = interactions(app, window, analysis, args.repeats)
            timings["architecture"] = architecture_view(app, window, analysis, args)
        finally:
            window.controller.runner.cancel()
            window.controller.runner.wait()
            window.close()
            app.processEvents()
            if automatic_collection:
                gc.enable()
    results = {
        **common.run_header("gui_latency", args),
        "qt_platform": app.platformName(),
        "target_ms": TARGET_MS,
        "event_loop_idle": idle,
        "event_loop_during_analysis": busy,
        "stall_limit_ms": STALL_LIMIT_MS,
        "event_loop_stalled": busy["max_ms"] > STALL_LIMIT_MS,
        "interactions": timings,
        "load_average_start": list(load_start),  # 1, 5 and 15 minutes
        "load_average_end": os.getloadavg()[0],
        "load_average_end_1_5_15": list(os.getloadavg()),
        "cpus": os.cpu_count(),
    }
    common.write_json(args.out, results)
    if results["event_loop_stalled"]:
        common.log(f"gui_latency: the event loop stalled {busy['max_ms']:.0f} ms (limit {STALL_LIMIT_MS:.0f} ms)")
    common.log(f"gui_latency: wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
