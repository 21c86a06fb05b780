"""Reading file headers without trusting them: what a file holds, and its JSON metadata.

:func:`sniff_format` tells from the first bytes what a file holds, whatever its name.
:func:`read_safetensors_metadata` returns the string metadata of a safetensors file (snp keeps a
JSON document under :data:`METADATA_KEY`), and :func:`parse_json` decodes such a document with
limits on its size and nesting. :class:`FieldReader` then reads typed, bounded values out of it.
A crafted header therefore ends in one line naming the file and the field (an
:class:`~snp_engine.errors.SnpError`), never in a ``RecursionError``, a ``TypeError`` or an
allocation of terabytes.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snp_engine.errors import ModelLoadError, SnpError

# The JSON document of snp's metadata lives under this key of the safetensors metadata.
METADATA_KEY = "snp"
# snp writes headers a few levels deep (header -> pruning -> kept -> list); anything far deeper is
# crafted, and deep structures would overflow the stack of every recursive consumer (copy, json).
MAX_JSON_DEPTH = 32
# The safetensors reader itself refuses headers over 100 MB.
MAX_JSON_CHARS = 100_000_000
# How much of an offending value an error message quotes.
_QUOTE_CHARS = 60


# ----------------------------------------------------------------------------------------------
# What a file holds


def sniff_format(path: Path) -> str:
    """What a file holds, judged by its first bytes rather than its name.

    One of ``"empty"``, ``"safetensors"``, ``"torchscript"``, ``"zip"`` (a ``torch.save`` archive),
    ``"damaged-zip"`` (truncated or corrupt archive), ``"pickle"`` (legacy ``torch.save``),
    ``"numpy"`` or ``"unknown"``. Reading a few bytes is cheap and lets every loader give a message
    that says what the file really is.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "damaged-zip"
        if any(name.partition("/")[2] == "constants.pkl" for name in names):
            return "torchscript"
        return "zip"
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    # safetensors before pickle: a header length such as 0x0380 also starts with a pickle's 0x80 0x03
    if len(head) >= 9 and head[8:9] == b"{":
        header_size = int.from_bytes(head[:8], "little")
        if 2 <= header_size <= size - 8:
            return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty if it has none); a malformed file is a
    :class:`ModelLoadError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None


def read_safetensors_metadata(path: Path, what: str = "an snp export") -> dict[str, str]:
    """Like :func:`safetensors_metadata`, but a missing, empty or PyTorch file gets a message that
    says so; ``what`` names the kind of file that was expected."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    kind = sniff_format(path)
    if kind == "empty":
        raise ModelLoadError(f"{path}: the file is empty (0 bytes)")
    if kind in ("zip", "pickle", "torchscript", "damaged-zip"):
        raise ModelLoadError(f"{path}: a PyTorch file, not {what} (snp writes safetensors files)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for malformed files
        what = "a damaged or truncated safetensors file" if kind == "safetensors" else "not a readable safetensors file"
        raise ModelLoadError(f"{path}: {what} ({exc})") from None


# ----------------------------------------------------------------------------------------------
# JSON with limits


def parse_json(text: object, path: Path, what: str, error: type[SnpError] = ModelLoadError) -> Any:
    """Decode the JSON document ``text`` of ``path``, refusing oversized or too deeply nested ones.

    ``what`` names the document in messages (``"the snp metadata"``); ``error`` is the error class
    raised. Nesting is limited to :data:`MAX_JSON_DEPTH` arrays/objects.
    """
    if not isinstance(text, str):
        raise error(f"{path}: {what} is missing")
    if len(text) > MAX_JSON_CHARS:
        raise error(f"{path}: {what} is {len(text):,} characters long, more than snp reads")
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # json.JSONDecodeError, and integers with thousands of digits
        raise error(f"{path}: {what} is not valid JSON ({shorten(str(exc))})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise error(f"{path}: {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return value


def json_depth(value: Any) -> int:
    """How many arrays/objects deep ``value`` nests (0 for a scalar), found without recursion; the
    walk stops as soon as it is deeper than :data:`MAX_JSON_DEPTH`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def to_json(value: Any) -> str:
    """``value`` as JSON, with tensors, arrays, paths and sets written as plain values."""
    return json.dumps(value, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def shorten(text: str, limit: int = _QUOTE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters so that an error message can quote it."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(value: Any) -> str:
    """A JSON value in a few words, for error messages: ``the string 'abc'``, ``a list``, …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {shorten(repr(value))}"
    if isinstance(value, str):
        return f"the string {shorten(repr(value))}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------
# Typed fields


class FieldReader:
    """Typed, bounded reads from a parsed JSON header.

    Every wrong type or out-of-range value raises ``error`` with one line naming the file and the
    field, e.g. ``model.safetensors: invalid snp metadata: 'num_classes' is 1000000000000; snp
    accepts at most 100,000 classes``.
    """

    def __init__(self, path: Path, what: str = "snp metadata", error: type[SnpError] = ModelLoadError) -> None:
        self.path = path
        self.what = what
        self.error = error

    def fail(self, field: str, problem: str) -> SnpError:
        """The error for ``field`` (a dotted name such as ``pruning.units``)."""
        return self.error(f"{self.path}: invalid {self.what}: '{shorten(field)}' {problem}")

    def integer(self, value: Any, field: str, *, low: int = 0, high: int, what: str = "") -> int:
        """A JSON integer (not a boolean, not a float) in ``low..high``; ``what`` says what it counts."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number, not {describe(value)}")
        unit = f" {what}" if what else ""
        if value > high:
            raise self.fail(field, f"is {shorten(str(value))}; snp accepts at most {high:,}{unit}")
        if value < low:
            raise self.fail(field, f"is {shorten(str(value))}; it must be at least {low:,}{unit}")
        return value

    def number(self, value: Any, field: str) -> float:
        """A finite JSON number."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(field, f"must be a finite number, not {describe(value)}")
        return float(value)

    def text(self, value: Any, field: str, *, longest: int = 1000) -> str:
        """A JSON string of at most ``longest`` characters."""
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, not {describe(value)}")
        if len(value) > longest:
            raise self.fail(field, f"is {len(value):,} characters long (at most {longest:,})")
        return value

    def flag(self, value: Any, field: str) -> bool:
        """JSON true or false."""
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, not {describe(value)}")
        return value

    def optional_text(self, value: Any, field: str, *, longest: int = 1000) -> str | None:
        """A JSON string or null."""
        return None if value is None else self.text(value, field, longest=longest)

    def optional_number(self, value: Any, field: str) -> float | None:
        """A finite JSON number or null."""
        return None if value is None else self.number(value, field)

    def mapping(self, value: Any, field: str, *, longest: int = 100_000, optional: bool = False) -> dict[str, Any]:
        """A JSON object with at most ``longest`` entries; ``optional`` lets null or a missing field
        (pass ``None``) stand for an empty one."""
        if value is None and optional:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be an object, not {describe(value)}")
        if len(value) > longest:
            raise self.fail(field, f"has {len(value):,} entries (at most {longest:,})")
        return dict(value)

    def sequence(self, value: Any, field: str, *, longest: int = 100_000, optional: bool = False) -> list[Any]:
        """A JSON array with at most ``longest`` items; ``optional`` as for :meth:`mapping`."""
        if value is None and optional:
            return []
        if not isinstance(value, list | tuple):
            raise self.fail(field, f"must be a list, not {describe(value)}")
        if len(value) > longest:
            raise self.fail(field, f"has {len(value):,} items (at most {longest:,})")
        return list(value)

    def integers(self, value: Any, field: str, *, low: int = 0, high: int, longest: int, what: str = "") -> list[int]:
        """A JSON array of at most ``longest`` integers, each in ``low..high``."""
        return [
            self.integer(item, f"{field}[{index}]", low=low, high=high, what=what)
            for index, item in enumerate(self.sequence(value, field, longest=longest))
        ]


__all__ = [
    "MAX_JSON_DEPTH",
    "METADATA_KEY",
    "FieldReader",
    "describe",
    "json_depth",
    "parse_json",
    "read_safetensors_metadata",
    "safetensors_metadata",
    "shorten",
    "sniff_format",
    "to_json",
]
