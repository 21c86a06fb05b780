"""Atomic file writes: a file snp writes is either the complete new one or the earlier one.

Every writer (exports, statistics files, deployment formats, sessions) goes through
:func:`atomic_write`; :func:`check_writable` refuses an impossible target before any work is done.
OS errors become :class:`~snp_engine.errors.SnpError` naming the path and what to change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from snp_engine.errors import SnpError


def check_writable(path: str | Path) -> Path:
    """Refuse a target that cannot be written (missing folder, a folder, no permission) up front;
    returns the folder the file will live in."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SnpError(f"cannot write {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise SnpError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SnpError(f"cannot write {path}: no permission to write in {folder}")
    return folder


def atomic_write(path: str | Path, write_fn: Callable[[Path], None]) -> Path:
    """Let ``write_fn`` write a temporary file beside ``path``, then move it into place.

    The temporary file is fsynced and renamed with ``os.replace``, which is atomic on one file
    system: readers see either the earlier file or the complete new one. On any exception
    (including Ctrl-C and :class:`~snp_engine.progress.Cancelled`) the temporary file is removed
    and an earlier file at ``path`` is left untouched. OS errors become :class:`SnpError` naming
    the path. A process killed outright (SIGKILL) cannot remove its temporary file, so a stray
    ``.<name>.<random>.tmp`` may remain; the file at ``path`` is still the earlier one.
    """
    path = Path(path)
    folder = check_writable(path)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(handle)
    temp = Path(name)
    try:
        write_fn(temp)
        _fsync_file(temp)
        _set_default_mode(temp)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    _fsync_folder(folder)
    return path


def _write_error(path: Path, exc: OSError) -> SnpError:
    folder = path.parent if str(path.parent) else Path(".")
    if exc.errno == errno.ENOSPC:
        return SnpError(f"cannot write {path}: no space left on the disk")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SnpError(f"cannot write {path}: no permission to write in {folder}")
    if exc.errno == errno.EROFS:
        return SnpError(f"cannot write {path}: {folder} is on a read-only file system")
    if exc.errno == errno.ENOENT:
        return SnpError(f"cannot write {path}: the folder {folder} does not exist")
    if exc.errno == errno.EISDIR:
        return SnpError(f"cannot write {path}: it is a folder")
    return SnpError(f"cannot write {path}: {exc.strerror or exc}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not possible on every platform, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_default_mode(path: Path) -> None:
    """mkstemp creates owner-only files; give the result the permissions a normal file gets."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


__all__ = ["atomic_write", "check_writable"]
