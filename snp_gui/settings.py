"""Persistent preferences: recent files, window layout and the last-used run options (QSettings).

Stored as an INI file in the user's config folder. ``SNP_GUI_SETTINGS`` points it elsewhere, which
the tests use so they never read or overwrite a real user's preferences.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from snp_engine.analysis import CURVES
from snp_engine.subspace import DEFAULT_ORDERING, ORDERINGS
from snp_engine.workflows import COUPLED_HELP, Compensation

MAX_RECENT = 8
ENV_PATH = "SNP_GUI_SETTINGS"

# -- the global threshold: what each mode accepts -----------------------------------------------------
THRESHOLD_LABELS = {"variance": "Explained variance", "flops": "FLOPs reduction", "params": "Params reduction"}
THRESHOLD_DEFAULTS = {"variance": 0.99, "flops": 0.5, "params": 0.5}
# the lowest and highest value of each mode, as fractions (the controls' resolution is 0.1 %)
THRESHOLD_LIMITS = {"variance": (0.001, 1.0), "flops": (0.0, 0.999), "params": (0.0, 0.999)}


def threshold_problem(mode: str, value: float) -> str | None:
    """Why ``value`` (a fraction) is no valid threshold in ``mode``, or None when it is fine."""
    if mode not in THRESHOLD_LIMITS:
        return f"unknown threshold mode {mode!r}; choose one of {', '.join(THRESHOLD_LIMITS)}"
    label = THRESHOLD_LABELS[mode]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return f"{label} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{label} must be a number, got {value}"
    if mode == "variance":
        if value <= 0:
            return f"{label} must be above 0 % (at 0 % no layer would keep a unit)"
        if value > 1:
            return f"{label} can be at most 100 %"
        return None
    if value < 0:
        return f"{label} cannot be negative"
    if value >= 1:
        return f"{label} must be below 100 % (the network must keep some units)"
    return None


def clamp_threshold(mode: str, value: float) -> float:
    """The nearest valid value of ``mode`` (the default when ``value`` is no number)."""
    low, high = THRESHOLD_LIMITS[mode]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return THRESHOLD_DEFAULTS[mode]
    return THRESHOLD_DEFAULTS[mode] if not math.isfinite(value) else min(max(value, low), high)


class Settings:
    """Typed access to the handful of values the app remembers between runs."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        path = path or os.environ.get(ENV_PATH)
        if path:
            self._store = QSettings(str(path), QSettings.Format.IniFormat)
        else:
            self._store = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "snp", "snp-gui")

    @property
    def path(self) -> str:
        return self._store.fileName()

    def sync(self) -> None:
        self._store.sync()

    # -- plain values -----------------------------------------------------------------------------
    def value(self, key: str, default=None, kind: type | None = None):
        """The stored value, converted to ``kind`` (INI files hand everything back as strings)."""
        raw = self._store.value(key, default)
        if raw is None or kind is None:
            return raw
        try:
            if kind is bool:
                return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            return kind(raw)
        except (TypeError, ValueError):
            return default

    def set_value(self, key: str, value) -> None:
        self._store.setValue(key, value)

    # -- recent files -----------------------------------------------------------------------------
    def recent(self, kind: str) -> list[str]:
        """Most recent first; ``kind`` is "models", "data" or "sessions"."""
        raw = self._store.value(f"recent/{kind}", [])
        items = [raw] if isinstance(raw, str) else list(raw or [])
        return [str(item) for item in items if item]

    def add_recent(self, kind: str, entry: str) -> list[str]:
        items = [entry, *(item for item in self.recent(kind) if item != entry)][:MAX_RECENT]
        self._store.setValue(f"recent/{kind}", items)
        return items

    def clear_recent(self, kind: str) -> None:
        self._store.remove(f"recent/{kind}")

    # -- window layout ----------------------------------------------------------------------------
    def window_geometry(self) -> QByteArray | None:
        return self._bytes("window/geometry")

    def window_state(self) -> QByteArray | None:
        return self._bytes("window/state")

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._store.setValue("window/geometry", geometry)
        self._store.setValue("window/state", state)

    def _bytes(self, key: str) -> QByteArray | None:
        raw = self._store.value(key)
        return raw if isinstance(raw, QByteArray) and not raw.isEmpty() else None

    # -- folders ----------------------------------------------------------------------------------
    def last_dir(self) -> str:
        folder = self.value("paths/last_dir", "", str)
        return folder if folder and Path(folder).is_dir() else str(Path.home())

    def remember_dir(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self._store.setValue("paths/last_dir", str(path if path.is_dir() else path.parent))


@dataclass
class Options:
    """Every setting that shapes a run; saved in sessions and remembered between runs."""

    samples: int = 256
    batch_size: int = 64
    input_size: int = 0  # 0: the one input-size rule decides (snp_engine.inputs)
    device: str = "cpu"
    ordering: str = DEFAULT_ORDERING
    curve: str = "variance"
    compensation: str = "sequential"
    coupled: str = "prune"  # a key of workflows.COUPLED_HELP
    threshold_mode: str = "variance"
    threshold_value: float = 0.99
    latency_batch: int = 16
    latency_repeats: int = 10
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    sweep_reductions: str = "0.3, 0.5, 0.7"
    sweep_baseline: str = "l1"

    @classmethod
    def from_dict(cls, raw: dict, notes: list[str] | None = None) -> Options:
        """Known keys, converted to each field's type and checked; a malformed or invalid value keeps the
        default, and ``notes`` (when given) gets one line saying so for each such value."""
        options, notes = cls(), notes if notes is not None else []
        for item in fields(cls):
            if item.name not in raw:
                continue
            default = getattr(options, item.name)
            try:
                value = type(default)(raw[item.name])
            except (TypeError, ValueError):
                value = None
            check = _CHECKS.get(item.name)
            if value is None or (check is not None and not check(value)):
                notes.append(f"{item.name} {raw[item.name]!r} is not valid; using {default!r}")
                continue
            setattr(options, item.name, value)
        problem = threshold_problem(options.threshold_mode, options.threshold_value)
        if problem:
            options.threshold_value = THRESHOLD_DEFAULTS[options.threshold_mode]
            notes.append(f"{problem}; using {100 * options.threshold_value:g} %")
        return options

    def copy(self) -> Options:
        return Options(**asdict(self))


def parse_reductions(text: str) -> list[float] | None:
    """ "0.3, 0.5" → [0.3, 0.5]; percentages like "30%" are accepted; None when anything is invalid."""
    values = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part.rstrip("%")) / (100.0 if part.endswith("%") else 1.0)
        except ValueError:
            return None
        if not 0 < value < 1:
            return None
        values.append(value)
    return sorted(set(values)) or None


def load_options(settings: Settings, device: str, notes: list[str] | None = None) -> Options:
    """The last-used options; a fresh start (no device saved) prefers ``device``, the best one found now.

    Invalid saved values fall back to their defaults, with a line in ``notes`` for each.
    """
    saved = {f.name: settings.value(f"options/{f.name}") for f in fields(Options)}
    options = Options.from_dict({k: v for k, v in saved.items() if v is not None}, notes)
    if not settings.value("options/device"):
        options.device = device
    return options


def save_options(settings: Settings, options: Options) -> None:
    """Remember ``options``; an invalid threshold is never written (the default of its mode is)."""
    for key, value in asdict(options).items():
        settings.set_value(f"options/{key}", value)
    if threshold_problem(options.threshold_mode, options.threshold_value):
        settings.set_value("options/threshold_value", THRESHOLD_DEFAULTS.get(options.threshold_mode, 0.99))


_CHECKS: dict[str, Callable[[object], bool]] = {
    "samples": lambda v: v >= 1,
    "batch_size": lambda v: v >= 1,
    "input_size": lambda v: v >= 0,
    "ordering": lambda v: v in ORDERINGS,
    "curve": lambda v: v in CURVES,
    "compensation": lambda v: v in {c.value for c in Compensation},
    "coupled": lambda v: v in COUPLED_HELP,
    "threshold_mode": lambda v: v in THRESHOLD_LIMITS,
    "latency_batch": lambda v: v >= 1,
    "latency_repeats": lambda v: v >= 1,
    "finetune_epochs": lambda v: v >= 1,
    "finetune_lr": lambda v: math.isfinite(v) and v > 0,
    "sweep_reductions": lambda v: parse_reductions(v) is not None,
    "sweep_baseline": lambda v: v in ORDERINGS,
    "device": lambda v: bool(v.strip()),
}


def default_device() -> str:
    """The first GPU when there is one, else the CPU."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
