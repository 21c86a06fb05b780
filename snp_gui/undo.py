"""Undo and redo of the plan: keep-count edits, marker drags (one step per drag), threshold moves, plan loads,
per-layer constraints (locks, minimums, round-to) and residual blocks ticked for removal.

:class:`PlanHistory` is part of :class:`~snp_gui.state.Session` (which defines the state and the
``undo_changed`` signal). An edit starts with :meth:`_begin_edit` (the state before it is noted once,
however many intermediate moves follow) and ends with :meth:`_end_edit`, which records one step when
the plan really changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from snp_engine.ratios import NO_CONSTRAINTS, Constraints

if TYPE_CHECKING:
    from snp_gui.state import Session

MAX_STEPS = 200


@dataclass(frozen=True)
class PlanStep:
    """Everything that makes up the plan at one moment."""

    keep: tuple[tuple[str, int], ...]
    mode: str
    value: float
    threshold: float | None
    overridden: bool
    planned: tuple[tuple[str, int], ...]  # what the threshold alone gives (to tell a custom plan)
    constraints: Constraints = NO_CONSTRAINTS
    blocks: tuple[str, ...] = ()  # residual blocks removed


class PlanHistory:
    """Undo/redo stacks of :class:`PlanStep`; cleared when an analysis of other layers arrives."""

    def _init_history(self: Session) -> None:
        self._undo: list[PlanStep] = []
        self._redo: list[PlanStep] = []
        self._pending: PlanStep | None = None

    def can_undo(self: Session) -> bool:
        return bool(self._undo)

    def can_redo(self: Session) -> bool:
        return bool(self._redo)

    def undo(self: Session) -> None:
        """Go back one step of the plan (Ctrl+Z)."""
        self._step(self._undo, self._redo, "Undone")

    def redo(self: Session) -> None:
        """Go forward again (Ctrl+Shift+Z)."""
        self._step(self._redo, self._undo, "Redone")

    def clear_history(self: Session) -> None:
        self._undo.clear()
        self._redo.clear()
        self._pending = None
        self.undo_changed.emit(False, False)

    def _snapshot(self: Session) -> PlanStep:
        o = self.options
        return PlanStep(
            tuple(self.keep.items()),
            o.threshold_mode,
            o.threshold_value,
            self.threshold,
            self.overridden,
            tuple(self._planned.items()),
            self.constraints,
            self.removed_blocks,
        )

    def _begin_edit(self: Session) -> None:
        if self._pending is None:
            self._pending = self._snapshot()

    def _end_edit(self: Session) -> None:
        before, self._pending = self._pending, None
        if before is None or not before.keep:  # nothing was planned before: no step to go back to
            return
        now = self._snapshot()
        if (before.keep, before.mode, before.value, before.constraints, before.blocks) == (
            now.keep,
            now.mode,
            now.value,
            now.constraints,
            now.blocks,
        ):
            return
        if {name for name, _ in before.keep} != {name for name, _ in now.keep}:
            return  # another set of layers: the old plan does not apply to this one
        self._undo.append(before)
        del self._undo[:-MAX_STEPS]
        self._redo.clear()
        self.undo_changed.emit(True, False)

    def _step(self: Session, source: list[PlanStep], target: list[PlanStep], verb: str) -> None:
        if not source or self.analysis is None:
            return
        self._pending = None
        target.append(self._snapshot())
        step = source.pop()
        self.options.threshold_mode, self.options.threshold_value = step.mode, step.value
        self.threshold, self.overridden, self._planned = step.threshold, step.overridden, dict(step.planned)
        self._set_constraints(step.constraints)
        if step.blocks != self.removed_blocks:
            self._set_removed(step.blocks)
            self.mark_stale()
        self.options_changed.emit(self.options)
        self._apply_keep(dict(step.keep), final=True)
        self.undo_changed.emit(bool(self._undo), bool(self._redo))
        self.message.emit(f"{verb}: {'custom plan' if self.is_custom() else _describe(step)}")


def _describe(step: PlanStep) -> str:
    from snp_gui.settings import THRESHOLD_LABELS

    return f"{THRESHOLD_LABELS.get(step.mode, step.mode)} {100 * step.value:.1f} %"
