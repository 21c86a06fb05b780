"""The ``snp`` command line: inspect, analyse, prune, evaluate and fine-tune vision networks.

``parser`` builds the arguments, ``commands`` runs each subcommand through
:mod:`snp_engine.workflows` and formats the result, ``plumbing`` holds what they share.

Every subcommand prints readable text, or exactly one JSON object with ``--json``; progress goes
to stderr (``--quiet`` silences it). Problems the user can fix end in one ``snp: error: …`` line
and exit code 2, never a traceback; Ctrl-C ends with exit code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from snp_engine import distributed
from snp_engine.cli.parser import build_parser
from snp_engine.errors import SnpError
from snp_engine.progress import Cancelled, Reporter, TextReporter

EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_INTERNAL = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``snp`` command with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    if getattr(args, "distributed", False) and os.environ.get("RANK", "0") != "0":
        args.quiet = True  # under torchrun, process 0 alone reports progress and prints the result
    reporter: Reporter = Reporter() if args.quiet else TextReporter(sys.stderr)
    stdout = sys.stdout if os.environ.get("RANK", "0") == "0" or not getattr(args, "distributed", False) else None
    try:
        # Libraries that print would corrupt the JSON on stdout, so their chatter goes to stderr.
        ending = distributed.stopped_by_sigterm() if getattr(args, "distributed", False) else contextlib.nullcontext()
        with contextlib.redirect_stdout(sys.stderr), ending:
            result, lines = args.handler(args, reporter)
    except (KeyboardInterrupt, Cancelled):
        return _fail(args, "cancelled", EXIT_CANCELLED, stdout, prefix="")
    except SnpError as exc:
        return _fail(args, str(exc), EXIT_ERROR, stdout)
    except OSError as exc:
        return _fail(args, _os_message(exc), EXIT_ERROR, stdout)
    except Exception as exc:
        if args.debug:
            raise
        if distributed.active() and _is_collective_failure(exc):  # another process died or timed out
            message = f"another process of the distributed job failed or timed out ({type(exc).__name__}: {exc})"
            return _fail(args, message, EXIT_ERROR, stdout)
        message = f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        return _fail(args, message, EXIT_INTERNAL, stdout, prefix="")
    finally:
        distributed.stop()
    if stdout is None:
        return 0
    if args.json:
        stdout.write(json.dumps(result, indent=2, default=_jsonable) + "\n")
    else:
        stdout.write("\n".join(lines) + "\n")
    stdout.flush()
    return 0


def _fail(args: argparse.Namespace, message: str, code: int, stdout, prefix: str = "error: ") -> int:
    """One line on stderr (and, with --json, one JSON object on stdout) instead of a traceback."""
    line = " ".join(str(message).split())
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 78 + "\r")  # clear an unfinished progress line
    sys.stderr.write(f"snp: {prefix}{line}\n")
    if args.json and stdout is not None:
        stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
    return code


def _is_collective_failure(exc: BaseException) -> bool:
    """A gloo/NCCL error: a peer process closed its connection or a collective timed out."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("gloo", "nccl", "timed out", "timeout", "connection", "peer"))


def _os_message(exc: OSError) -> str:
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


__all__ = ["EXIT_CANCELLED", "EXIT_ERROR", "EXIT_INTERNAL", "build_parser", "main"]
