"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'd, then renamed
over the target (``os.replace`` is atomic on POSIX and Windows), and the folder is fsync'd: a crash
at any moment leaves either the old or the new checkpoint, never a torn one. Loading never
unpickles arbitrary objects; a corrupt or truncated file gives a :class:`CheckpointError` that
says so and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowkit.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format_version": FORMAT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not support fsync on folders
        pass
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Use another checkpoint from the same run folder (checkpoints/step-*.pt) or retrain."
        ) from exc
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise CheckpointError(
            f"{str(path)!r} is not a flowkit checkpoint (no model state or format version)"
        )
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer flowkit (format {state['format_version']}); "
            f"upgrade flowkit to read it"
        )
    return state
