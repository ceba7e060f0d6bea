"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is written atomically (:mod:`flowkit.atomic`: temporary file, fsync, rename): a
crash at any moment leaves either the old or the new checkpoint, never a torn one. Loading never
unpickles arbitrary objects; a corrupt or truncated file gives a :class:`CheckpointError` that
says so and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowkit.atomic import atomic_write
from flowkit.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (:func:`flowkit.atomic.atomic_write`)."""
    payload = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


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


def drop_mismatched_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Forget the optimiser state of parameters whose saved state has another shape.

    ``Optimizer.load_state_dict`` does not compare the saved moment tensors with the parameters,
    so a checkpoint written by an older flowkit whose layer stored a parameter at a different size
    (e.g. the full-size coupling conditioners before the sliced fast path) would load and then fail
    at the first step. The model itself loads such checkpoints (it narrows the old tensors); here
    the affected parameters simply restart their moments (Adam's ``exp_avg``/``exp_avg_sq``),
    which keeps the run resumable. Returns how many parameter tensors were reset.
    """
    stale = [
        param for param, state in optimizer.state.items()
        if any(isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape
               for value in state.values())
    ]
    for param in stale:
        del optimizer.state[param]
    return len(stale)
