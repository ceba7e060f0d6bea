"""One writer per run folder: an OS-level lock held for a training run's whole life.

``flowkit run`` and ``flowkit run --resume`` take an exclusive ``fcntl.flock`` on
``RUN_DIR/.lock`` before they write anything and keep it until the process ends; the file records
who holds it (process id, host, start time). A second writer of the same folder gets a
:class:`~flowkit.errors.ConfigError` naming that process, instead of two runs interleaving their
configs, checkpoints and metrics. Readers (``flowkit eval``, ``flowkit sample``) take no lock and
keep working while a run trains. The operating system releases the lock when the process dies, so
a crash never leaves a folder locked (the stale file is harmless). On systems without ``fcntl``
(Windows) runs are not locked.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path
from typing import IO

from flowkit.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_HELD: dict[Path, IO[str]] = {}


def acquire(run_dir: str | os.PathLike[str]) -> Path:
    """Lock ``run_dir`` for this process (idempotent); :class:`ConfigError` if another holds it."""
    folder = Path(run_dir).resolve()
    if folder in _HELD or fcntl is None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = _describe(fh.read())
        fh.close()
        raise ConfigError(
            f"run folder {str(run_dir)!r} is in use by another flowkit run ({holder}); two "
            f"writers would mix their checkpoints and metrics. Wait for it to finish (then "
            f"`flowkit run --resume {run_dir}` continues it), or train in another folder "
            f"(--out/--name)."
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
            }
        )
    )
    fh.flush()
    _HELD[folder] = fh
    return folder


def release(run_dir: str | os.PathLike[str]) -> None:
    """Give the lock of ``run_dir`` back (no-op if this process does not hold it)."""
    fh = _HELD.pop(Path(run_dir).resolve(), None)
    if fh is not None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
