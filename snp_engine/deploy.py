"""Deployment formats: TorchScript and ONNX files of a (pruned) model, each verified before it is kept.

Both writers trace the model on an example batch, write through
:func:`~snp_engine.atomic.atomic_write`, reload what they wrote and compare its outputs with the
model's (:func:`~snp_engine.verification.check_close`); a difference means nothing is written. The
ONNX file is run in onnxruntime for that check, so ONNX export needs both ``onnx`` and
``onnxruntime`` (``pip install snp[export]``); :func:`require_onnx` says so before any work.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from snp_engine.activations import model_dtype
from snp_engine.atomic import atomic_write
from snp_engine.errors import SnpError
from snp_engine.verification import EXPORT_TOLERANCE, ONNX_TOLERANCE, check_close, cpu_eval_copy, first_output


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace ``model`` on ``example`` and save it for ``torch.jit.load``; verified before it is kept."""
    reference = cpu_eval_copy(model)
    example = example.detach().cpu().to(model_dtype(reference))
    with torch.inference_mode():
        expected = first_output(reference(example))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about constant shapes
        try:
            traced = torch.jit.trace(reference, example, check_trace=False)
        except Exception as exc:  # tracing fails in many ways on data-dependent control flow
            raise SnpError(f"cannot export to TorchScript: tracing failed ({type(exc).__name__}: {exc})") from None

    def write(temp: Path) -> None:
        traced.save(str(temp))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
            loaded = torch.jit.load(str(temp), map_location="cpu")
        with torch.inference_mode():
            check_close(expected, first_output(loaded(example)), EXPORT_TOLERANCE, "the TorchScript file")

    return atomic_write(path, write)


ONNX_INSTALL = "pip install onnx onnxruntime (or pip install snp[export])"


def require_onnx() -> None:
    """Refuse ONNX export, with the install command, when onnx or onnxruntime is missing."""
    missing = []
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise SnpError(
            f"ONNX export needs the {' and '.join(missing)} package{'s' * (len(missing) > 1)} "
            f"(onnxruntime runs the file to check it against the model): {ONNX_INSTALL}"
        )


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *, opset: int = 17) -> Path:
    """Export ``model`` to ONNX with a dynamic batch dimension, checked by ``onnx.checker`` and by
    running it in onnxruntime on ``example`` and comparing the outputs with the model's (to
    ``ONNX_TOLERANCE`` of the largest output magnitude); a failed check writes nothing."""
    require_onnx()
    import onnx

    reference = cpu_eval_copy(model)
    example = example.detach().cpu().to(model_dtype(reference))
    with torch.inference_mode():
        expected = first_output(reference(example))

    def write(temp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    reference,
                    (example,),
                    str(temp),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=opset,
                    dynamo=False,
                )
            except OSError:
                raise
            except Exception as exc:  # the exporter reports unsupported operators in many ways
                raise SnpError(f"cannot export to ONNX ({type(exc).__name__}: {exc})") from None
        try:
            onnx.checker.check_model(str(temp))
        except Exception as exc:  # onnx.checker.ValidationError and friends
            raise SnpError(f"the ONNX file failed onnx.checker ({exc}); nothing was written") from None
        _run_onnx(temp, example, expected)

    return atomic_write(path, write)


def _run_onnx(path: Path, example: torch.Tensor, expected: torch.Tensor) -> None:
    """Compare onnxruntime's outputs with the model's."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    actual = session.run(None, {name: example.numpy()})[0]
    check_close(expected, torch.from_numpy(np.asarray(actual)), ONNX_TOLERANCE, "the ONNX file (onnxruntime)")


__all__ = ["export_onnx", "export_torchscript", "require_onnx"]
