"""Run folders: where a training run keeps its config, metrics, checkpoints and figures.

::

    RUN_DIR/
      config.toml        the fully resolved config (repeats the run exactly)
      metrics.jsonl      one JSON object per logged step / evaluation
      checkpoints/       step-00000500.pt … (atomic; the newest few are kept)
      samples/           sample grids or 2-D plots written during training
      samples.png        final samples (image grid; 2-D data: data, density and samples;
                         3+ dimensions: pairwise marginals of samples against test data)
      class-samples.png  one row per class (class-conditional priors)
      traversals.png     latent traversals along the largest-σ dimensions (Gaussian-type priors)
      reconstructions.png  test images and decode(encode(x))
      summary.json       final test NLL / bits-per-dim, speed, status
      config-history.jsonl  config changes made on resume (e.g. a lower train.lr), one per line
      .lock              held by the run that writes the folder (:mod:`flowkit.runlock`)

Every file is written atomically (:mod:`flowkit.atomic`) except the append-only JSONL logs; when
a run (re)starts in the folder it removes the temporary files an interrupted write left, and a
resume drops the ``metrics.jsonl`` records beyond the checkpoint it continues from.

Under torchrun only rank 0 writes in the run folder (:mod:`flowkit.distributed`).
:func:`load_run` rebuilds the trained model from a run folder without needing the data, even when
the dataset plugin is not available in the loading process (a dataset registered at runtime, a
plugin not installed): the checkpoints hold the data's :class:`~flowkit.data.DataMeta` (shape,
levels, classes, context, standardisation) and where the dataset plugin came from.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowkit.builder import build_model
from flowkit.checkpoint import check_fingerprint, load_checkpoint
from flowkit.data.base import DataMeta, DataSplits, resolve_data_dir
from flowkit.errors import CheckpointError, ConfigError, UnknownPluginError
from flowkit.model import Flow

CHECKPOINT_RE = re.compile(r"step-(\d+)\.pt$")


def select_device(spec: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(spec)``.

    Under torchrun (:mod:`flowkit.distributed`) a CUDA device is this process's own GPU,
    ``cuda:LOCAL_RANK``.
    """
    if spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ConfigError(f"train.device: {spec!r} is not a device (use auto, cpu, cuda)") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available; use auto")
    if device.type == "cuda":
        return _process_gpu(device)
    return device


def _process_gpu(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a process started by torchrun; ``device`` itself otherwise."""
    from flowkit import distributed

    if not distributed.is_initialized():
        return device
    if device.index is not None:
        if distributed.world_size() > 1:  # the same on every process: rank 0 reports it
            raise distributed.mark_every_rank(
                ConfigError(
                    f"train.device = {str(device)!r}, but under torchrun every process trains on its "
                    f"own GPU, cuda:LOCAL_RANK; set train.device to 'auto' or 'cuda'"
                )
            )
        return device
    local, count = distributed.local_rank(), torch.cuda.device_count()
    if local >= count:
        raise ConfigError(
            f"the process with LOCAL_RANK={local} has no GPU of its own ({count} visible); start "
            f"at most {count} processes per node (--nproc_per_node) or set train.device = 'cpu'"
        )
    return torch.device("cuda", local)


def load_dataset(
    config: dict[str, Any], source: dict[str, Any] | None = None, run_dir: str | Path | None = None
) -> DataSplits:
    """Build the dataset a resolved config names (``data_dir`` and ``seed`` injected).

    ``source`` (a checkpoint's :func:`dataset_source`) and ``run_dir`` are for the dataset of a
    trained run: when no plugin of that name is registered in this process the error says which
    dataset the run needs, where it came from and how to make it available.
    """
    from flowkit import registry
    from flowkit.config import DATA_KEYS

    data_cfg = config["data"]
    params = {k: v for k, v in data_cfg.items() if k not in DATA_KEYS}
    if source is not None and data_cfg["name"] not in registry.datasets.names(include_blocked=True):
        raise UnknownPluginError(missing_dataset_message(data_cfg["name"], source, run_dir))
    return registry.datasets.build(
        data_cfg["name"],
        params,
        injected={
            "seed": config["train"]["seed"],
            "data_dir": resolve_data_dir(data_cfg.get("data_dir") or None),
        },
        expect=DataSplits,
    )


def dataset_source(name: str) -> dict[str, str]:
    """Where dataset plugin ``name`` comes from in this process, for a run's checkpoints: the
    plugin's ``target`` (``module:function``) and its distribution (``"<runtime>"`` for an object
    registered with ``flowkit.registry.datasets.register``) and version."""
    from flowkit import registry

    entry = registry.datasets.entry(name)
    return {
        "name": name,
        "target": entry.target,
        "distribution": entry.distribution,
        "version": entry.version,
    }


def missing_dataset_message(
    name: str, source: dict[str, Any], run_dir: str | Path | None, purpose: str = "evaluate"
) -> str:
    """One line: the run needs dataset ``name``, which this process lacks, and how to provide it
    (``purpose``: ``"evaluate"`` or ``"resume"``, the call the Python route ends with)."""
    run = "RUN_DIR" if run_dir is None else str(run_dir)
    target, dist = source.get("target", "?"), source.get("distribution")
    then = (
        f"flowkit.trainer.resume({run!r}) in that process"
        if purpose == "resume"
        else f"flowkit.load_run({run!r}).load_data()"
    )
    register = (
        f"or, in Python, register it (flowkit.registry.datasets.register({name!r}, your_function)) "
        f"and then call {then}"
    )
    if dist == "<runtime>":
        origin = f"the process that trained it registered it at runtime ({target})"
        fix = (
            f"package it as a plugin (a 'flowkit.datasets' entry point named {name!r}, see "
            f"docs/writing-plugins.md) and install it, {register}"
        )
    elif dist:
        origin = f"it came from the package {dist} {source.get('version', '')}".rstrip() + f" ({target})"
        fix = f"install that package (pip install {dist}), {register}"
    else:
        origin = "it came from a plugin that is not installed here"
        fix = (
            f"install the package that provides it (a 'flowkit.datasets' entry point named "
            f"{name!r}), {register}"
        )
    return (
        f"run {run!r} needs dataset {name!r}, which is not registered in this process: {origin}. "
        f"To make it available, {fix}; a dataset that reads files also needs its folder (--data-dir "
        f"or $FLOWKIT_DATA). Sampling needs no data: flowkit sample {run} works as it is."
    )


def require_run_dataset(run_dir: str | Path) -> None:
    """Before resuming ``run_dir``: the one-line :func:`missing_dataset_message` when the dataset
    its config names is not registered in this process (e.g. one registered at runtime by the
    process that trained), instead of an unknown-plugin error that does not say why."""
    from flowkit import registry

    name = read_run_config(run_dir).get("data", {}).get("name")
    if not isinstance(name, str) or name in registry.datasets.names(include_blocked=True):
        return
    source: dict[str, Any] = {}
    for path in reversed(list_checkpoints(run_dir)):
        try:
            source = dict(load_checkpoint(path).get("dataset") or {})
        except CheckpointError:
            continue
        break
    raise UnknownPluginError(missing_dataset_message(name, source, run_dir, purpose="resume"))


def new_run_dir(out_dir: str | Path, config: dict[str, Any], name: str | None = None) -> Path:
    """A fresh folder ``out_dir/<transform>-<objective>-<data>-<timestamp>`` (or ``out_dir/name``)."""
    out = Path(out_dir)
    reuse_empty = name is not None  # a generated name always gets a folder of its own
    if name is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        objective = re.sub(r"[^\w.-]+", "", config["objective"]["name"].replace("*", "x"))
        name = f"{config['transform']['name']}-{objective}-{config['data']['name']}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    path, suffix = out / name, 1
    while True:  # mkdir is atomic: two runs started in the same second get different folders
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if reuse_empty and not any(path.iterdir()):  # an empty folder made for this run
                return path
        suffix += 1
        path = out / f"{name}-{suffix}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := CHECKPOINT_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a flowkit run folder (no config.toml). Pass the folder "
            f"that `flowkit run` created."
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"{path} is not valid TOML: {exc}") from exc


@dataclass
class Run:
    """A trained run: its config, model and bookkeeping (from :func:`load_run`)."""

    path: Path
    config: dict[str, Any]
    model: Flow
    meta: DataMeta
    step: int
    checkpoint: Path
    state: dict[str, Any] = field(repr=False, default_factory=dict)

    def load_data(self, data_dir: str | Path | None = None) -> DataSplits:
        """The run's dataset (``data_dir`` overrides the folder saved in the config)."""
        config = self.config
        if data_dir is not None:
            config = {**config, "data": {**config["data"], "data_dir": str(data_dir)}}
        return load_dataset(config, self.state.get("dataset", {}), self.path)


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto") -> Run:
    """Rebuild the model of a run folder from its newest (or the given) checkpoint."""
    from flowkit.config import resolve

    run_dir = Path(run_dir)
    config = resolve(read_run_config(run_dir), dataset_required=False)  # the meta is in the checkpoint
    if checkpoint is None:
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"run folder {str(run_dir)!r} has no checkpoints yet")
        checkpoint = ckpts[-1]
    state = load_checkpoint(checkpoint)
    check_fingerprint(state, config, checkpoint)
    meta = DataMeta.from_dict(state["meta"])
    model = build_model(config, meta)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} does not match the model that config.toml "
            f"describes: {str(exc).splitlines()[0]}"
        ) from exc
    model.to(select_device(device)).eval()
    return Run(run_dir, config, model, meta, int(state["step"]), Path(checkpoint), state)
