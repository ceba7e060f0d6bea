"""Atomic file writes: nothing a user made is left half-written.

The content goes to a temporary file in the target's folder (``.NAME.XXXXXXXX.tmp``), is flushed
and fsync'd, then renamed over the target (``os.replace`` is atomic on POSIX and Windows), and the
folder is fsync'd so the rename itself survives a crash. A crash at any moment leaves the old file
or the new one, never a torn one. A failed write removes its temporary file; one left by a process
that was killed is removed by :func:`remove_stale_temporaries` when a run (re)starts in the folder.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) is a :class:`DiskFullError` naming the
file, not a traceback (also when a library such as torch wraps the ``OSError`` in another error).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from flowkit.errors import FlowkitError

#: ``errno`` values that mean the device (or the user's quota) is full.
NO_SPACE = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
#: Names of the temporary files :func:`atomic_write` creates (``.NAME.`` + 8 random characters).
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


class DiskFullError(FlowkitError, OSError):
    """No space left on the device (or quota exceeded) while writing ``path``."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return str(self.args[0]) if self.args else ""


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) is an ``OSError`` for a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError) or (isinstance(current, OSError) and current.errno in NO_SPACE):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def disk_full_is_an_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised in the block into a :class:`DiskFullError` for ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not out_of_space(exc):
            raise
        raise DiskFullError(
            f"no space left on device while writing {path}; free space and try again",
            path,
        ) from None


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically with what ``write(fh)`` writes to a binary handle.

    A full disk raises :class:`DiskFullError` and leaves ``path`` as it was, with no temporary
    file behind.
    """
    path = Path(path)
    with disk_full_is_an_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not support fsync on folders
        pass
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Create or replace the text file ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode(encoding)
    return atomic_write(path, lambda fh: fh.write(data))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder`` (recursively).

    Only call it while no other process writes in ``folder`` (a training run does so under its
    run lock, :mod:`flowkit.runlock`). Returns the removed paths.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in root.rglob(".*.tmp"):
        if path.is_file() and _TEMPORARY.fullmatch(path.name):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return sorted(removed)
