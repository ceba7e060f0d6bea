"""One training engine for every transform, prior and objective.

:meth:`Trainer.fit` is a loop of :meth:`Trainer.train_step` followed by callbacks
(:mod:`flowkit.callbacks`). A step: a batch (addressed by step, so resumed runs see the same
data), uniform dequantization, the objective's auxiliary update (e.g. a critic), the objective's
loss, backward, gradient clipping, the optimiser and schedule, the prior's post-step hook. After
it, in order, the callbacks: JSONL metrics and the progress bar, periodic evaluation (the
validation split when the dataset has one), early stopping (``train.patience`` > 0: keeps the best
model in ``checkpoints/best.pt``, stops after that many evaluations without improvement and makes
the best model the final one), sample figures, the caller's own callbacks
(``train(config, callbacks=[...])``), the experiment-tracking loggers of ``train.loggers``
(:class:`flowkit.loggers.Tracking`), atomic checkpoints and the time budget. Around it: seeding,
device choice, resume, and a NaN/Inf guard that stops with a clear message and keeps the last good
checkpoint — a checkpoint is written only when every tensor of its state is finite and the model
gives a finite NLL, so the checkpoint the message names is one to resume from.

The trainer reads the resolved config through its typed sections (:class:`TrainConfig`,
:class:`EvalConfig`, :class:`DataConfig`) and writes it, with the values plugins chose at build
time (:func:`flowkit.builder.record_effective_values`), to the run folder's ``config.toml``.

Under torchrun (:mod:`flowkit.distributed`) every process trains on its slice of the same global
batch, gradients are averaged before clipping, and rank 0 alone writes files; each ``dist.`` call
below is a no-op under one process.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowkit import __version__, runlock
from flowkit import distributed as dist
from flowkit.atomic import (
    DiskFullError,
    atomic_write_text,
    disk_full_is_an_error,
    remove_stale_temporaries,
)
from flowkit.builder import build_model, build_objective, record_effective_values
from flowkit.callbacks import (
    Callback,
    Checkpointing,
    EarlyStopping,
    Evaluation,
    MetricsLog,
    SampleFigures,
    StepOutput,
    TimeBudget,
)
from flowkit.checkpoint import (
    check_fingerprint,
    drop_mismatched_optimizer_state,
    load_checkpoint,
    model_fingerprint,
    non_finite_tensors,
    save_checkpoint,
)
from flowkit.config import (
    TrainConfig,
    data_config,
    diff,
    dumps,
    eval_config,
    parse_objective,
    resolve,
    resume_conflict_message,
    resume_conflicts,
    train_config,
    with_recorded_values,
)
from flowkit.data.base import BatchStream, ClassBalancedStream, DataSplits
from flowkit.data.preprocess import dequantize
from flowkit.errors import CheckpointError, ConfigError, TrainingDiverged
from flowkit.figures import has_samples_figure, save_run_figures, save_samples_figure
from flowkit.loggers import Tracking
from flowkit.metrics import evaluate_nll, latent_scale_stats
from flowkit.metrics import likelihood as _likelihood
from flowkit.objective import Batch
from flowkit.optim import build_optimizer, load_state_or_restart
from flowkit.runs import (
    dataset_source,
    list_checkpoints,
    load_dataset,
    new_run_dir,
    read_run_config,
    require_run_dataset,
    select_device,
)

__all__ = ["Callback", "EarlyStopping", "StepOutput", "Trainer", "resume", "train"]

#: Training examples whose NLL must be finite before a checkpoint is written.
PROBE_EXAMPLES = 64
#: The run folder's record of config changes made on resume (one JSON object per line).
HISTORY_NAME = "config-history.jsonl"


class _Schedule:
    """Learning-rate multiplier of the step: linear warm-up, then constant or cosine decay to 0."""

    def __init__(self, kind: str, warmup: int, total: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


def _batch_stream(
    data: DataSplits, tc: TrainConfig, log: Callable[[str], None]
) -> BatchStream | ClassBalancedStream:
    if tc.sampler == "class-balanced":
        if data.train_labels is None or not data.num_classes:
            log(
                f"note: train.sampler = 'class-balanced' but '{data.name}' has no labels; "
                f"drawing batches at random"
            )
            return BatchStream(data.train, None, tc.batch_size, tc.seed)
        return ClassBalancedStream(data.train, data.train_labels, tc.batch_size, tc.seed, data.num_classes)
    return BatchStream(data.train, data.conditioning("train"), tc.batch_size, tc.seed)


def _shard(stream: BatchStream | ClassBalancedStream) -> torch.Tensor | None:
    """This process's positions in each global batch (``None``: one process trains on all of it)."""
    if dist.world_size() == 1:
        return None
    try:
        return stream.shard(dist.rank(), dist.world_size())
    except ConfigError as exc:  # the same on every process: rank 0 reports it
        raise dist.mark_every_rank(exc) from None


def _discard(message: str) -> None:
    """The log of processes other than rank 0: only rank 0 prints."""


class Trainer:
    """Trains the model a resolved config describes, in ``run_dir``.

    ``callbacks`` (:class:`flowkit.Callback`) run at every step after the built-in logging,
    evaluation, early stopping and sample figures, before the checkpoint and the time budget.
    """

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | Path,
        *,
        progress: bool = True,
        log: Callable[[str], None] = print,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        dist.init()  # joins torchrun's process group, if any (idempotent)
        self.run_dir = Path(run_dir)
        self.progress = progress and dist.is_main()
        self.log = log if dist.is_main() else _discard
        self.train_config = tc = train_config(config)
        self.eval_config = eval_config(config)
        self.device = select_device(tc.device)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        with dist.local_main_first():  # one process per node fills the dataset cache
            self.data = load_dataset(config)
        self.model = build_model(config, self.data.meta).to(self.device)
        #: the resolved config plus the values plugins chose at build time (config.toml)
        self.config = record_effective_values(config, self.model)
        if tc.invertible_backprop:
            from flowkit.execution.invertible_backprop import enable_invertible_backprop

            enable_invertible_backprop(self.model, log=self.log, chunks=tc.invertible_backprop_chunks)
        if tc.compile:  # TrainConfig refuses it together with invertible_backprop
            from flowkit.execution.compiled import enable_compile

            enable_compile(self.model, log=self.log, device=self.device)
        self.objective = build_objective(parse_objective(config["objective"])).to(self.device)
        self.objective.bind_data(self.data)
        self.objective.setup(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.params += [p for p in self.objective.joint_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, dataclasses.asdict(tc))
        self.schedule = _Schedule(tc.scheduler, tc.warmup_steps, tc.steps)
        self.stream = _batch_stream(self.data, tc, self.log)
        self.shard = _shard(self.stream)
        self.dequantize = data_config(config).dequantize and self.data.levels is not None
        self.eval_split = "val" if self.data.val is not None else "test"
        self.early_stopping: EarlyStopping | None = None
        if tc.patience > 0:
            EarlyStopping.check(self)
            self.early_stopping = EarlyStopping(tc.patience)
        self.callbacks: list[Callback] = self._with_builtin_callbacks(list(callbacks))
        self.stop_reason: str | None = None
        self.progress_bar: Any = None
        self.step = 0
        self.elapsed = 0.0
        #: the newest checkpoint known to be good: written by this trainer, or resumed from
        self.last_checkpoint: Path | None = None

    def _with_builtin_callbacks(self, user: list[Callback]) -> list[Callback]:
        """The callbacks of a step, in order: log, evaluate, early stopping, sample figure, the
        caller's own (so a checkpoint holds their state of its step), the tracking loggers
        (``train.loggers``), checkpoint, time budget."""
        tc, ec = self.train_config, self.eval_config
        out: list[Callback] = [MetricsLog(tc.log_every)]
        if tc.eval_every:
            out.append(
                Evaluation(tc.eval_every, ec.max_examples, evaluate_last=self.early_stopping is not None)
            )
        if self.early_stopping is not None:
            out.append(self.early_stopping)
        if tc.sample_every:
            out.append(SampleFigures(tc.sample_every))
        out.extend(user)
        if tc.loggers:  # built here, so a missing package stops the run before training
            out.append(Tracking(tc.loggers))
        if tc.checkpoint_every:
            out.append(Checkpointing(tc.checkpoint_every))
        if tc.max_minutes > 0:
            out.append(TimeBudget(tc.max_minutes))
        return out

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "rng": torch.get_rng_state(),
            "config": dumps(self.config),
            "meta": self.data.meta.to_dict(),
            "fingerprint": model_fingerprint(self.config, self.data.meta.to_dict()),
            "dataset": dataset_source(self.config["data"]["name"]),  # named when it is missing later
            "flowkit_version": __version__,
        }
        for callback in self.callbacks:
            if callback.state_key:
                state[callback.state_key] = callback.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if dist.world_size() > 1:  # every process's random stream, so resume is exact
            state["rank_rng"] = dist.gather_rng_states(self.device)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        where = state.get("path", "the newest checkpoint")
        check_fingerprint(state, self.config, where)
        # a final checkpoint that holds the best model keeps the last step's training state apart
        training = state.get("last", state)
        try:
            self.model.load_state_dict(training["model"])
            self.objective.load_state_dict(training["objective"])
            restored = load_state_or_restart(self.optimizer, training["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint does not fit the model its run's config.toml describes: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if not restored:
            self.log(
                "resume: the checkpoint's optimiser state groups its parameters differently "
                "(a checkpoint from an older flowkit, e.g. a MADE before its context weights "
                "were merged); the model resumes exactly, the optimiser's moments restart"
            )
        reset = drop_mismatched_optimizer_state(self.optimizer)
        if reset:
            self.log(
                f"resume: the optimiser state of {reset} parameter tensor(s) was saved at "
                f"another shape (a checkpoint from an older flowkit); their moments restart"
            )
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        for callback in self.callbacks:
            if callback.state_key and callback.state_key in state:
                callback.load_state_dict(state[callback.state_key])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        note = dist.restore_rng_states(state.get("rank_rng"), self.train_config.seed, self.step, self.device)
        if note:
            self.log(note)
        if "path" in state:
            self.last_checkpoint = Path(state["path"])

    def save(self, best: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint (rank 0); under torchrun every process must call it.

        A state with a NaN/inf tensor, or whose model gives a non-finite NLL on the first
        training examples, is not written: training stops (:class:`TrainingDiverged`) naming the
        last good checkpoint instead.

        ``best`` (model and objective state of the best validation step) makes it the final
        checkpoint of an early-stopping run: ``model`` then holds the best weights, which
        ``flowkit eval``/``sample`` load, and ``last`` the training state that resume continues.
        """
        self._resync()
        state = self.state()
        if best is not None:
            last = {k: state[k] for k in ("model", "objective", "optimizer")}
            state.update(
                model=best["model"],
                objective=best["objective"],
                last=last,
                best_step=self.early_stopping.best_step if self.early_stopping else None,
            )
        problem = dist.on_main(self._unhealthy, state, best is None)
        if problem is not None:
            raise self._diverged(*problem)
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}.pt"
        if dist.is_main():
            save_checkpoint(path, state)
            keep = max(1, self.train_config.keep_checkpoints)
            for old in list_checkpoints(self.run_dir)[:-keep]:
                old.unlink(missing_ok=True)
        self.last_checkpoint = path
        return path

    def save_to(self, path: Path) -> None:
        """Write the current state to ``path`` (rank 0; every process must call it)."""
        self._resync()
        state = self.state()
        if dist.is_main():
            save_checkpoint(path, state)

    def _unhealthy(self, state: dict[str, Any], probe: bool) -> tuple[str, str] | None:
        """``(what, detail)`` when ``state`` must not be a checkpoint, else ``None`` (rank 0)."""
        bad = [
            *non_finite_tensors(state["model"], "model."),
            *non_finite_tensors(state["objective"], "objective."),
            *non_finite_tensors(state["optimizer"].get("state", {}), "optimizer."),
        ]
        if bad:
            more = ", ..." if len(bad) > 3 else ""
            return "the parameters", f"{len(bad)} tensor(s): {', '.join(bad[:3])}{more}"
        if probe:
            n = min(PROBE_EXAMPLES, self.data.train.shape[0])
            nll = self._probe_nll(n) if n else 0.0
            if not math.isfinite(nll):
                return (f"the model's NLL on the first {n} training examples", f"train_nll={nll}")
        return None

    def _probe_nll(self, n: int) -> float:
        """NLL of the first ``n`` training examples, without touching any random stream."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            metrics = _likelihood.evaluate_nll(
                self.model,
                self.data,
                split="train",
                batch_size=n,
                max_examples=n,
                dequantize_data=self.dequantize,
                seed=self.train_config.seed,
            )
        return metrics["train_nll"]

    def _resync(self) -> None:
        """Check that the processes still hold the same parameters; then copy rank 0's to all."""
        drifted = dist.out_of_sync(model=self.model, objective=self.objective)
        if drifted:
            self.log(
                f"warning: {len(drifted)} parameter tensor(s) differ between processes "
                f"({', '.join(drifted[:3])}...): an objective that steps its own optimiser "
                f"must call flowkit.distributed.average_gradients(params) between backward() "
                f"and step(); rank 0's values are copied to every process"
            )
        dist.broadcast_modules(self.model, self.objective)

    # -- pieces of a step ---------------------------------------------------------------------
    def _batch(self, step: int) -> Batch:
        x, y = self.stream(step)
        if self.dequantize:
            gen = torch.Generator().manual_seed(self.train_config.seed * 7919 + step)
            x = dequantize(x, self.data.levels, gen)
        if self.shard is not None:  # this process's slice of the global batch and of its noise
            x, y = x[self.shard], (None if y is None else y[self.shard])
        return Batch(
            x.to(self.device, non_blocking=True), None if y is None else y.to(self.device, non_blocking=True)
        )

    def initialize(self) -> None:
        """Data-dependent initialisation from the untrained network (first batch of examples)."""
        n = min(self.train_config.init_examples, self.data.train.shape[0])
        x = self.data.train[:n]
        if self.dequantize:
            x = dequantize(x, self.data.levels, torch.Generator().manual_seed(0))
        cond = self.data.conditioning("train")
        y = cond[:n] if cond is not None else None
        self.model.initialize(x.to(self.device), None if y is None else y.to(self.device))

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` and hand it to the callbacks (rank 0)."""
        if not dist.is_main():
            return
        path = self.run_dir / "metrics.jsonl"
        with disk_full_is_an_error(path), open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        for callback in self.callbacks:
            callback.on_metrics(self, record)

    def evaluate(self, max_examples: int, split: str = "test") -> dict[str, float]:
        return evaluate_nll(
            self.model,
            self.data,
            split=split,
            batch_size=self.eval_config.batch_size,
            max_examples=max_examples,
            dequantize_data=self.dequantize,
            seed=self.train_config.seed,
        )

    def log_evaluation(self, max_examples: int) -> dict[str, float]:
        """Periodic evaluation, on the validation split when the dataset has one."""
        metrics = self.evaluate(max_examples, self.eval_split)
        self.log_metrics({"step": self.step, "kind": "eval", **metrics})
        return metrics

    def figure(self, path: Path) -> None:
        """The sample figure of the current model at ``path`` (images and vectors of 2+ dims)."""
        ec = self.eval_config
        if has_samples_figure(self.data):
            save_samples_figure(self.model, self.data, path, ec.n_samples, ec.temperature)

    def _final_figures(self) -> list[str]:
        ec = self.eval_config
        if not has_samples_figure(self.data):
            return []
        paths = save_run_figures(self.model, self.data, self.run_dir, ec.n_samples, ec.temperature)
        return [p.name for p in paths]

    def _diverged(self, what: str, detail: str) -> TrainingDiverged:
        if dist.world_size() > 1:
            what += f" (on at least one of the {dist.world_size()} processes)"
        lower = f"{self.train_config.lr / 10:g}"
        if self.last_checkpoint is not None:
            advice = (
                f"the last good checkpoint is kept: {self.last_checkpoint} (finite, with a "
                f"finite NLL). Resume from it with a lower learning rate: flowkit run "
                f"--resume {self.run_dir} --set train.lr={lower} (and e.g. --set "
                f"train.grad_clip=5.0 to clip gradients)"
            )
        else:
            advice = (
                f"no checkpoint had been written yet. Start again with a lower "
                f"learning rate (--set train.lr={lower}) or gradient clipping (--set "
                f"train.grad_clip=5.0)"
            )
        message = (
            f"training stopped at step {self.step}: {what} became NaN or infinite "
            f"({detail}); {advice}. A larger data.alpha (a new run) can also help."
        )
        if dist.is_main():
            atomic_write_text(
                self.run_dir / "summary.json",
                json.dumps({"status": "diverged", "step": self.step, "message": message}, indent=2),
            )
        return dist.mark_every_rank(TrainingDiverged(message))  # every process stops here

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> StepOutput:
        """One optimiser step at ``self.step`` (then ``self.step`` is one more)."""
        tc = self.train_config
        t0 = time.perf_counter()
        lr = tc.lr * self.schedule(self.step)  # a pure function of the step: exact on resume
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._batch(self.step)
        terms = dict(self.objective.auxiliary_update(self.model, batch, self.step))
        out = self.objective.loss(self.model, batch, self.step)
        terms.update(out.terms)
        if out.total is not None:
            if not dist.all_true(bool(torch.isfinite(out.total))):
                raise self._diverged("the loss", _format_terms(terms))
            self.optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            dist.average_gradients(self.params)  # the global batch's gradient, on every rank
            clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
            if not math.isfinite(grad_norm):
                raise self._diverged("the gradient", _format_terms({**terms, "grad_norm": grad_norm}))
            self.optimizer.step()
            self.model.prior.after_step()
            terms["grad_norm"] = grad_norm
        self.step += 1
        examples = batch.x.shape[0] * dist.world_size()
        self.elapsed += time.perf_counter() - t0
        return StepOutput(step=self.step, terms=terms, lr=lr, examples=examples)

    def stop(self, reason: str) -> None:
        """End training after this step (callbacks call it); ``reason`` is logged."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.log(reason)

    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps`` (or a callback stops); returns (and writes) the summary."""
        tc = self.train_config
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.toml", dumps(self.config))
        if self.step == 0:
            self.initialize()
            dist.seed_rank_stream(tc.seed)  # ranks > 0: their own prior samples and noise
        dist.broadcast_modules(self.model, self.objective)  # every process starts from rank 0's
        self.model.train()
        self.progress_bar = tqdm(
            total=tc.steps,
            initial=self.step,
            disable=not self.progress,
            desc=f"{self.config['transform']['name']} on {self.data.name}",
            dynamic_ncols=True,
        )
        self.stop_reason = None
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.step < tc.steps and self.stop_reason is None:
            out = self.train_step()
            self.progress_bar.update(1)
            for callback in self.callbacks:
                callback.after_step(self, out)
                if self.stop_reason is not None:
                    break
        self.progress_bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Callbacks' end of training, final checkpoint, full evaluation, figures and
        ``summary.json`` (on rank 0).

        With early stopping the best model replaces the current one first (and is what the final
        checkpoint's ``model`` holds), so the summary, ``flowkit eval`` and ``flowkit sample``
        report it.
        """
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if dist.on_main(self._needs_final_checkpoint):
            self.save()
        return dist.on_main(self._summarize)

    def _needs_final_checkpoint(self) -> bool:
        ckpts = list_checkpoints(self.run_dir)
        return not ckpts or not ckpts[-1].name.endswith(f"{self.step:08d}.pt")

    def _summarize(self) -> dict[str, Any]:
        ec, tc = self.eval_config, self.train_config
        metrics = self.evaluate(ec.final_max_examples)
        self.model.eval()
        metrics.update(self.objective.evaluate(self.model, self.data, ec.final_max_examples))
        self.log_metrics({"step": self.step, "kind": "final", **metrics})
        figures = self._final_figures()
        figures += [p.name for p in self.objective.figures(self.model, self.data, self.run_dir)]
        summary = {
            "status": "completed",
            "steps": self.step,
            **metrics,
            "transform": self.config["transform"]["name"],
            "prior": self.config["prior"]["name"],
            "objective": self.config["objective"]["name"],
            "data": self.data.name,
            "exact_density": self.model.exact_density,
            **latent_scale_stats(self.model),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "train_time_s": round(self.elapsed, 2),
            "train_examples_per_s": round(self.step * tc.batch_size / max(self.elapsed, 1e-9), 1),
            "device": str(self.device),
            **({"processes": dist.world_size()} if dist.world_size() > 1 else {}),
            "figures": figures,
            "flowkit_version": __version__,
        }
        for callback in self.callbacks:
            callback.on_summary(self, summary)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _format_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) or "no terms logged"


def train(
    config: dict[str, Any],
    run_dir: str | Path | None = None,
    *,
    out_dir: str | Path = "runs",
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Iterable[Callback] = (),
) -> dict[str, Any]:
    """Train a resolved config in a new run folder; returns the summary (``summary.json``).

    ``callbacks`` (:class:`flowkit.Callback`) run at every step, before the checkpoint (see
    :class:`Trainer`). Under torchrun every process calls it with the same config
    (:mod:`flowkit.distributed`).
    """
    dist.init()
    run_dir = dist.on_main(_prepare_run_dir, config, run_dir, out_dir)  # rank 0 names the folder
    trainer = None
    try:
        dist.on_main(_clean_run_dir, run_dir, log)
        trainer = Trainer(config, run_dir, progress=progress, log=log, callbacks=callbacks)
        summary = _fit(trainer)
    finally:
        runlock.release(run_dir)
    summary["run_dir"] = str(trainer.run_dir)
    return summary


def _fit(trainer: Trainer) -> dict[str, Any]:
    """``trainer.fit()``, with a full disk reported in one line that says how to go on."""
    try:
        return trainer.fit()
    except DiskFullError as exc:
        if trainer.last_checkpoint is not None:
            then = (
                f"the last complete checkpoint is {trainer.last_checkpoint}; free space and "
                f"run `flowkit run --resume {trainer.run_dir}`"
            )
        else:
            then = "no checkpoint was written yet; free space and start the run again"
        raise DiskFullError(f"no space left on device while writing {exc.path}; {then}", exc.path) from None


def _clean_run_dir(run_dir: Path, log: Callable[[str], None]) -> None:
    """Remove the temporary files of writes that a crash interrupted (rank 0, under the lock)."""
    removed = remove_stale_temporaries(run_dir)
    if removed:
        log(
            f"removed {len(removed)} temporary file(s) left by an interrupted write: "
            f"{', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''}"
        )


def _prepare_run_dir(config: dict[str, Any], run_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Choose (or check) the run folder and lock it for this run (rank 0)."""
    if run_dir is None:
        path = new_run_dir(out_dir, config)
        runlock.acquire(path)
        return path
    runlock.acquire(run_dir)  # before looking inside: another writer may be starting
    if Path(run_dir).exists() and list_checkpoints(run_dir):
        runlock.release(run_dir)
        raise ConfigError(
            f"{str(run_dir)!r} already holds a run; resume it with `flowkit run --resume "
            f"{run_dir}` or choose another folder"
        )
    return Path(run_dir)


def _require_checkpoint(run_dir: Path) -> None:
    if not list_checkpoints(run_dir):
        raise CheckpointError(f"{str(run_dir)!r} has no checkpoint to resume from")


def _newest_state(run_dir: Path, map_location: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The newest readable checkpoint of ``run_dir`` whose state is finite (others are left in
    place: a checkpoint written by an older flowkit after a divergence may hold NaN)."""
    errors = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            log(f"warning: skipping unreadable checkpoint {path.name}")
            continue
        bad = list(non_finite_tensors(state.get("last", state).get("model", {})))
        if bad:
            errors.append(f"{path.name} holds NaN/inf parameters ({bad[0]}, ...)")
            log(f"warning: skipping checkpoint {path.name}: it holds NaN/inf parameters")
            continue
        state["path"] = str(path)
        return state
    raise CheckpointError("no readable checkpoint to resume from: " + " | ".join(errors))


def _truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the ``metrics.jsonl`` records a resume from ``step`` writes again: those of later
    steps, the final evaluation and a line torn by a crash. Returns how many were dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = int(record["step"]) <= step and record.get("kind") != "final"
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def _record_history(run_dir: Path, saved: dict[str, Any], config: dict[str, Any], step: int) -> None:
    """Append the keys a resume changed to ``config-history.jsonl`` (rank 0)."""
    changed = diff(saved, config)
    if not changed:
        return

    def lookup(cfg: dict[str, Any], dotted: str) -> Any:
        node: Any = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    record = {
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "event": "resume",
        "step": step,
        "changes": {k: {"from": lookup(saved, k), "to": lookup(config, k)} for k in changed},
    }
    path = run_dir / HISTORY_NAME
    with disk_full_is_an_error(path), open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def _check_steps(trainer: Trainer, run_dir: Path) -> None:
    """A resume that asks for fewer steps than the run has done is an error; as many, a note."""
    steps, done = trainer.train_config.steps, trainer.step
    if steps < done:
        raise ConfigError(
            f"--resume {run_dir}: the run has already trained {done} steps, more than "
            f"train.steps = {steps}; a run cannot be shortened. To train longer set "
            f"train.steps above {done} (--set train.steps={2 * done}); to use it as it is, "
            f"`flowkit eval {run_dir}` or `flowkit sample {run_dir}`."
        )
    stopped = trainer.early_stopping is not None and trainer.early_stopping.exhausted
    if steps == done and not stopped:
        trainer.log(
            f"the run has already trained all {done} steps (train.steps = {steps}); "
            f"nothing to train, the final evaluation is repeated. Set train.steps "
            f"above {done} to train longer."
        )


def resume(
    run_dir: str | Path,
    requested: dict[str, Any] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Iterable[Callback] = (),
) -> dict[str, Any]:
    """Continue a run from its newest good checkpoint.

    ``requested`` (a resolved config) may change only :data:`flowkit.config.RESUMABLE_KEYS`:
    ``train.steps`` to train longer, the schedule (``train.lr`` — e.g. lower after a
    divergence —, ``scheduler``, ``warmup_steps``, ``grad_clip``), logging and evaluation
    settings; any other difference is an error. Changes are appended to the run's
    ``config-history.jsonl``; records of ``metrics.jsonl`` beyond the checkpoint's step (and the
    old final evaluation) are dropped, since the resumed run writes them again.
    """
    run_dir = Path(run_dir)
    dist.init()
    require_run_dataset(run_dir)  # a dataset missing here: say which, and how to provide it
    saved = resolve(dist.on_main(read_run_config, run_dir))  # rank 0 reads; all get it
    config = saved
    if requested is not None:
        conflicts = resume_conflicts(saved, requested)
        if conflicts:
            raise ConfigError(resume_conflict_message(run_dir, saved, requested, conflicts))
        config = with_recorded_values(saved, requested)
    dist.on_main(_require_checkpoint, run_dir)  # fail before building the model
    dist.on_main(runlock.acquire, run_dir)  # a run still training in it keeps it
    try:
        dist.on_main(_clean_run_dir, run_dir, log)
        trainer = Trainer(config, run_dir, progress=progress, log=log, callbacks=callbacks)
        # under torchrun rank 0 reads the checkpoint on the CPU and sends it to every process
        where = trainer.device if dist.world_size() == 1 else "cpu"
        state = dist.on_main(_newest_state, run_dir, where, trainer.log)
        trainer.load_state(state)
        _check_steps(trainer, run_dir)
        dist.on_main(_truncate_metrics, run_dir, trainer.step)
        dist.on_main(_record_history, run_dir, saved, config, trainer.step)
        trainer.log(f"resuming {run_dir} from step {trainer.step}")
        summary = _fit(trainer)
    finally:
        runlock.release(run_dir)
    summary["run_dir"] = str(run_dir)
    return summary
