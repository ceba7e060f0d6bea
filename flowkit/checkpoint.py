"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is written atomically (:mod:`flowkit.atomic`: temporary file, fsync, rename): a
crash at any moment leaves either the old or the new checkpoint, never a torn one. Loading never
unpickles arbitrary objects. A file that cannot be used gives a :class:`CheckpointError` that says
which kind of problem it is and what to do:

* **truncated or corrupt** — not a complete PyTorch file (an interrupted copy, a damaged disk);
* **pickle-bearing** — it holds Python objects that only an unrestricted unpickler could create,
  which flowkit refuses to run (unpickling can execute arbitrary code); flowkit never writes such
  files;
* **foreign** — a readable PyTorch file that is not a flowkit checkpoint, or a flowkit checkpoint
  of another run (:func:`check_fingerprint`).

:func:`non_finite_tensors` finds NaN/inf values in a state: the trainer writes a checkpoint only
when its state is finite, so the "last good checkpoint" a divergence message names is good.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Iterator, Mapping
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
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises :class:`CheckpointError` saying whether the file is missing, truncated or corrupt,
    pickle-bearing, or not a flowkit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(_unreadable_message(path, exc)) from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise CheckpointError(_foreign_message(path, state))
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer flowkit (format {state['format_version']}); "
            f"upgrade flowkit to read it"
        )
    return state


_OTHER_CHECKPOINTS = (
    "Use another checkpoint of the same run folder (checkpoints/step-*.pt, --checkpoint FILE) or retrain."
)


def _unreadable_message(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in flowkit's words (never torch's hint)."""
    text = str(exc)
    if (
        isinstance(exc, pickle.UnpicklingError)
        and "Weights only load failed" in text
        and re.search(r"GLOBAL |[Uu]nsupported (global|class)|unrecognized function", text)
    ):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it needs {found.group(1)})" if found else ""
        return (
            f"checkpoint {str(path)!r} is pickle-bearing: it holds Python objects{what}, not "
            f"only tensors and plain values. flowkit never writes such files and refuses to "
            f"unpickle them, because unpickling can run arbitrary code. It was not written by "
            f"flowkit; if it is a checkpoint of yours from elsewhere, convert it to a state dict "
            f"of tensors in the program that wrote it. {_OTHER_CHECKPOINTS}"
        )
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return (
            f"checkpoint {str(path)!r} is empty (0 bytes): it was truncated, e.g. by a copy "
            f"that did not finish. {_OTHER_CHECKPOINTS}"
        )
    return (
        f"checkpoint {str(path)!r} is truncated or corrupt ({size} bytes) and cannot be read: "
        f"it is not a complete PyTorch file (an interrupted copy or a damaged disk; "
        f"{type(exc).__name__}). {_OTHER_CHECKPOINTS}"
    )


def _foreign_message(path: Path, state: Any) -> str:
    if isinstance(state, Mapping):
        keys = ", ".join(map(str, list(state)[:5])) or "nothing"
        held = f"a dictionary of {keys}"
    else:
        held = f"a {type(state).__name__}"
    return (
        f"{str(path)!r} is not a flowkit checkpoint (no model state or format version; it holds "
        f"{held}): a foreign PyTorch file, e.g. from another program. Pass a checkpoint from "
        f"a flowkit run folder (checkpoints/step-*.pt)."
    )


def non_finite_tensors(state: Mapping[Any, Any], prefix: str = "") -> Iterator[str]:
    """Dotted names of the floating-point tensors in ``state`` that hold NaN or ±inf (a list's
    items are named by their index)."""
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                yield name
        elif isinstance(value, Mapping):
            yield from non_finite_tensors(value, name + ".")
        elif isinstance(value, (list, tuple)):
            yield from non_finite_tensors(dict(enumerate(value)), name + ".")


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

    what = {
        section: config.get(section, DEFAULT_EMBEDDING if section == "embedding" else {})
        for section in _MODEL_SECTIONS
    }
    what["data"] = {k: v for k, v in config.get("data", {}).items() if k != "data_dir"}
    what["meta"] = dict(meta)
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_fingerprint(state: Mapping[str, Any], config: Mapping[str, Any], path: Any) -> None:
    """Raise :class:`CheckpointError` when checkpoint ``state`` was not written for ``config``.

    Checkpoints from before fingerprints (no ``fingerprint`` key) pass; their model state must
    still fit the model when it is loaded. A checkpoint whose own config lacks keys that
    ``config`` sets — values recorded or defaults added since it was written (e.g. the effective
    ``hidden`` width of a run resumed after an upgrade) — is compared on the keys it has.
    """
    saved = state.get("fingerprint")
    if saved is None or "meta" not in state:
        return
    expected = model_fingerprint(config, state["meta"])
    if saved == expected:
        return
    theirs = _as_config(state.get("config"))
    if theirs is not None and model_fingerprint(_restricted(config, theirs), state["meta"]) == saved:
        return
    raise CheckpointError(
        f"checkpoint {str(path)!r} was not written by this run: it belongs to a model of "
        f"{_describe(theirs)}, but the run folder's config.toml describes {_describe(config)} "
        f"(fingerprint {saved} != {expected}). Use the checkpoint with the run folder it came "
        f"from, or start a new run."
    )


def _restricted(config: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """``config``'s fingerprinted sections cut down to the keys ``theirs`` has."""
    out = dict(config)
    for section in (*_MODEL_SECTIONS, "data"):
        if section not in theirs:
            out.pop(section, None)
        elif isinstance(config.get(section), Mapping) and isinstance(theirs[section], Mapping):
            out[section] = {k: v for k, v in config[section].items() if k in theirs[section]}
    return out


def _as_config(config: Any) -> Mapping[str, Any] | None:
    """A checkpoint's config (stored as TOML text), or ``None`` when it has none."""
    if isinstance(config, str):
        import tomllib

        try:
            return tomllib.loads(config)
        except tomllib.TOMLDecodeError:
            return None
    return config if isinstance(config, Mapping) else None


def _describe(config: Mapping[str, Any] | None) -> str:
    """``transform 'x' on data 'y'`` from a config."""
    if not isinstance(config, Mapping):
        return "another config"
    return (
        f"transform {config.get('transform', {}).get('name')!r} on data "
        f"{config.get('data', {}).get('name')!r}"
    )


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
        param
        for param, state in optimizer.state.items()
        if any(
            isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape
            for value in state.values()
        )
    ]
    for param in stale:
        del optimizer.state[param]
    return len(stale)
