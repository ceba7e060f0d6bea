"""The built-in experiment-tracking loggers of ``train.loggers``: TensorBoard, MLflow, W&B.

Each mirrors ``metrics.jsonl`` (which stays the source of truth) and the run's figures; see
:mod:`flowkit.loggers` for the interface and how failures are contained. Metric names are
``KIND/KEY``: ``train/loss``, ``train/bpd``, ``eval/val_nll``, ``final/test_bpd``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowkit.extras import require
from flowkit.loggers import Logger, RunInfo, flatten_config, require_package, summary_numbers

#: The folder of a run's TensorBoard event files (``tensorboard --logdir runs`` shows every run).
TENSORBOARD_DIR = "tensorboard"
#: Summary keys that describe a run in words (tags of MLflow runs).
DESCRIPTIVE_KEYS = ("status", "transform", "prior", "objective", "data", "device", "flowkit_version")


def _tagged(metrics: Mapping[str, float], kind: str) -> dict[str, float]:
    return {f"{kind}/{key}": value for key, value in metrics.items()}


def _rgb(path: Path) -> Any:
    """A PNG as an ``(H, W, 3)`` uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoard(Logger):
    """Scalars of every metrics record and the run's figures, as TensorBoard event files.

    Written to ``RUN_DIR/tensorboard/`` by ``torch.utils.tensorboard``: scalars ``train/…``,
    ``eval/…`` and ``final/…`` at their steps, the sample figures under the tag ``samples`` (one
    per sample step, then the final one), the other final figures under their names
    (``traversals``, ``reconstructions``…) and the summary as text. View with ``tensorboard
    --logdir runs``. A resumed run drops the events after the step it resumes from, as
    ``metrics.jsonl`` does. Needs ``pip install 'torch-flowkit[tensorboard]'``.

    A record ``{"step": s, "kind": K, key: v}`` of ``metrics.jsonl`` → the scalar ``K/key = v`` at
    step ``s``; a figure ``RUN_DIR/…/NAME.png`` written at step ``s`` → the image ``TAG`` at ``s``.

    References:

    * Abadi et al. 2016, "TensorFlow: Large-Scale Machine Learning on Heterogeneous Distributed Systems",
      arXiv:1603.04467 (TensorBoard, §9.1).

    Arguments:

    None: ``tensorboard`` takes no parameters; the run folder comes from the trainer (:meth:`start`).

    Example::

        >>> import sys
        >>> from pathlib import Path
        >>> from unittest import mock
        >>> from flowkit.loggers import RunInfo
        >>> from flowkit.plugins.loggers import TensorBoard
        >>> stand_ins = {"tensorboard": mock.MagicMock(), "torch.utils.tensorboard": mock.MagicMock()}
        >>> with mock.patch.dict(sys.modules, stand_ins):  # the example runs without tensorboard
        ...     logger = TensorBoard()
        ...     logger.start(RunInfo(Path("runs", "moons"), "moons", {}, step=200))  # a resumed run
        >>> stand_ins["torch.utils.tensorboard"].SummaryWriter.call_args.kwargs["purge_step"]
        201
        >>> logger.log_metrics(300, {"loss": 1.25}, kind="train")
        >>> logger.writer.add_scalar.call_args
        call('train/loss', 1.25, 300)
    """

    def __init__(self) -> None:
        require("tensorboard", extra="tensorboard", feature="the tensorboard logger (train.loggers)")
        self.writer: Any = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(run.run_dir / TENSORBOARD_DIR),
            purge_step=run.step + 1 if run.resumed else None,
        )

    def log_metrics(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        for tag, value in _tagged(metrics, kind).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # on disk at once: a run that dies keeps what it logged

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.writer.add_image(tag, _rgb(path), step, dataformats="HWC")
        self.writer.flush()

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(dict(summary), indent=2, default=str)
        self.writer.add_text("summary", "    " + text.replace("\n", "\n    "), int(summary.get("steps", 0)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflow(Logger):
    """Metrics, config, figures and summary to an MLflow run (needs pip install mlflow).

    The tracking server and experiment are MLflow's own settings (``MLFLOW_TRACKING_URI``,
    default ``./mlruns``; ``MLFLOW_EXPERIMENT_NAME``). The run is named after the run folder; its
    parameters are the resolved config (dotted keys), its metrics ``train/…``, ``eval/…``,
    ``final/…``, its artifacts the figures; a resumed run continues the same MLflow run.

    A record ``{"step": s, "kind": K, key: v}`` of ``metrics.jsonl`` → the metric ``K/key = v`` at
    step ``s``; the summary's numbers → ``summary/KEY``, its words (``status``, ``transform``…) →
    tags; the run id is saved in checkpoints (:meth:`state_dict`) for resuming.

    References:

    * Zaharia et al. 2018, "Accelerating the Machine Learning Lifecycle with MLflow", IEEE Data Engineering
      Bulletin 41(4).

    Arguments:

    None: ``mlflow`` takes no parameters; the tracking server and experiment are MLflow's settings.

    Example::

        >>> import sys
        >>> from unittest import mock
        >>> from flowkit.plugins.loggers import MLflow
        >>> mlflow = mock.MagicMock()  # stands in for the mlflow package
        >>> with mock.patch.dict(sys.modules, {"mlflow": mlflow}):
        ...     logger = MLflow()
        >>> logger.log_metrics(100, {"loss": 1.25, "bpd": 3.5}, kind="train")
        >>> mlflow.log_metrics.call_args
        call({'train/loss': 1.25, 'train/bpd': 3.5}, step=100)
        >>> logger.run_id = "0a1b2c"  # what start() keeps
        >>> logger.state_dict()
        {'run_id': '0a1b2c'}
    """

    def __init__(self) -> None:
        self.mlflow = require_package("mlflow", feature="the mlflow logger", install="pip install mlflow")
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def start(self, run: RunInfo) -> None:
        self.run_dir = run.run_dir
        run_id = run.state.get("run_id")
        if run_id:
            active = self.mlflow.start_run(run_id=run_id)
        else:
            active = self.mlflow.start_run(run_name=run.name)
            params = {k: str(v)[:500] for k, v in flatten_config(run.config).items()}
            self.mlflow.log_params(params)
        self.run_id = active.info.run_id

    def log_metrics(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        self.mlflow.log_metrics(_tagged(metrics, kind), step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        folder = None
        if self.run_dir is not None and path.parent != self.run_dir:
            folder = path.parent.relative_to(self.run_dir).as_posix()
        self.mlflow.log_artifact(str(path), artifact_path=folder)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self.mlflow.set_tags({k: str(summary[k]) for k in DESCRIPTIVE_KEYS if k in summary})
        self.mlflow.log_metrics(
            {f"summary/{k}": v for k, v in summary_numbers(summary).items()},
            step=int(summary.get("steps", 0)),
        )

    def close(self) -> None:
        if self.run_id is not None:
            self.mlflow.end_run()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}


class WandB(Logger):
    """Metrics, config, figures and summary to a Weights & Biases run (needs pip install wandb).

    The project, entity and mode are W&B's own settings (``WANDB_PROJECT``, ``WANDB_ENTITY``,
    ``WANDB_MODE=offline``…); its files go to ``RUN_DIR/wandb/``. The run is named after the run
    folder, its config is the resolved config; a resumed run continues the same W&B run (records
    of steps W&B has already seen are dropped by W&B).

    A record ``{"step": s, "kind": K, key: v}`` of ``metrics.jsonl`` → ``run.log({"K/key": v},
    step=s)``; a figure → ``run.log({TAG: wandb.Image(path)}, step=s)``; the summary → the W&B
    run's summary; the run id is saved in checkpoints (:meth:`state_dict`) for resuming.

    References:

    * Biewald 2020, "Experiment Tracking with Weights and Biases", software available from wandb.com.

    Arguments:

    None: ``wandb`` takes no parameters; the project, entity and mode are W&B's settings.

    Example::

        >>> import sys
        >>> from unittest import mock
        >>> from flowkit.plugins.loggers import WandB
        >>> wandb = mock.MagicMock()  # stands in for the wandb package
        >>> wandb.init.return_value.id = "3xk9q2"
        >>> with mock.patch.dict(sys.modules, {"wandb": wandb}):
        ...     logger = WandB()
        >>> from pathlib import Path
        >>> from flowkit.loggers import RunInfo
        >>> logger.start(RunInfo(Path("runs", "moons"), "moons", {"data": "moons"}))
        >>> logger.log_metrics(100, {"val_nll": 1.25}, kind="eval")
        >>> logger.run.log.call_args
        call({'eval/val_nll': 1.25}, step=100)
        >>> logger.state_dict()  # a resumed run continues this W&B run
        {'id': '3xk9q2'}
    """

    def __init__(self) -> None:
        self.wandb = require_package("wandb", feature="the wandb logger", install="pip install wandb")
        self.run: Any = None
        self.run_id: str | None = None

    def start(self, run: RunInfo) -> None:
        run_id = run.state.get("id")
        self.run = self.wandb.init(
            name=run.name,
            config=dict(run.config),
            dir=str(run.run_dir),
            **({"id": run_id, "resume": "allow"} if run_id else {}),
        )
        self.run_id = str(self.run.id)

    def log_metrics(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        self.run.log(_tagged(metrics, kind), step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update(
            {**summary_numbers(summary), **{k: str(summary[k]) for k in DESCRIPTIVE_KEYS if k in summary}}
        )

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {"id": self.run_id} if self.run_id else {}
