"""Persistent preferences: recent files, window layout and the last-used run options (QSettings).

Stored as an INI file in the user's config folder. ``SNP_GUI_SETTINGS`` points it elsewhere, which
the tests use so they never read or overwrite a real user's preferences.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from snp_engine.subspace import DEFAULT_ORDERING

MAX_RECENT = 8
ENV_PATH = "SNP_GUI_SETTINGS"


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
    threshold_mode: str = "variance"
    threshold_value: float = 0.99
    latency_batch: int = 16
    latency_repeats: int = 10
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    sweep_reductions: str = "0.3, 0.5, 0.7"
    sweep_baseline: str = "l1"

    @classmethod
    def from_dict(cls, raw: dict) -> Options:
        """Known keys, converted to each field's type; unknown or malformed values keep the default."""
        options = cls()
        for item in fields(cls):
            if item.name in raw:
                default = getattr(options, item.name)
                with contextlib.suppress(TypeError, ValueError):
                    setattr(options, item.name, type(default)(raw[item.name]))
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


def load_options(settings: Settings, device: str) -> Options:
    """The last-used options; a fresh start (no device saved) prefers ``device``, the best one found now."""
    saved = {f.name: settings.value(f"options/{f.name}") for f in fields(Options)}
    options = Options.from_dict({k: v for k, v in saved.items() if v is not None})
    if not settings.value("options/device"):
        options.device = device
    return options


def save_options(settings: Settings, options: Options) -> None:
    for key, value in asdict(options).items():
        settings.set_value(f"options/{key}", value)


def default_device() -> str:
    """The first GPU when there is one, else the CPU."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
