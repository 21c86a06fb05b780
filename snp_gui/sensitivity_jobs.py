"""The session's per-layer sensitivity: each layer pruned alone to its keep count, measured in the background,
and relaxing the most sensitive layers.

:class:`SensitivityJobs` is part of :class:`~snp_gui.state.Session` (which defines the
``sensitivity_changed`` and ``sensitivity_note`` signals). The measurement is
:func:`snp_engine.workflows.sensitivity.layer_sensitivity` (one-shot compensation, the evaluation data);
each layer's numbers arrive as soon as they are measured. With residual blocks ticked for removal
the layers are measured on the network without them (removed and compensated as Evaluate removes
them, what remains analysed again once; the reference is that network), and the layers inside the
removed blocks are not measured. A layer's numbers hold for the keep count and the removed blocks
they were measured with: once the plan gives it another count, or other blocks are removed, they are
*stale* (shown greyed); a new analysis, model or data clears them all.

Relaxing (:meth:`SensitivityJobs.relax_sensitive`) gives the N most sensitive layers back half of the
units they lose and locks them there; a plan made from the threshold is made again for the same target
within the new locks (so a FLOPs or parameter target is kept by the other layers), a hand-edited plan
changes in those layers only. It is one undo step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snp_engine.errors import SnpError
from snp_engine.workflows import AnalysisOptions
from snp_engine.workflows.sensitivity import LayerSensitivity, Sensitivity, layer_sensitivity, relaxed_counts
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session


class SensitivityJobs:
    """Measuring, showing and acting on per-layer sensitivity."""

    def _init_sensitivity(self: Session) -> None:
        self.sensitivity: dict[str, LayerSensitivity] = {}
        self.sensitivity_blocks: tuple[str, ...] = ()  # the residual blocks removed when it was measured
        self.keep_changed.connect(lambda _keep, final: self._emit_sensitivity() if final else None)
        self.blocks_changed.connect(lambda *_: self._emit_sensitivity())
        for signal in (self.analysis_changed, self.data_changed, self.prepared_changed):
            signal.connect(lambda *_: self.clear_sensitivity())

    def stale_layers(self: Session) -> set[str]:
        """Layers whose sensitivity was measured at another keep count than the plan gives them now, or
        every measured layer when other residual blocks are removed now."""
        if self.sensitivity_blocks != self.removed_blocks:
            return set(self.sensitivity)
        return {name for name, layer in self.sensitivity.items() if self.keep.get(name) != layer.keep}

    def fresh_sensitivity(self: Session) -> Sensitivity | None:
        """The measured layers whose numbers still hold for the current plan, None when there are none."""
        stale = self.stale_layers()
        layers = tuple(layer for name, layer in self.sensitivity.items() if name not in stale)
        if not layers:
            return None
        return Sensitivity(layers, {layer.name: layer.keep for layer in layers}, layers[0].dense_top1, "", 0)

    def clear_sensitivity(self: Session) -> None:
        if self.sensitivity:
            self.sensitivity = {}
            self._emit_sensitivity()

    def _emit_sensitivity(self: Session) -> None:
        self.sensitivity_changed.emit(dict(self.sensitivity), self.stale_layers())

    def measure_sensitivity(self: Session) -> None:
        """Top-1 and output error of each layer pruned alone to its current count, in the background, on
        the network without the residual blocks ticked for removal."""

        def prepare():
            if self.analysis is None or self.model is None:
                raise SnpError("run an analysis first")
            prepared, analysis, keep, o = self.prepared(), self.analysis, dict(self.keep), self.options.copy()
            blocks, scores = self.removed_blocks, self.block_scores()
            options = AnalysisOptions(
                samples=o.samples,
                batch_size=o.batch_size,
                ordering=analysis.ordering,
                curve=o.curve,
                coupled=o.coupled == "prune",
            )
            self.sensitivity, self.sensitivity_blocks = {}, blocks
            self._emit_sensitivity()
            return lambda reporter: layer_sensitivity(
                prepared,
                analysis,
                keep,
                blocks=blocks,
                block_scores=scores or None,
                options=options,
                compensation=o.compensation,
                samples=o.samples,
                batch_size=o.batch_size,
                device=o.device,
                on_layer=reporter.partial,
                reporter=reporter,
            )

        def measured(result: Sensitivity) -> None:
            worst = result.ranked()[:1]
            most = f"; most sensitive: {worst[0].name} (output error {100 * worst[0].error:.1f} %)" if worst else ""
            without = ""
            if result.blocks:
                without = f", on the network without {', '.join(result.blocks)}"
                if result.skipped:
                    without += f" ({len(result.skipped)} layer(s) inside not measured)"
            self.message.emit(
                f"Sensitivity of {len(result.layers)} layers measured on {result.evaluation}{without}{most}"
            )

        def cancelled() -> None:
            if self.sensitivity:
                self.message.emit(f"Sensitivity cancelled; the {len(self.sensitivity)} layer(s) measured are kept")

        self.sensitivity_note.emit("")
        self.runner.submit(
            Task(
                "sensitivity", prepare, on_finished=measured, on_partial=self._sensitivity_point, on_cancelled=cancelled
            )
        )

    def _sensitivity_point(self: Session, layer: LayerSensitivity) -> None:
        if self.analysis is None or layer.name not in self.analysis.units:
            return
        self.sensitivity[layer.name] = layer
        self._emit_sensitivity()

    def relax_preview(self: Session, count: int) -> dict[str, int]:
        """The layers :meth:`relax_sensitive` would relax now and the counts they would get ({} when none)."""
        fresh = self.fresh_sensitivity()
        if fresh is None or self.analysis is None or count < 1:
            return {}
        return relaxed_counts(fresh, self.keep, self.analysis.units, int(count), self.constraints)

    def relax_sensitive(self: Session, count: int) -> bool:
        """Give the ``count`` most sensitive pruned layers back half of the units they lose (locked there),
        keeping the plan's target with the other layers; one undo step. Refused (``sensitivity_note``
        says why) without fresh measurements or when the target cannot be kept."""
        if self.analysis is None:
            return self._refuse_relax("run an analysis first")
        fresh = self.fresh_sensitivity()
        if fresh is None:
            return self._refuse_relax("measure the sensitivity of the current plan first")
        try:
            changed = relaxed_counts(fresh, self.keep, self.analysis.units, int(count), self.constraints)
        except SnpError as exc:
            return self._refuse_relax(str(exc))
        if not changed:
            return self._refuse_relax("no measured layer is pruned and unlocked: nothing to relax")
        constraints = self.constraints
        for name, k in changed.items():
            constraints = constraints.with_group(name, locked=k)
        if self.overridden:
            keep = {**self.keep, **changed}
        else:
            try:
                keep = dict(
                    self._plan_from(self.options.threshold_mode, self.options.threshold_value, constraints).keep
                )
            except SnpError as exc:
                return self._refuse_relax(f"the target cannot be kept with {len(changed)} layer(s) relaxed: {exc}")
        before = dict(self.keep)
        flops_before = self.analysis.cost(before)[1]
        self._begin_edit()
        self._set_constraints(constraints)
        self._planned = keep if not self.overridden else self._threshold_plan() or {}
        self._apply_keep(keep, final=True)
        self._end_edit()
        self.sensitivity_note.emit("")
        total = self.analysis.cost()[1] or 1.0
        cut_before, cut_after = 100 * (1 - flops_before / total), 100 * (1 - self.analysis.cost(keep)[1] / total)
        listed = ", ".join(f"{name} {before[name]} → {k}" for name, k in changed.items())
        self.message.emit(f"Relaxed and locked {listed}; FLOPs -{cut_before:.1f} % → -{cut_after:.1f} %")
        return True

    def _refuse_relax(self: Session, reason: str) -> bool:
        self.sensitivity_note.emit(reason)
        self.message.emit(f"Nothing relaxed: {reason}")
        return False
