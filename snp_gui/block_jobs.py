"""The session's residual blocks: listed and scored in the background, ticked on and off for removal.

:class:`BlockJobs` is part of :class:`~snp_gui.state.Session` (which defines the ``blocks_changed``
and ``blocks_note`` signals). Scoring is :func:`snp_engine.workflows.block_scores` (one pass over the
calibration data; progress and Cancel in the status bar). A block ticked for removal is one undo
step; a plan made from the threshold is made again for the same target with the block counted as
gone (:func:`snp_engine.workflows.plan_with_blocks`), a hand-edited plan keeps its counts. The
summary's parameters and FLOPs leave the removed blocks out (:func:`snp_engine.workflows.blocks_cost`);
evaluating, fine-tuning and exporting remove them, compensated, before the channels are pruned
(:func:`snp_engine.workflows.prune_with_blocks`, what ``snp prune --remove-blocks`` does too).

The blocks belong to the prepared network: another model, data or input size clears them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snp_engine import workflows
from snp_engine.blocks import BlockScore
from snp_engine.errors import SnpError
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session


@dataclass(frozen=True)
class BlockRow:
    """One removable block as the Blocks tab shows it; ``score`` is None until the blocks are scored."""

    name: str
    units: int
    score: BlockScore | None = None


class BlockJobs:
    """Listing, scoring and removing whole residual blocks."""

    def _init_blocks(self: Session) -> None:
        self.blocks: tuple[BlockRow, ...] = ()
        self.removed_blocks: tuple[str, ...] = ()
        for signal in (self.model_changed, self.data_changed):
            signal.connect(lambda *_: self.clear_blocks())
        # None: the data is fitted to the model again (another input size); the check's result keeps them
        self.prepared_changed.connect(lambda prepared: self.clear_blocks() if prepared is None else None)

    def clear_blocks(self: Session) -> None:
        if self.blocks or self.removed_blocks:
            self.blocks, self.removed_blocks = (), ()
            self._emit_blocks()

    def _emit_blocks(self: Session) -> None:
        self.blocks_changed.emit(list(self.blocks), list(self.removed_blocks))

    def block_scores(self: Session) -> tuple[BlockScore, ...]:
        """The scores of every listed block, () unless all of them are scored."""
        scores = tuple(row.score for row in self.blocks if row.score is not None)
        return scores if self.blocks and len(scores) == len(self.blocks) else ()

    def layers_in_removed_blocks(self: Session) -> dict[str, str]:
        """Each prunable layer that goes with a residual block ticked for removal, and that block."""
        if self.analysis is None or not self.removed_blocks:
            return {}
        return {
            name: next(b for b in self.removed_blocks if name == b or name.startswith(b + "."))
            for name in workflows.inner_groups(self.analysis, self.removed_blocks)
        }

    def block_flops(self: Session) -> dict[str, float]:
        """What each listed block's layers cost (MACs) at the current keep counts ({} without an analysis)."""
        if self.analysis is None:
            return {}
        return {row.name: workflows.blocks_cost(self.analysis, [row.name], self.keep)[1] for row in self.blocks}

    def score_blocks(self: Session) -> None:
        """Find and score the residual blocks of the prepared network in the background."""

        def prepare():
            if self.model is None or self.data is None:
                raise SnpError("open a model and data first")
            prepared, o = self.prepared(), self.options.copy()
            return lambda reporter: workflows.block_scores(
                prepared, batch_size=o.batch_size, samples=o.samples, device=o.device, reporter=reporter
            )

        def scored(scores: tuple[BlockScore, ...]) -> None:
            self.blocks = tuple(BlockRow(s.name, s.units, s) for s in scores)
            known = {s.name for s in scores}
            dropped = [name for name in self.removed_blocks if name not in known]
            if dropped:
                self._set_removed(tuple(n for n in self.removed_blocks if n in known))
            self._emit_blocks()
            if not scores:
                self.blocks_note.emit("this network has no removable residual blocks")
                self.message.emit("No removable residual blocks found")
                return
            least = min(scores, key=lambda s: s.unexplained)
            self.blocks_note.emit("")
            self.message.emit(
                f"Scored {len(scores)} residual block(s); adds least: {least.name} "
                f"(unexplained {100 * least.unexplained:.1f} %)"
            )

        self.runner.submit(Task("blocks", prepare, on_finished=scored))

    def set_block_removed(self: Session, name: str, removed: bool) -> bool:
        """Tick a listed block for removal, or untick it; one undo step. Refused (``blocks_note`` says
        why, nothing changes) without an analysis or when the threshold's target cannot be met."""
        if self.analysis is None:
            return self._refuse_block("run an analysis first")
        if name not in {row.name for row in self.blocks}:
            return self._refuse_block(f"'{name}' is not a removable block of this network")
        order = [row.name for row in self.blocks]
        wanted = set(self.removed_blocks) - {name} | ({name} if removed else set())
        return self.set_removed_blocks([n for n in order if n in wanted])

    def set_removed_blocks(self: Session, names: Sequence[str]) -> bool:
        """Remove exactly the blocks ``names`` (all listed); one undo step, see :meth:`set_block_removed`."""
        names = tuple(names)
        if self.analysis is None:
            return self._refuse_block("run an analysis first")
        if names == self.removed_blocks:
            return True
        planned = None
        if not self.overridden:
            try:
                planned = dict(
                    self._plan_from(self.options.threshold_mode, self.options.threshold_value, blocks=names).keep
                )
            except SnpError as exc:
                return self._refuse_block(str(exc))
        self._begin_edit()
        self._set_removed(names)
        if planned is not None:
            self._planned = planned
            self._apply_keep(planned, final=True)
        else:
            self._planned = self._threshold_plan() or {}
            self.keep_changed.emit(dict(self.keep), True)  # the summary counts the blocks again
        self.mark_stale()
        self._end_edit()
        self.blocks_note.emit("")
        listed = ", ".join(names) or "none"
        self.message.emit(f"Residual blocks removed: {listed}")
        return True

    def _set_removed(self: Session, names: tuple[str, ...]) -> None:
        if names != self.removed_blocks:
            self.removed_blocks = names
            self._emit_blocks()

    def restore_blocks(self: Session, names: Sequence[str], removable: Sequence[tuple[str, int]], notes: list) -> None:
        """Blocks of a reopened session: the removable ones listed (unscored), those of ``names`` that
        are removable ticked; any other name is left out with a note."""
        known = [name for name, _ in removable]
        for name in names:
            if name not in known:
                notes.append(f"left out: '{name}' is not a removable block of this network")
        self.blocks = tuple(BlockRow(name, units) for name, units in removable)
        self._emit_blocks()
        self.set_removed_blocks([name for name in known if name in set(names)])
        self.clear_history()  # reopening is not a step to undo

    def _refuse_block(self: Session, reason: str) -> bool:
        self.blocks_note.emit(reason)
        self.message.emit(f"Blocks not changed: {reason}")
        self._emit_blocks()  # the check boxes go back to the blocks in use
        return False
