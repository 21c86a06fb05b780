"""What a model spec, a data spec or a dropped path refers to; plain functions shared by the session and panels."""

from __future__ import annotations

from pathlib import Path

from snp_engine.models import DEMO_MODELS, TORCHVISION_PREFIX

MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")
PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt")
SESSION_SUFFIX = ".snpsession"


def guess_kind(spec: str) -> str:
    """Which model source a spec belongs to: "demo", "torchvision", "snp" (an export) or "pickle".

    Only an existing torch file counts as a pickle; anything else is tried as a safe file, so a
    mistyped name produces a "not found" message instead of a trust question.
    """
    if spec in DEMO_MODELS:
        return "demo"
    if spec.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    path = Path(spec)
    return "pickle" if path.suffix in PICKLE_SUFFIXES and path.is_file() else "snp"


def is_snp_export(path: str) -> bool:
    """True for a file written by snp's export (read from its header only, so it is instant)."""
    from snp_engine.errors import SnpError
    from snp_engine.io import read_metadata

    try:
        read_metadata(path)
    except SnpError:
        return False
    return True


def path_kind(path: str) -> str | None:
    """What a dropped or given path is: "session", "data", "snp" (an export), "weights" or None."""
    target = Path(path)
    if target.suffix == SESSION_SUFFIX:
        return "session"
    if target.is_dir() or target.suffix == ".npz":
        return "data"
    if target.suffix == ".safetensors" and is_snp_export(path):
        return "snp"
    return "weights" if target.suffix in MODEL_SUFFIXES else None
