"""Callbacks: everything the trainer does around a step.

:meth:`flowkit.trainer.Trainer.fit` is a loop of ``train_step()`` followed by every callback's
:meth:`Callback.after_step`. Logging, periodic evaluation, early stopping, sample figures,
checkpoints and the time budget are the built-in callbacks, in that order; a new concern (an
experiment-tracking sink, a custom stopping rule) is one more callback, given to
``flowkit.train(config, callbacks=[...])``, not a branch in ``fit`` (the trackers of
``train.loggers`` — TensorBoard, MLflow, W&B — are one such callback, :class:`flowkit.loggers.Tracking`)::

    class PrintLoss(flowkit.Callback):
        def on_metrics(self, trainer, record):
            if "loss" in record:
                print(record["step"], record["loss"])

Hooks (all optional):

* :meth:`~Callback.on_fit_start` — before the first step (also of a resumed run);
* :meth:`~Callback.after_step` — after every optimiser step, with a :class:`StepOutput` (your
  callbacks run after the built-in logging, evaluation, early stopping and sample figures, before
  the checkpoint and the time budget, so a checkpoint holds their state of its step); a
  callback ends training with :meth:`Trainer.stop(reason) <flowkit.trainer.Trainer.stop>` (the
  callbacks after it are skipped for that step);
* :meth:`~Callback.on_metrics` — every record written to ``metrics.jsonl`` (train logs,
  evaluations, the final evaluation), on the process that writes files;
* :meth:`~Callback.on_fit_end` — when the loop ends, before the final checkpoint and evaluation;
* :meth:`~Callback.on_summary` — with the run's summary before it is written (add keys to it).

A callback whose behaviour must survive a resume names a ``state_key`` and implements
``state_dict``/``load_state_dict``: its state is saved in every checkpoint under that key.
Under torchrun every process runs ``after_step`` (collectives inside it stay in step);
``on_metrics`` and ``on_summary`` run on rank 0 only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flowkit import distributed as dist
from flowkit.checkpoint import load_checkpoint
from flowkit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from flowkit.trainer import Trainer

__all__ = [
    "Callback",
    "Checkpointing",
    "EarlyStopping",
    "Evaluation",
    "MetricsLog",
    "SampleFigures",
    "StepOutput",
    "TimeBudget",
]


@dataclass
class StepOutput:
    """What one training step produced, handed to :meth:`Callback.after_step`.

    ``step`` counts completed steps (1 after the first); ``terms`` are the logged scalars of this
    process; ``examples`` the global batch size. Callbacks may add to ``metrics`` for the ones
    after them (the evaluation callback puts its metrics there for early stopping).
    """

    step: int
    terms: dict[str, float]
    lr: float
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Callback:
    """Base class of trainer callbacks: override the hooks you need (see the module docstring)."""

    #: Key of this callback's state in checkpoints (``None``: nothing to save).
    state_key: ClassVar[str | None] = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of this call of ``fit`` (``trainer.step`` > 0 when resumed)."""

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        """After every optimiser step; call ``trainer.stop(reason)`` to end training."""

    def on_metrics(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A record just written to ``metrics.jsonl`` (``kind``: absent, ``"eval"``, ``"final"``)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """The loop ended (steps done, or stopped); before the final checkpoint and evaluation."""

    def on_summary(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """The run's summary, before ``summary.json`` is written; add keys to it in place."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class MetricsLog(Callback):
    """Every ``train.log_every`` steps (and at the last one): the loss terms, averaged over the
    processes, the learning rate and the throughput, to ``metrics.jsonl`` and the progress bar."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._seen = 0
        self._since = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        import time

        self._seen, self._since = 0, time.perf_counter()

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        import time

        self._seen += out.examples
        if out.step % self.every and out.step != trainer.train_config.steps:
            return
        terms = dist.average_terms(out.terms)  # the global batch's loss under torchrun
        now = time.perf_counter()
        record = {
            "step": out.step,
            **terms,
            "lr": out.lr,
            "examples_per_s": self._seen / max(now - self._since, 1e-9),
        }
        trainer.log_metrics(record)
        self._seen, self._since = 0, now
        trainer.progress_bar.set_postfix(
            {k: f"{v:.3f}" for k, v in terms.items() if k in ("loss", "nll_per_dim", "bpd")} or None
        )


class Evaluation(Callback):
    """Every ``train.eval_every`` steps: the NLL of the validation split (else the test split).

    The last step is evaluated too when ``evaluate_last`` (early stopping: it may be the best);
    otherwise the final evaluation covers it.
    """

    def __init__(self, every: int, max_examples: int, evaluate_last: bool = False) -> None:
        self.every, self.max_examples, self.evaluate_last = every, max_examples, evaluate_last

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.step % self.every or (out.step >= trainer.train_config.steps and not self.evaluate_last):
            return
        out.metrics.update(dist.on_main(trainer.log_evaluation, self.max_examples))  # others wait
        trainer.model.train()


class EarlyStopping(Callback):
    """Stop when the validation NLL has not improved for ``patience`` evaluations in a row.

    Keeps the best model in ``checkpoints/best.pt``; at the end the best model replaces the
    current one (the final checkpoint's ``model`` holds it, its ``last`` the training state that
    resume continues), so the summary, ``flowkit eval`` and ``flowkit sample`` report it. Its state
    travels in checkpoints, so a resumed run stops where an uninterrupted one would.
    """

    state_key = "early_stopping"

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.best = math.inf
        self.best_step: int | None = None
        self.since_best = 0
        self.stopped_early = False

    @classmethod
    def check(cls, trainer: Trainer) -> None:
        """A :class:`ConfigError` when the run cannot stop early (no val split, no evaluation)."""
        tc = trainer.train_config
        if trainer.data.val is None:
            raise ConfigError(
                f"train.patience = {tc.patience} stops training on the validation NLL, but "
                f"dataset {trainer.data.name!r} has no validation split; use a dataset with one "
                f'(e.g. data = "table" with data.val_fraction > 0) or set train.patience = 0'
            )
        if not tc.eval_every:
            raise ConfigError(
                f"train.patience = {tc.patience} counts evaluations, but train.eval_every = 0 "
                f"turns them off; set train.eval_every (e.g. 100) or train.patience = 0"
            )

    @property
    def active(self) -> bool:
        return self.patience > 0

    @property
    def exhausted(self) -> bool:
        """Whether ``patience`` evaluations in a row brought no improvement."""
        return self.active and self.since_best >= self.patience

    def update(self, step: int, nll: float) -> bool:
        """Record the validation NLL of ``step``; whether it is a new best (NaN never is)."""
        if nll < self.best:
            self.best, self.best_step, self.since_best = float(nll), int(step), 0
            return True
        self.since_best += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.since_best = int(state["since_best"])

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        if self.exhausted:  # a resumed run that had stopped early
            self.stopped_early = True
            trainer.stop(
                f"this run stopped early (best val NLL at step {self.best_step}); "
                f"raise train.patience to train on"
            )

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        """Track the best validation NLL (``best.pt`` when it improves); stop when exhausted.

        Every process sees the same value (rank 0's evaluation), so all agree.
        """
        if "val_nll" not in out.metrics:
            return
        if self.update(trainer.step, out.metrics["val_nll"]):
            trainer.save_to(self.best_path(trainer))
        elif self.exhausted and trainer.step < trainer.train_config.steps:
            self.stopped_early = True
            trainer.stop(
                f"early stopping at step {trainer.step}: best val NLL {self.best:.4f} "
                f"at step {self.best_step} (no improvement in {self.patience} "
                f"evaluations)"
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        """Make the best model the final one (when it is not the current one)."""
        best = self._best_state(trainer)
        if best is None:
            return
        trainer.save(best)
        trainer.model.load_state_dict(best["model"])
        trainer.objective.load_state_dict(best["objective"])
        trainer.log(f"final model: the best one, from step {self.best_step} (val NLL {self.best:.4f})")

    def on_summary(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        best = self.best if math.isfinite(self.best) else None
        summary.update(best_step=self.best_step, best_val_nll=best, stopped_early=self.stopped_early)

    # -- the best model ------------------------------------------------------------------------
    @staticmethod
    def best_path(trainer: Trainer) -> Path:
        """The checkpoint of the best validation NLL (kept apart from the rotated step-*.pt)."""
        return trainer.run_dir / "checkpoints" / "best.pt"

    def _best_state(self, trainer: Trainer) -> dict[str, Any] | None:
        """The best model's state when it is not the current one."""
        if self.best_step is None or self.best_step == trainer.step:
            return None
        return dist.on_main(self._read_best, trainer)

    def _read_best(self, trainer: Trainer) -> dict[str, Any] | None:
        """Model and objective state of ``best.pt`` (rank 0), ``None`` when it cannot be used."""
        path = self.best_path(trainer)
        try:
            state = load_checkpoint(path, map_location="cpu")
        except CheckpointError as exc:
            trainer.log(f"warning: cannot restore the best model ({exc}); the final model is the last one")
            return None
        if int(state.get("step", -1)) != self.best_step:
            trainer.log(
                f"warning: {path} holds step {state.get('step')}, not the best step "
                f"{self.best_step}; the final model is the last one"
            )
            return None
        return {"model": state["model"], "objective": state["objective"]}


class SampleFigures(Callback):
    """Every ``train.sample_every`` steps (not the last: the final figures cover it): a sample
    grid (images), density plot (2-D data) or pairwise marginals (vectors of 3+ dimensions) in
    ``samples/step-XXXXXXXX.png``."""

    def __init__(self, every: int) -> None:
        self.every = every

    @staticmethod
    def path(trainer: Trainer, step: int) -> Path:
        """Where the sample figure of ``step`` goes (images and vector data only)."""
        return trainer.run_dir / "samples" / f"step-{step:08d}.png"

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.step % self.every or out.step >= trainer.train_config.steps:
            return
        dist.on_main(trainer.figure, self.path(trainer, out.step))
        trainer.model.train()


class Checkpointing(Callback):
    """Every ``train.checkpoint_every`` steps: an atomic checkpoint (only of a finite state)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.step % self.every == 0:
            trainer.save()


class TimeBudget(Callback):
    """Stop after ``train.max_minutes`` of training time; the run then finishes normally."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if dist.any_true(trainer.elapsed >= 60.0 * self.minutes):
            trainer.stop(f"time budget of {self.minutes} min reached at step {trainer.step}")
