"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is written atomically (:mod:`flowkit.atomic`: temporary file, fsync, rename): a
crash at any moment leaves either the old or the new checkpoint, never a torn one. Loading never
unpickles arbitrary objects; a corrupt or truncated file gives a :class:`CheckpointError` that
says so and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
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


#: The config keys that define a model (the rest — training, evaluation, the data folder — may
#: change between a checkpoint and the run that reads it).
_MODEL_SECTIONS = ("transform", "embedding", "prior")


def model_fingerprint(config: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """A short hash of what a checkpoint's weights belong to: model sections, data, data shape.

    Covers ``[transform]``, ``[embedding]``, ``[prior]``, ``[data]`` (without ``data_dir``, which
    may move) and the :class:`~flowkit.data.DataMeta` (shape, levels, classes, context,
    standardisation). Two configs with the same fingerprint build the same model for the same
    data; a checkpoint whose fingerprint differs from its run's belongs to another run.
    """
    from flowkit.config import DEFAULT_EMBEDDING

    what = {section: config.get(section, DEFAULT_EMBEDDING if section == "embedding" else {})
            for section in _MODEL_SECTIONS}
    what["data"] = {k: v for k, v in config.get("data", {}).items() if k != "data_dir"}
    what["meta"] = dict(meta)
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_fingerprint(state: Mapping[str, Any], config: Mapping[str, Any], path: Any) -> None:
    """Raise :class:`CheckpointError` when checkpoint ``state`` was not written for ``config``.

    Checkpoints from before fingerprints (no ``fingerprint`` key) pass; their model state must
    still fit the model when it is loaded.
    """
    saved = state.get("fingerprint")
    if saved is None or "meta" not in state:
        return
    expected = model_fingerprint(config, state["meta"])
    if saved != expected:
        theirs = _describe(state.get("config"))
        ours = _describe(config)
        raise CheckpointError(
            f"checkpoint {str(path)!r} was not written by this run: it belongs to a model of "
            f"{theirs}, but the run folder's config.toml describes {ours} (fingerprint {saved} "
            f"!= {expected}). Use the checkpoint with the run folder it came from, or start a "
            f"new run."
        )


def _describe(config: Any) -> str:
    """``transform 'x' on data 'y'`` from a config (or its TOML text)."""
    if isinstance(config, str):
        import tomllib

        try:
            config = tomllib.loads(config)
        except tomllib.TOMLDecodeError:
            return "another config"
    if not isinstance(config, Mapping):
        return "another config"
    return (f"transform {config.get('transform', {}).get('name')!r} on data "
            f"{config.get('data', {}).get('name')!r}")


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
