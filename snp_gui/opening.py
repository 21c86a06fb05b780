"""The session's way in and out: models, data, dropped paths and session files, and the data check.

:class:`Opening` is part of :class:`~snp_gui.state.Session` (which defines the state and the
signals it uses). It checks what the user asked for before anything is loaded (a pickled model
only after ``confirm_trust`` agreed, a path by what it is), loads it in the background, and then
fits the data to the model and scores the unpruned model on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from snp_engine import workflows
from snp_engine.data import DataBundle
from snp_engine.errors import SnpError
from snp_engine.models import LoadedModel
from snp_engine.workflows import Prepared
from snp_gui import session_file
from snp_gui.sources import MODEL_SUFFIXES, guess_kind, path_kind
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session


class Opening:
    """Models, data and session files as the user asks for them (menus, recent files, drops, the setup panels)."""

    # -- what the user asked for ------------------------------------------------------------------

    def open_model(self: Session, spec: str, kind: str | None = None) -> None:
        """Load ``spec``; a pickle (``kind`` "pickle") only once ``confirm_trust`` said yes."""
        spec = spec.strip()
        kind = kind or guess_kind(spec)
        self.model_requested.emit(spec, kind)
        if not spec:
            self.error_occurred.emit("load model", "choose a model file first")
            return
        trust = kind == "pickle"
        if trust and not self.confirm_trust(spec):
            self.message.emit("Not opened: the pickled model was not trusted")
            return
        self.load_model(spec, trust=trust)

    def open_data(self: Session, spec: str) -> None:
        self.data_requested.emit(spec)
        self.load_data(spec)

    def open_demo(self: Session, model: str = "demo-vgg", data: str = "digits") -> None:
        self.open_model(model)
        self.open_data(data)

    def open_path(self: Session, path: str) -> bool:
        """Open a dropped or given path by what it is: session, data folder/npz, snp export or weights file.

        A weights file goes to the model panel (``weights_requested``), which pairs it with the
        architecture chosen there. False when the path is none of these.
        """
        kind = path_kind(path)
        if kind == "session":
            self.open_session_file(path)
        elif kind == "data":
            self.open_data(path)
        elif kind == "snp":
            self.open_model(path, "snp")
        elif kind == "weights":
            self.weights_requested.emit(path)
        else:
            self.message.emit(
                f"Don't know how to open {Path(path).name}: drop a model file "
                f"({', '.join(MODEL_SUFFIXES)}), an image folder, an .npz or a session"
            )
            return False
        return True

    def open_session_file(self: Session, path: str) -> None:
        try:
            saved = session_file.read_session(path)
        except SnpError as exc:
            self.error_occurred.emit("open session", str(exc))
            return
        trust = saved.model_kind == "pickle" and bool(saved.model_spec)
        if trust and not self.confirm_trust(saved.model_spec):
            self.message.emit("Session not opened: its pickled model was not trusted")
            return
        self._reset_analysis()  # nothing of the previous work may stay on screen, even if the model fails to load
        self._clear_results("all")
        if saved.model_spec:
            self.model_requested.emit(saved.model_spec, saved.model_kind or guess_kind(saved.model_spec))
        if saved.data_spec:
            self.data_requested.emit(saved.data_spec)
        session_file.restore(self, path, saved, trust)
        self.session_path = path
        self.session_file_changed.emit(path)

    def save_session_file(self: Session, path: str) -> None:
        """Save in the background; ``session_file_changed`` follows once the file is written."""
        # what was loaded, not what the panel shows now: a pickle must ask for trust again on reopening
        kind = None if self.model is None else "pickle" if self.model_trusted else guess_kind(self.model.spec)
        session_file.save(self, path, kind, on_saved=lambda _written: self._session_saved(path))

    def _session_saved(self: Session, path: str) -> None:
        self.session_path = path
        self.session_file_changed.emit(path)

    # -- loading (what the requests above end up calling) -----------------------------------------
    def load_model(self: Session, spec: str, trust: bool = False) -> None:
        spec = spec.strip()
        if not spec:
            self.error_occurred.emit("load model", "choose a model first")
            return
        self.runner.submit(
            Task(
                "load model",
                lambda: lambda reporter: workflows.load_model(spec, trust=trust, reporter=reporter),
                on_finished=lambda loaded: self._set_model(loaded, trust),
            )
        )

    def _set_model(self: Session, loaded: LoadedModel, trust: bool) -> None:
        self.model, self.model_trusted = loaded, trust
        self._reset_analysis()
        self._clear_results("all")
        self.model_changed.emit(loaded)
        self.message.emit(f"Loaded {loaded.arch} ({loaded.num_classes} classes, input {_shape(loaded.input_shape)})")
        self.check_data()

    def load_data(self: Session, spec: str) -> None:
        spec = spec.strip()
        if not spec:
            self.error_occurred.emit("load data", "choose a dataset first")
            return
        self.runner.submit(
            Task(
                "load data",
                lambda: lambda reporter: workflows.open_data(spec),
                on_finished=lambda bundle: self._set_data(spec, bundle),
            )
        )

    def _set_data(self: Session, spec: str, bundle: DataBundle) -> None:
        self.data, self.data_spec = bundle, spec
        self._baseline = None
        self.data_changed.emit(bundle)
        skipped = f", {bundle.skipped} unreadable file(s) skipped" if bundle.skipped else ""
        use = (
            f"{len(bundle.calibration)} calibration / {len(bundle.test)} test images"
            if bundle.held_out
            else f"{len(bundle.calibration)} images (calibration and evaluation)"
        )
        self.message.emit(f"Loaded data {bundle.name}: {use}{skipped}")
        self.check_data()

    def _prepared_key(self: Session) -> tuple:
        return (id(self.model), id(self.data), self.options.input_size or None)

    def check_data(self: Session) -> None:
        """Fit the data to the model and score the unpruned model on it (in the background); the
        data panel shows what was adapted and any warning, e.g. near-chance accuracy."""
        self.checked = None
        self.prepared_changed.emit(None)  # the previous check no longer describes what is loaded
        if self.model is None or self.data is None:
            return

        def prepare():
            key, model, data, opts = self._prepared_key(), self.model, self.data, self.options.copy()

            def run(reporter):
                prepared = workflows.prepare(
                    model, data, input_size=opts.input_size or None, device=opts.device, reporter=reporter
                )
                return key, prepared

            return run

        self.runner.submit(Task("check data", prepare, on_finished=self._set_prepared))

    def _set_prepared(self: Session, result: tuple[tuple, Prepared]) -> None:
        key, prepared = result
        if key != self._prepared_key():
            return  # the model, data or input size changed meanwhile; a newer check is queued
        self._prepared, self.checked = result, prepared
        self.prepared_changed.emit(prepared)
        if prepared.warnings:  # the whole text is in the data panel; a status line only fits the start
            count = len(prepared.warnings)
            self.message.emit(f"Data check: {count} warning(s), see the Data panel — {prepared.warnings[0]}")

    def prepared(self: Session) -> Prepared:
        """The model and data fitted to each other (the checked result when it is there)."""
        if self.model is None:
            raise SnpError("load a model first")
        if self.data is None:
            raise SnpError("load a dataset first")
        key = self._prepared_key()
        if self._prepared is None or self._prepared[0] != key:  # reuse it, so cached baselines stay valid
            input_size = self.options.input_size or None
            self._prepared = (key, workflows.prepare(self.model, self.data, input_size=input_size, dense_check=False))
        return self._prepared[1]

    def model_data(self: Session) -> DataBundle:
        """The calibration data adapted to the model's input (channels, size)."""
        return self.prepared().require_data()


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)
