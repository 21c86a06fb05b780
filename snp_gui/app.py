"""Entry point of the desktop app: ``snp-gui`` (or ``python -m snp_gui.app``).

With no arguments, or with ``--demo``, it opens on the bundled demo network and the digits data and
analyses them, so there is something to look at straight away; ``--analyse`` starts the analysis
right after loading whatever else was asked for. On Linux it first checks that the system libraries
Qt's X11 platform needs are there, and if not says which packages to install instead of crashing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
from collections.abc import Callable, Sequence

DEMO_MODEL, DEMO_DATA = "demo-vgg", "digits"
# Debian/Ubuntu package -> the library Qt's X11 (xcb) platform loads from it
QT_SYSTEM_LIBRARIES = {
    "libegl1": "libEGL.so.1",
    "libgl1": "libGL.so.1",
    "libfontconfig1": "libfontconfig.so.1",
    "libdbus-1-3": "libdbus-1.so.3",
    "libxkbcommon-x11-0": "libxkbcommon-x11.so.0",
    "libxcb-cursor0": "libxcb-cursor.so.0",
    "libxcb-icccm4": "libxcb-icccm.so.4",
    "libxcb-image0": "libxcb-image.so.0",
    "libxcb-keysyms1": "libxcb-keysyms.so.1",
    "libxcb-randr0": "libxcb-randr.so.0",
    "libxcb-render-util0": "libxcb-render-util.so.0",
    "libxcb-shape0": "libxcb-shape.so.0",
    "libxcb-xkb1": "libxcb-xkb.so.1",
}


def missing_system_packages(load: Callable[[str], object] = ctypes.CDLL) -> list[str]:
    """The packages of :data:`QT_SYSTEM_LIBRARIES` whose library ``load`` cannot open."""
    missing = []
    for package, library in QT_SYSTEM_LIBRARIES.items():
        try:
            load(library)
        except OSError:
            missing.append(package)
    return missing


def missing_packages_message(missing: Sequence[str], detail: str = "") -> str:
    """What to tell a user whose system lacks the libraries Qt needs to open a window."""
    lines = [
        "snp-gui cannot open a window: Qt needs system libraries that are not installed"
        + (f" ({detail})" if detail else "")
        + ".",
    ]
    if missing:
        lines += [
            f"Missing packages: {', '.join(missing)}",
            "Install them with:",
            f"    sudo apt-get install {' '.join(missing)}",
        ]
    else:
        lines += ["Install them with:", f"    sudo apt-get install {' '.join(QT_SYSTEM_LIBRARIES)}"]
    lines.append("(The command line, snp, needs none of them.)")
    return "\n".join(lines)


def _uses_x11() -> bool:
    """Whether Qt will open its X11 (xcb) platform, the one that needs the libraries above."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0] == "xcb"
    return not os.environ.get("WAYLAND_DISPLAY")


def check_system_libraries() -> str | None:
    """The message for the user when the window cannot open for want of system libraries, else None."""
    if not _uses_x11():
        return None
    missing = missing_system_packages()
    return missing_packages_message(missing) if missing else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snp-gui",
        description="Subspace Node Pruning: see each layer's explained-variance curve, choose how many "
        "units to keep, evaluate and export a smaller network.",
    )
    parser.add_argument("session", nargs="?", help="a saved session (.snpsession) to reopen")
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"open {DEMO_MODEL} with the {DEMO_DATA} data (the default when nothing else is given)",
    )
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="demo-vgg, demo-resnet, torchvision:ARCH[@WEIGHTS] or an exported .safetensors file",
    )
    parser.add_argument("--data", metavar="SPEC", help="digits, an ImageFolder directory or npz:PATH")
    parser.add_argument(
        "--analyse",
        "--analyze",
        dest="analyse",
        action="store_true",
        help="start the analysis as soon as the model and data are loaded",
    )
    parser.add_argument("--evaluate", action="store_true", help="evaluate the plan once the analysis has finished")
    parser.add_argument(
        "--color-scheme",
        choices=("system", "light", "dark"),
        default="system",
        help="light or dark colours (default: follow the system)",
    )
    parser.add_argument("--device", help="cpu or cuda[:N] (default: the first GPU, else the CPU)")
    parser.add_argument("--samples", type=int, help="calibration images to analyse")
    parser.add_argument("--batch-size", type=int, help="images per batch")
    parser.add_argument("--settings", metavar="INI", help=argparse.SUPPRESS)  # an isolated settings file
    parser.add_argument("--quit-after", type=int, metavar="MS", help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--screenshot", metavar="PNG", help=argparse.SUPPRESS)  # saved once all loading is done
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_system_libraries()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:
        app = _application(args.color_scheme)
    except ImportError as exc:  # e.g. "libEGL.so.1: cannot open shared object file"
        print(missing_packages_message(missing_system_packages(), str(exc)), file=sys.stderr)
        return 1
    _leave_a_core_for_the_interface()
    from snp_gui.main_window import MainWindow
    from snp_gui.settings import Settings

    window = MainWindow(settings=Settings(args.settings) if args.settings else None)
    _apply_arguments(window, args)
    window.show()
    if args.screenshot:
        _screenshot_when_idle(window, args.screenshot)
    if args.quit_after is not None:
        from PySide6.QtCore import QTimer

        QTimer.singleShot(max(args.quit_after, 0), window.close)
    return app.exec()


def collect_garbage_in_gui_thread(app) -> None:
    """Run Python's cyclic garbage collector only in the GUI thread, on a timer (pyqtgraph's
    GarbageCollector). Left automatic, a collection runs in whichever thread allocates past the
    threshold, a worker included, and may destroy GUI-thread Qt objects caught in reference cycles
    from there, which can hang or crash Qt. Idempotent: one collector per application; automatic
    collection is switched off on every call (code that turned it back on gets it off again)."""
    if getattr(app, "_snp_garbage_collector", None) is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        app._snp_garbage_collector = GarbageCollector(interval=1.0)
    gc.disable()


def _application(color_scheme: str = "system"):
    """The QApplication, set up for high-DPI screens and a consistent look on every platform."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    # fractional scale factors (125 %, 150 %) render crisply instead of being rounded
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    collect_garbage_in_gui_thread(app)
    app.setApplicationName("snp-gui")
    app.setOrganizationName("snp")
    app.setApplicationDisplayName("snp")
    # Fusion follows the system's light or dark palette the same way on every platform
    app.setStyle("Fusion")
    if color_scheme != "system":
        scheme = Qt.ColorScheme.Dark if color_scheme == "dark" else Qt.ColorScheme.Light
        app.styleHints().setColorScheme(scheme)
        # without a platform theme (plain X servers) the hint alone changes nothing; set the palette too
        app.setPalette(_dark_palette() if color_scheme == "dark" else app.style().standardPalette())
    return app


def _dark_palette():
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    roles = QPalette.ColorRole
    colours = {
        roles.Window: "#2b2b2e",
        roles.WindowText: "#e6e6e6",
        roles.Base: "#1f1f22",
        roles.AlternateBase: "#29292d",
        roles.ToolTipBase: "#3a3a3f",
        roles.ToolTipText: "#f0f0f0",
        roles.Text: "#e6e6e6",
        roles.Button: "#35353a",
        roles.ButtonText: "#e6e6e6",
        roles.BrightText: "#ff6b6b",
        roles.Highlight: "#3d7bd9",
        roles.HighlightedText: "#ffffff",
        roles.Link: "#6ea8ff",
        roles.PlaceholderText: "#9a9aa2",
        roles.Mid: "#4a4a50",
        roles.Dark: "#18181b",
        roles.Light: "#505057",
        roles.Midlight: "#404046",
        roles.Shadow: "#000000",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7c7c84"))
    return palette


def _leave_a_core_for_the_interface() -> None:
    """Torch's intra-op threads spin on every core; with one core fewer the window stays smooth while
    a task runs. An explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() - 1))


def _apply_arguments(window, args: argparse.Namespace) -> None:
    s = window.session
    given = {key: getattr(args, key) for key in ("device", "samples", "batch_size")}
    s.update_options(**{key: value for key, value in given.items() if value is not None})
    if args.session:
        s.open_session_file(args.session)
    elif args.model or args.data:
        from snp_engine.models import DEMO_MODELS

        if args.model:
            s.open_model(args.model)
        data = args.data or (DEMO_MODELS[args.model].dataset if args.model in DEMO_MODELS else None)
        if data:  # a demo network comes with the data it was trained on
            s.open_data(data)
    else:  # --demo, or nothing at all: a new user should see something working, curves included
        s.open_demo(DEMO_MODEL, DEMO_DATA)
    demo = not (args.session or args.model or args.data)
    if args.analyse or args.evaluate or demo:
        s.analyse()
    if args.evaluate:
        s.evaluate()


def _screenshot_when_idle(window, path: str) -> None:
    """Save the window once every queued task has ended, then quit (used for documentation)."""
    from PySide6.QtCore import QTimer

    def shoot() -> None:
        window.grab().save(path)
        print(f"screenshot saved to {path}", file=sys.stderr)
        window.close()

    def idle(busy: bool) -> None:
        if not busy:
            QTimer.singleShot(500, shoot)  # let the plots repaint first

    window.session.runner.busyChanged.connect(idle)
    if not window.session.busy:
        idle(False)


if __name__ == "__main__":
    sys.exit(main())
