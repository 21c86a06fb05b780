"""Session files: the model, data, settings, keep counts, per-layer constraints, named plans and removed
residual blocks of a piece of work, saved so it survives a restart.

A session is a small JSON file (``*.snpsession``); the analysis statistics go into a safetensors
file beside it (``<name>.stats.safetensors``, written with ``Analysis.save``) so reopening skips
the forward pass. Both are written atomically: a crash mid-save leaves the previous files intact.
Constraints, plans and removed blocks are checked when read: one that is not valid (or does not fit
the analysed layers, or names no removable block of the network) is left out with a note, the rest
of the session opens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from snp_engine import workflows
from snp_engine.api import Analysis
from snp_engine.errors import SnpError
from snp_engine.io import atomic_write, check_analysis_fits
from snp_engine.ratios import Constraints
from snp_gui.plans import names_blocks
from snp_gui.settings import Options
from snp_gui.sources import SESSION_SUFFIX
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session

SUFFIX = SESSION_SUFFIX
FORMAT = "snp-gui-session"
VERSION = 1


@dataclass
class SessionData:
    model_spec: str | None = None
    model_kind: str | None = None  # "demo", "torchvision", "snp" or "pickle" (asks for trust again)
    data_spec: str | None = None
    options: dict = field(default_factory=dict)
    keep: dict[str, int] = field(default_factory=dict)
    overridden: bool = False
    statistics: str | None = None  # file name beside the session file
    constraints: dict = field(default_factory=dict)  # Constraints.to_dict(): locks, minimums, round-to
    plans: list = field(default_factory=list)  # NamedPlan.to_dict() of each named plan
    removed_blocks: list = field(default_factory=list)  # names of the residual blocks removed

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=2, sort_keys=True)


def statistics_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(SUFFIX) + ".stats.safetensors")


def write_session(path: str | Path, session: SessionData, analysis: Analysis | None) -> Path:
    """Statistics first, then the JSON that refers to them, so the JSON never points at a missing file."""
    path = Path(path)
    session.statistics = None
    if analysis is not None:
        stats = statistics_path(path)
        analysis.save(stats)
        session.statistics = stats.name
    text = session.to_json()
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def read_session(path: str | Path) -> SessionData:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnpError(f"session file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SnpError(f"{path}: not a readable session file ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SnpError(f"{path}: not an snp session file")
    if int(raw.get("version", 0)) > VERSION:
        raise SnpError(f"{path}: written by a newer snp; upgrade to open it")
    try:
        keep = {str(k): int(v) for k, v in (raw.get("keep") or {}).items()}
        return SessionData(
            raw.get("model_spec"),
            raw.get("model_kind"),
            raw.get("data_spec"),
            dict(raw.get("options") or {}),
            keep,
            bool(raw.get("overridden")),
            raw.get("statistics"),
            raw.get("constraints") or {},  # checked when they are applied, entry by entry
            raw.get("plans") or [],
            raw.get("removed_blocks") or [],  # checked when they are applied, against the network's blocks
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise SnpError(f"{path}: damaged session file ({exc})") from None


# -- the GUI session's side -------------------------------------------------------------------------


def capture(state: Session, model_kind: str | None) -> SessionData:
    """The GUI session's current state as session data."""
    return SessionData(
        model_spec=state.model.spec if state.model else None,
        model_kind=model_kind,
        data_spec=state.data_spec,
        options=asdict(state.options),
        keep=dict(state.keep),
        overridden=state.overridden,
        constraints=state.constraints.to_dict(),
        plans=[plan.to_dict() for plan in state.plans],
        removed_blocks=list(state.removed_blocks),
    )


def save(
    state: Session, path: str | Path, model_kind: str | None, on_saved: Callable[[Path], None] | None = None
) -> None:
    """Write the session in the background (statistics files of large networks take a moment)."""
    saved, analysis, target = capture(state, model_kind), state.analysis, Path(path)

    def written(where: Path) -> None:
        state.message.emit(f"Session saved to {where}")
        if on_saved is not None:
            on_saved(where)

    state.runner.submit(
        Task("save session", lambda: lambda reporter: write_session(target, saved, analysis), on_finished=written)
    )


def restore(state: Session, path: str | Path, saved: SessionData, trust: bool) -> None:
    """Load the session's model and data, then its statistics, then put the keep counts back."""
    notes: list[str] = []
    state.set_options(Options.from_dict({**saved.options}, notes))
    if notes:  # a hand-edited or damaged session: the defaults stand in for what was not valid
        state.message.emit(f"Session {Path(path).name}: {'; '.join(notes)}")
    if saved.model_spec:
        state.load_model(saved.model_spec, trust=trust)
    if saved.data_spec:
        state.load_data(saved.data_spec)
    if not saved.statistics:
        return
    stats = Path(path).with_name(saved.statistics)

    keep = saved.keep if saved.overridden else None
    constraints = read_constraints(saved.constraints, notes := [])
    blocks = read_blocks(saved.removed_blocks, notes)
    named = bool(blocks) or names_blocks(saved.plans)  # blocks removed now or by a kept plan

    def prepare():
        prepared, opts = state.prepared(), state.options

        def load(reporter):
            reporter.update(0.0, f"reading {stats.name}")
            analysis = Analysis.load(stats, ordering=opts.ordering, curve=opts.curve, reporter=reporter)
            check_analysis_fits(analysis, prepared.model.model, prepared.input_shape)
            # the saved blocks are checked against the ones the network has (one probe on a zero input)
            found = workflows.removable_blocks(prepared, device=opts.device) if named else ()
            return analysis, [(block.name, block.units) for block in found]

        return load

    def opened(result: tuple[Analysis, list[tuple[str, int]]]) -> None:
        analysis, removable = result
        state.set_analysis(analysis, keep, constraints)
        if named:
            state.restore_blocks(blocks, removable, notes)
        state.set_plans(saved.plans, notes)
        if notes:
            state.message.emit(f"Session {Path(path).name}: {'; '.join(notes)}")

    state.runner.submit(Task("open session", prepare, on_finished=opened))


def read_blocks(raw: object, notes: list[str]) -> list[str]:
    """Names of removed residual blocks from a session file; an entry that is not a name is left out
    with a note (whether a name is a block of the network is checked once the network is there)."""
    if not isinstance(raw, list):
        notes.append("the saved removed blocks are damaged and were left out")
        return []
    names = []
    for name in raw:
        if isinstance(name, str) and name:
            names.append(name)
        else:
            notes.append(f"left out: {name!r} is not the name of a residual block")
    return list(dict.fromkeys(names))


def read_constraints(raw: object, notes: list[str]) -> Constraints:
    """Per-layer constraints from a session file; an entry that is not valid is left out with a note."""
    if not isinstance(raw, dict):
        notes.append("the saved layer constraints are damaged and were left out")
        return Constraints()
    kept = {}
    for name, rule in raw.items():
        try:
            kept.update(Constraints.from_dict({name: rule}).groups)
        except ValueError as exc:
            notes.append(f"left out: {exc}")
    return Constraints(kept)
