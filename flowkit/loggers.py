"""Experiment-tracking sinks: a run's metrics and figures mirrored to TensorBoard, MLflow, W&B or yours.

``metrics.jsonl`` in the run folder stays the source of truth; a *logger* is an optional copy of
it in a tracking tool, chosen by name in the config::

    [train]
    loggers = ["tensorboard"]      # or --set 'train.loggers=["tensorboard", "wandb"]'

Loggers are plugins of the kind ``logger`` (entry-point group ``flowkit.loggers``; ``flowkit list
loggers``). flowkit ships ``tensorboard`` (needs ``pip install 'torch-flowkit[tensorboard]'``),
``mlflow`` and ``wandb`` (need ``pip install mlflow`` / ``pip install wandb``). A third-party
package adds one by subclassing :class:`Logger` and declaring::

    [project.entry-points."flowkit.loggers"]
    my-tracker = "my_package.tracking:MyTracker"

or, in a notebook or a test, with ``flowkit.registry.loggers.register("my-tracker", MyTracker)``.

The trainer drives the loggers through one callback, :class:`Tracking` (see
:mod:`flowkit.callbacks`): every record written to ``metrics.jsonl`` (train logs, evaluations,
the final evaluation), every sample figure written during training, the run's final figures and
its summary. A logger that raises is not allowed to end the run: the trainer logs one warning
naming it, and that logger is disabled for the rest of the run. A logger whose package is missing
is an error before training starts (and at ``flowkit run --dry-run``).
"""

from __future__ import annotations

import atexit
import importlib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowkit import distributed as dist
from flowkit.callbacks import Callback, SampleFigures
from flowkit.config import flatten
from flowkit.errors import ConfigError, FlowkitError
from flowkit.extras import MissingExtraError

if TYPE_CHECKING:
    from flowkit.trainer import Trainer

__all__ = ["Logger", "RunInfo", "Tracking", "build_loggers", "check_logger_names", "require_package"]


@dataclass(frozen=True)
class RunInfo:
    """What a logger learns about the run when it starts (:meth:`Logger.start`).

    ``step`` is the step training starts from (``> 0`` when a run is resumed); ``state`` is what
    this logger's :meth:`Logger.state_dict` returned at the checkpoint the run resumes from
    (``{}`` for a new run), e.g. the tracking tool's run id, so a resumed run logs into the same
    tracked run.
    """

    run_dir: Path
    name: str
    config: Mapping[str, Any]
    step: int = 0
    state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resumed(self) -> bool:
        return self.step > 0


class Logger:
    """Base class of experiment-tracking sinks (plugin kind ``logger``, group ``flowkit.loggers``).

    A logger is built with no arguments when the trainer is built (and by ``flowkit run
    --dry-run``): ``__init__`` only checks that its package imports (:func:`require_package`),
    opening nothing. The trainer then calls, on the process that writes files:

    * :meth:`start` once, before the first step;
    * :meth:`log_metrics` for every record of ``metrics.jsonl`` (the one method to implement);
    * :meth:`log_image` for every figure the run writes (sample grids during training, the final
      figures);
    * :meth:`log_summary` with the run's summary, then :meth:`close`.

    Any exception a logger raises is caught: the trainer warns once, naming the logger, and stops
    calling it for the rest of the run.
    """

    def start(self, run: RunInfo) -> None:
        """Open the sink (a writer, a tracked run) for ``run``."""

    def log_metrics(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        """The numbers of one ``metrics.jsonl`` record at ``step``.

        ``kind`` is ``"train"`` (loss terms, learning rate, throughput), ``"eval"`` (periodic
        evaluation) or ``"final"`` (the final test evaluation); ``metrics`` holds every numeric
        value of the record but ``step`` (NaN and infinity included).
        """
        raise NotImplementedError

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """A PNG figure the run wrote at ``step`` (``tag``: ``samples``, ``traversals``, ...)."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """The run's summary (what ``summary.json`` holds), once, at the end."""

    def close(self) -> None:
        """Flush and close the sink; nothing is logged after it."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run hands back in :attr:`RunInfo.state` (saved in every checkpoint)."""
        return {}


def require_package(module: str, *, feature: str, install: str) -> Any:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming ``install``.

    For optional packages that no flowkit extra installs (``mlflow``, ``wandb``); for those of an
    extra use :func:`flowkit.extras.require`, whose message names the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the package {module!r}, which flowkit does not install. Install it "
            f"with: {install} (or remove it from train.loggers). [{type(exc).__name__}: {exc}]"
        ) from exc


# -- building loggers from their names ---------------------------------------------------------
def check_logger_names(names: Sequence[str]) -> None:
    """A :class:`ConfigError` for an unknown (with a "did you mean"), blocked or repeated name."""
    from flowkit import registry

    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"[train] loggers names {name!r} twice; list each logger once")
        seen.add(name)
        try:
            registry.loggers.entry(name)
        except FlowkitError as exc:
            raise ConfigError(
                f"[train] loggers: {exc} (to train without it, leave it out of train.loggers, "
                f"e.g. --set 'train.loggers=[]')"
            ) from None


def build_loggers(names: Iterable[str]) -> list[tuple[str, Any]]:
    """``(name, logger)`` for each name of ``train.loggers``, built with no arguments.

    Raises when a name is unknown, a plugin fails to load or its package is missing
    (:class:`MissingExtraError`), or it builds something without a ``log_metrics`` method.
    """
    from flowkit import registry

    names = list(names)
    check_logger_names(names)
    built = []
    for name in names:
        logger = registry.loggers.get(name)()
        if not callable(getattr(logger, "log_metrics", None)):
            raise ConfigError(
                f"logger plugin '{name}' built a {type(logger).__name__}, which has no log_metrics "
                f"method; a logger subclasses flowkit.loggers.Logger"
            )
        built.append((name, logger))
    return built


def split_record(record: Mapping[str, Any]) -> tuple[int, str, dict[str, float]]:
    """``(step, kind, numbers)`` of a ``metrics.jsonl`` record (kind ``"train"`` when absent)."""
    numbers_ = {
        key: float(value)
        for key, value in record.items()
        if key not in ("step", "kind") and isinstance(value, numbers.Real) and not isinstance(value, bool)
    }
    return int(record.get("step", 0)), str(record.get("kind") or "train"), numbers_


# -- the callback ------------------------------------------------------------------------------
class Tracking(Callback):
    """Hands every metrics record, figure and the summary to the loggers of ``train.loggers``.

    The trainer adds it when ``train.loggers`` names any. Only the process that writes files (rank
    0 under torchrun) starts and feeds the loggers. Each call into a logger is guarded: a logger
    that raises is reported once (``warning: logger 'NAME' failed ...``) and disabled; the run and
    ``metrics.jsonl`` go on. The loggers' states (e.g. a tracked run's id) are saved in checkpoints
    under ``loggers``, so a resumed run logs into the same tracked run.
    """

    state_key = "loggers"

    def __init__(self, loggers: Iterable[str | tuple[str, Any]]) -> None:
        """``loggers``: names of registered loggers (built here) or ``(name, logger)`` pairs."""
        items = list(loggers)
        built = iter(build_loggers([item for item in items if isinstance(item, str)]))
        self.loggers: list[tuple[str, Any]] = [
            next(built) if isinstance(item, str) else (str(item[0]), item[1]) for item in items
        ]
        self.active: dict[str, Any] = {}
        self.saved: dict[str, Any] = {}
        self._log: Any = print
        self._closed = True

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.loggers]

    # -- guarded calls -------------------------------------------------------------------------
    def _call(self, name: str, what: str, method: str, *args: Any) -> Any:
        logger = self.active.get(name)
        if logger is None:
            return None
        fn = getattr(logger, method, None)
        if fn is None:  # an optional method a duck-typed logger leaves out
            return None
        try:
            return fn(*args)
        except Exception as exc:
            self.active.pop(name, None)
            self._log(
                f"warning: logger '{name}' failed while {what} ({type(exc).__name__}: {exc}); it is "
                f"disabled for the rest of this run (metrics.jsonl is complete)"
            )
            if method != "close":
                try:
                    close = getattr(logger, "close", None)
                    if close is not None:
                        close()
                except Exception:
                    pass
            return None

    def _each(self, what: str, method: str, *args: Any) -> None:
        for name in list(self.active):
            self._call(name, what, method, *args)

    def close(self) -> None:
        """Close every logger still open (also at interpreter exit, after a run that raised)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._each("closing", "close")
        self.active.clear()

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        if not dist.is_main():
            return
        self._log = trainer.log
        self.active = dict(self.loggers)
        self._closed = False
        atexit.register(self.close)
        for name in list(self.active):
            info = RunInfo(
                run_dir=trainer.run_dir,
                name=trainer.run_dir.name,
                config=trainer.config,
                step=trainer.step,
                state=dict(self.saved.get(name) or {}),
            )
            self._call(name, "starting", "start", info)

    def on_metrics(self, trainer: Trainer, record: dict[str, Any]) -> None:
        step, kind, values = split_record(record)
        if values:
            self._each(f"logging the metrics of step {step}", "log_metrics", step, values, kind)

    def after_step(self, trainer: Trainer, out: Any) -> None:
        every = trainer.train_config.sample_every
        if not self.active or not every or out.step % every or out.step >= trainer.train_config.steps:
            return
        path = SampleFigures.path(trainer, out.step)
        if path.is_file():
            self._each(f"logging the figure {path.name}", "log_image", "samples", path, out.step)

    def on_summary(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        for figure in summary.get("figures") or []:
            path = trainer.run_dir / figure
            if path.is_file():
                tag = Path(figure).stem
                self._each(f"logging the figure {figure}", "log_image", tag, path, trainer.step)
        self._each("logging the summary", "log_summary", summary)
        self.close()

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.saved)
        for name in list(self.active):
            value = self._call(name, "saving its state", "state_dict")
            if isinstance(value, Mapping):
                state[name] = dict(value)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state or {})


# -- helpers for adapters ----------------------------------------------------------------------
def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}``: a nested config as dotted keys (lists as their text)."""
    return {
        key: str(list(value)) if isinstance(value, (list, tuple)) else value
        for key, value in flatten(config, prefix).items()
    }


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a run's summary (booleans left out)."""
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    }
