"""The session's architecture graph: the analysed network's layers, shapes, data flow and unit groups.

:class:`ArchitectureJobs` is part of :class:`~snp_gui.state.Session` (which defines the
``architecture_changed`` signal). The graph comes from :func:`snp_engine.workflows.architecture.architecture`
(one forward pass with hooks) in the background; it is built when a view asks for it (the Architecture
tab when it is shown) and dropped when another analysis arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snp_engine.errors import SnpError
from snp_engine.workflows.architecture import Architecture, architecture
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session


class ArchitectureJobs:
    """Building and holding the graph of the analysed network."""

    def _init_architecture(self: Session) -> None:
        self.architecture: Architecture | None = None
        self._architecture_for: int | None = None  # id of the analysis a graph is built or being built for
        self.analysis_changed.connect(lambda _analysis: self._drop_architecture())

    def _drop_architecture(self: Session) -> None:
        self._architecture_for = None
        if self.architecture is not None:
            self.architecture = None
            self.architecture_changed.emit(None)

    def build_architecture(self: Session) -> None:
        """Build the graph of the analysed network in the background, unless it is there or on its way."""
        if self.analysis is None or self.model is None or self._architecture_for == id(self.analysis):
            return
        self._architecture_for = id(self.analysis)

        def prepare():
            if self.analysis is None or self.model is None:
                raise SnpError("run an analysis first")
            model, shape, analysis = self.model.model, self.prepared().input_shape, self.analysis
            device = self.options.device

            def run(reporter):
                reporter.update(0.0, "tracing the layers")
                graph = architecture(model, shape, analysis, device=device)
                reporter.update(1.0, "architecture traced")
                return analysis, graph

            return run

        def built(result) -> None:
            analysis, graph = result
            if analysis is self.analysis:  # not another analysis meanwhile
                self.architecture = graph
                self.architecture_changed.emit(graph)

        def failed(_text: str) -> None:
            self._architecture_for = None

        self.runner.submit(
            Task("architecture", prepare, on_finished=built, on_failed=failed, on_cancelled=lambda: failed(""))
        )
