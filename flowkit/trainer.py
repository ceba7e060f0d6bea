"""One training engine for every transform, prior and objective.

Per step: a batch (addressed by step, so resumed runs see the same data), uniform
dequantization, the objective's auxiliary update (e.g. a critic), the objective's loss,
backward, gradient clipping, the optimiser and schedule, the prior's post-step hook. Around it:
seeding, device choice, a tqdm progress bar, JSONL metrics, periodic evaluation and samples,
atomic checkpoints, resume, and a NaN/Inf guard that stops with a clear message and keeps the last
good checkpoint. With a validation split, periodic evaluation reads it; ``train.patience`` > 0
then keeps the best model (``checkpoints/best.pt``), stops after that many evaluations without
improvement, and evaluates the best model at the end.

Under torchrun (:mod:`flowkit.distributed`) every process trains on its slice of the same global
batch, gradients are averaged before clipping, and rank 0 alone writes files; each ``dist.`` call
below is a no-op under one process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowkit import __version__, runlock
from flowkit import distributed as dist
from flowkit.checkpoint import (
    check_fingerprint,
    drop_mismatched_optimizer_state,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from flowkit.config import RESUMABLE_KEYS, diff, dumps, resolve
from flowkit.data.base import BatchStream, ClassBalancedStream, DataSplits
from flowkit.data.preprocess import dequantize
from flowkit.errors import CheckpointError, ConfigError, TrainingDiverged
from flowkit.figures import save_run_figures, save_samples_figure
from flowkit.metrics import evaluate_nll, latent_scale_stats
from flowkit.model import build_model
from flowkit.objective import Batch, build_objective
from flowkit.optim import build_optimizer
from flowkit.runs import list_checkpoints, load_dataset, new_run_dir, read_run_config, select_device


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


def _batch_stream(data: DataSplits, tc: dict[str, Any],
                  log: Callable[[str], None]) -> BatchStream | ClassBalancedStream:
    if tc["sampler"] == "class-balanced":
        if data.train_labels is None or not data.num_classes:
            log(f"note: train.sampler = 'class-balanced' but '{data.name}' has no labels; "
                f"drawing batches at random")
            return BatchStream(data.train, None, tc["batch_size"], tc["seed"])
        return ClassBalancedStream(data.train, data.train_labels, tc["batch_size"], tc["seed"],
                                   data.num_classes)
    return BatchStream(data.train, data.conditioning("train"), tc["batch_size"], tc["seed"])


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


class EarlyStopping:
    """The best validation NLL so far and how many evaluations have passed without beating it.

    ``patience`` > 0 turns it on: training stops once ``patience`` evaluations in a row did not
    improve on the best. Its state travels in checkpoints, so a resumed run stops where an
    uninterrupted one would.
    """

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.best = math.inf
        self.best_step: int | None = None
        self.since_best = 0

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

    def summary(self, stopped_early: bool) -> dict[str, Any]:
        best = self.best if math.isfinite(self.best) else None
        return {"best_step": self.best_step, "best_val_nll": best, "stopped_early": stopped_early}


class Trainer:
    """Trains the model a resolved config describes, in ``run_dir``."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        dist.init()  # joins torchrun's process group, if any (idempotent)
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress and dist.is_main()
        self.log = log if dist.is_main() else _discard
        tc = config["train"]
        self.device = select_device(tc["device"])
        if tc["threads"] > 0:
            torch.set_num_threads(tc["threads"])
        torch.manual_seed(tc["seed"])
        with dist.local_main_first():  # one process per node fills the dataset cache
            self.data = load_dataset(config)
        self.model = build_model(config, self.data.meta).to(self.device)
        if tc["invertible_backprop"]:
            from flowkit.invertible_backprop import enable_invertible_backprop

            enable_invertible_backprop(self.model, log=self.log,
                                       chunks=tc["invertible_backprop_chunks"])
        if tc["compile"]:  # TrainConfig refuses it together with invertible_backprop
            from flowkit.compiled import enable_compile

            enable_compile(self.model, log=self.log, device=self.device)
        self.objective = build_objective(config["objective"]).to(self.device)
        self.objective.bind_data(self.data)
        self.objective.setup(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.params += [p for p in self.objective.joint_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, tc)
        self.schedule = _Schedule(tc["scheduler"], tc["warmup_steps"], tc["steps"])
        self.stream = _batch_stream(self.data, tc, self.log)
        self.shard = _shard(self.stream)
        self.dequantize = bool(config["data"]["dequantize"]) and self.data.levels is not None
        self.eval_split = "val" if self.data.val is not None else "test"
        self.early_stopping = EarlyStopping(tc["patience"])
        if self.early_stopping.active:
            self._check_early_stopping(tc)
        self.stopped_early = False
        self.step = 0
        self.elapsed = 0.0

    def _check_early_stopping(self, tc: dict[str, Any]) -> None:
        if self.data.val is None:
            raise ConfigError(
                f"train.patience = {tc['patience']} stops training on the validation NLL, but "
                f"dataset {self.data.name!r} has no validation split; use a dataset with one "
                f"(e.g. data = \"table\" with data.val_fraction > 0) or set train.patience = 0"
            )
        if not tc["eval_every"]:
            raise ConfigError(
                f"train.patience = {tc['patience']} counts evaluations, but train.eval_every = 0 "
                f"turns them off; set train.eval_every (e.g. 100) or train.patience = 0"
            )

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
            "early_stopping": self.early_stopping.state_dict(),
            "flowkit_version": __version__,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if dist.world_size() > 1:  # every process's random stream, so resume is exact
            state["rank_rng"] = dist.gather_rng_states(self.device)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        check_fingerprint(state, self.config, state.get("path", "the newest checkpoint"))
        # a final checkpoint that holds the best model keeps the last step's training state apart
        training = state.get("last", state)
        try:
            self.model.load_state_dict(training["model"])
            self.objective.load_state_dict(training["objective"])
            self.optimizer.load_state_dict(training["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint does not fit the model its run's config.toml describes: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        reset = drop_mismatched_optimizer_state(self.optimizer)
        if reset:
            self.log(f"resume: the optimiser state of {reset} parameter tensor(s) was saved at "
                     f"another shape (a checkpoint from an older flowkit); their moments restart")
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        if "early_stopping" in state:
            self.early_stopping.load_state_dict(state["early_stopping"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        note = dist.restore_rng_states(state.get("rank_rng"), self.config["train"]["seed"],
                                       self.step, self.device)
        if note:
            self.log(note)

    def save(self, best: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint (rank 0); under torchrun every process must call it.

        ``best`` (model and objective state of the best validation step) makes it the final
        checkpoint of an early-stopping run: ``model`` then holds the best weights, which
        ``flowkit eval``/``sample`` load, and ``last`` the training state that resume continues.
        """
        self._resync()
        state = self.state()
        if best is not None:
            last = {k: state[k] for k in ("model", "objective", "optimizer")}
            state.update(model=best["model"], objective=best["objective"], last=last,
                         best_step=self.early_stopping.best_step)
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}.pt"
        if dist.is_main():
            save_checkpoint(path, state)
            for old in list_checkpoints(self.run_dir)[:-max(1, self.config["train"]["keep_checkpoints"])]:
                old.unlink(missing_ok=True)
        return path

    def _resync(self) -> None:
        """Check that the processes still hold the same parameters; then copy rank 0's to all."""
        drifted = dist.out_of_sync(model=self.model, objective=self.objective)
        if drifted:
            self.log(f"warning: {len(drifted)} parameter tensor(s) differ between processes "
                     f"({', '.join(drifted[:3])}...): an objective that steps its own optimiser "
                     f"must call flowkit.distributed.average_gradients(params) between backward() "
                     f"and step(); rank 0's values are copied to every process")
        dist.broadcast_modules(self.model, self.objective)

    # -- pieces of a step ---------------------------------------------------------------------
    def _batch(self, step: int) -> Batch:
        x, y = self.stream(step)
        if self.dequantize:
            gen = torch.Generator().manual_seed(self.config["train"]["seed"] * 7919 + step)
            x = dequantize(x, self.data.levels, gen)
        if self.shard is not None:  # this process's slice of the global batch and of its noise
            x, y = x[self.shard], (None if y is None else y[self.shard])
        return Batch(x.to(self.device, non_blocking=True),
                     None if y is None else y.to(self.device, non_blocking=True))

    def initialize(self) -> None:
        """Data-dependent initialisation from the untrained network (first batch of examples)."""
        n = min(self.config["train"]["init_examples"], self.data.train.shape[0])
        x = self.data.train[:n]
        if self.dequantize:
            x = dequantize(x, self.data.levels, torch.Generator().manual_seed(0))
        cond = self.data.conditioning("train")
        y = cond[:n] if cond is not None else None
        self.model.initialize(x.to(self.device), None if y is None else y.to(self.device))

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not dist.is_main():
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def evaluate(self, max_examples: int, split: str = "test") -> dict[str, float]:
        ec = self.config["eval"]
        return evaluate_nll(self.model, self.data, split=split, batch_size=ec["batch_size"],
                            max_examples=max_examples, dequantize_data=self.dequantize,
                            seed=self.config["train"]["seed"])

    def _log_evaluation(self, max_examples: int) -> dict[str, float]:
        """Periodic evaluation, on the validation split when the dataset has one."""
        metrics = self.evaluate(max_examples, self.eval_split)
        self._write_metrics({"step": self.step, "kind": "eval", **metrics})
        return metrics

    # -- early stopping ------------------------------------------------------------------------
    @property
    def best_path(self) -> Path:
        """The checkpoint of the best validation NLL (kept apart from the rotated step-*.pt)."""
        return self.run_dir / "checkpoints" / "best.pt"

    def _stop_early(self, val_nll: float) -> bool:
        """Track the best validation NLL (``best.pt`` when it improves); whether to stop now.

        Every process calls it with the same value (rank 0's evaluation), so all agree.
        """
        stopper = self.early_stopping
        if stopper.update(self.step, val_nll):
            self._resync()
            state = self.state()
            if dist.is_main():
                save_checkpoint(self.best_path, state)
        elif stopper.exhausted and self.step < self.config["train"]["steps"]:
            self.log(f"early stopping at step {self.step}: best val NLL {stopper.best:.4f} at "
                     f"step {stopper.best_step} (no improvement in {stopper.patience} "
                     f"evaluations)")
            self.stopped_early = True
        return self.stopped_early

    def _read_best(self) -> dict[str, Any] | None:
        """Model and objective state of ``best.pt`` (rank 0), ``None`` when it cannot be used."""
        try:
            state = load_checkpoint(self.best_path, map_location="cpu")
        except CheckpointError as exc:
            self.log(f"warning: cannot restore the best model ({exc}); the final model is the "
                     f"last one")
            return None
        if int(state.get("step", -1)) != self.early_stopping.best_step:
            self.log(f"warning: {self.best_path} holds step {state.get('step')}, not the best "
                     f"step {self.early_stopping.best_step}; the final model is the last one")
            return None
        return {"model": state["model"], "objective": state["objective"]}

    def _best_state(self) -> dict[str, Any] | None:
        """The best model's state when it is not the current one (early stopping only)."""
        best_step = self.early_stopping.best_step
        if not self.early_stopping.active or best_step is None or best_step == self.step:
            return None
        return dist.on_main(self._read_best)

    def _figure(self, path: Path) -> None:
        ec = self.config["eval"]
        if self.data.is_image or self.data.dim == 2:
            save_samples_figure(self.model, self.data, path, ec["n_samples"], ec["temperature"])

    def _final_figures(self) -> list[str]:
        ec = self.config["eval"]
        if not (self.data.is_image or self.data.dim == 2):
            return []
        paths = save_run_figures(self.model, self.data, self.run_dir, ec["n_samples"],
                                 ec["temperature"])
        return [p.name for p in paths]

    def _diverged(self, what: str, terms: dict[str, float]) -> TrainingDiverged:
        ckpts = list_checkpoints(self.run_dir)
        kept = (f"the last good checkpoint is kept: {ckpts[-1]}" if ckpts
                else "no checkpoint had been written yet")
        if dist.world_size() > 1:
            what += f" (on at least one of the {dist.world_size()} processes)"
        message = (
            f"training stopped at step {self.step}: {what} became NaN or infinite "
            f"({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); {kept}. Try a lower "
            f"train.lr, set train.grad_clip (e.g. 5.0), or a larger data.alpha."
        )
        if dist.is_main():
            (self.run_dir / "summary.json").write_text(json.dumps(
                {"status": "diverged", "step": self.step, "message": message}, indent=2))
        return dist.mark_every_rank(TrainingDiverged(message))  # every process stops here

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps``; returns (and writes) ``summary.json``."""
        tc, ec = self.config["train"], self.config["eval"]
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dumps(self.config), encoding="utf-8")
        if self.step == 0:
            self.initialize()
            dist.seed_rank_stream(tc["seed"])  # ranks > 0: their own prior samples and noise
        dist.broadcast_modules(self.model, self.objective)  # every process starts from rank 0's
        self.model.train()
        bar = tqdm(total=tc["steps"], initial=self.step, disable=not self.progress,
                   desc=f"{self.config['transform']['name']} on {self.data.name}",
                   dynamic_ncols=True)
        seen, t_window = 0, time.perf_counter()
        if self.early_stopping.exhausted:  # a resumed run that had stopped early
            self.stopped_early = True
            self.log(f"this run stopped early (best val NLL at step "
                     f"{self.early_stopping.best_step}); raise train.patience to train on")
        while self.step < tc["steps"] and not self.stopped_early:
            t0 = time.perf_counter()
            lr = tc["lr"] * self.schedule(self.step)  # a pure function of the step: exact on resume
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = self._batch(self.step)
            terms = dict(self.objective.auxiliary_update(self.model, batch, self.step))
            out = self.objective.loss(self.model, batch, self.step)
            terms.update(out.terms)
            if out.total is not None:
                if not dist.all_true(bool(torch.isfinite(out.total))):
                    raise self._diverged("the loss", terms)
                self.optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                dist.average_gradients(self.params)  # the global batch's gradient, on every rank
                clip = tc["grad_clip"] if tc["grad_clip"] > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
                if not math.isfinite(grad_norm):
                    raise self._diverged("the gradient", {**terms, "grad_norm": grad_norm})
                self.optimizer.step()
                self.model.prior.after_step()
                terms["grad_norm"] = grad_norm
            self.step += 1
            seen += batch.x.shape[0] * dist.world_size()
            self.elapsed += time.perf_counter() - t0
            bar.update(1)
            if self.step % tc["log_every"] == 0 or self.step == tc["steps"]:
                terms = dist.average_terms(terms)  # the global batch's loss under torchrun
                now = time.perf_counter()
                record = {"step": self.step, **terms, "lr": lr,
                          "examples_per_s": seen / max(now - t_window, 1e-9)}
                self._write_metrics(record)
                seen, t_window = 0, now
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()
                                 if k in ("loss", "nll_per_dim", "bpd")} or None)
            # early stopping also evaluates the last step, so it can be the best one
            if tc["eval_every"] and self.step % tc["eval_every"] == 0 \
                    and (self.step < tc["steps"] or self.early_stopping.active):
                metrics = dist.on_main(self._log_evaluation, ec["max_examples"])  # others wait
                self.model.train()
                if self.early_stopping.active and self._stop_early(metrics["val_nll"]):
                    break
            if tc["sample_every"] and self.step % tc["sample_every"] == 0 \
                    and self.step < tc["steps"]:
                dist.on_main(self._figure, self.run_dir / "samples" / f"step-{self.step:08d}.png")
                self.model.train()
            if tc["checkpoint_every"] and self.step % tc["checkpoint_every"] == 0:
                self.save()
            if tc["max_minutes"] > 0 and dist.any_true(self.elapsed >= 60.0 * tc["max_minutes"]):
                self.log(f"time budget of {tc['max_minutes']} min reached at step {self.step}")
                break
        bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final checkpoint, full evaluation, figure and ``summary.json`` (on rank 0).

        With early stopping the best model replaces the current one first (and is what the final
        checkpoint's ``model`` holds), so the summary, ``flowkit eval`` and ``flowkit sample``
        report it.
        """
        best = self._best_state()
        if best is not None:
            self.save(best)
            self.model.load_state_dict(best["model"])
            self.objective.load_state_dict(best["objective"])
            self.log(f"final model: the best one, from step {self.early_stopping.best_step} "
                     f"(val NLL {self.early_stopping.best:.4f})")
        elif dist.on_main(self._needs_final_checkpoint):
            self.save()
        return dist.on_main(self._summarize)

    def _needs_final_checkpoint(self) -> bool:
        ckpts = list_checkpoints(self.run_dir)
        return not ckpts or not ckpts[-1].name.endswith(f"{self.step:08d}.pt")

    def _summarize(self) -> dict[str, Any]:
        metrics = self.evaluate(self.config["eval"]["final_max_examples"])
        self.model.eval()
        metrics.update(self.objective.evaluate(self.model, self.data,
                                               self.config["eval"]["final_max_examples"]))
        self._write_metrics({"step": self.step, "kind": "final", **metrics})
        figures = self._final_figures()
        figures += [p.name for p in self.objective.figures(self.model, self.data, self.run_dir)]
        tc = self.config["train"]
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
            "train_examples_per_s": round(self.step * tc["batch_size"] / max(self.elapsed, 1e-9),
                                          1),
            "device": str(self.device),
            **({"processes": dist.world_size()} if dist.world_size() > 1 else {}),
            **(self.early_stopping.summary(self.stopped_early)
               if self.early_stopping.active else {}),
            "figures": figures,
            "flowkit_version": __version__,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def train(config: dict[str, Any], run_dir: str | Path | None = None, *, out_dir: str | Path = "runs",
          progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a resolved config in a new run folder; returns the summary (``summary.json``).

    Under torchrun every process calls it with the same config (:mod:`flowkit.distributed`).
    """
    dist.init()
    run_dir = dist.on_main(_prepare_run_dir, config, run_dir, out_dir)  # rank 0 names the folder
    try:
        trainer = Trainer(config, run_dir, progress=progress, log=log)
        summary = trainer.fit()
    finally:
        runlock.release(run_dir)
    summary["run_dir"] = str(trainer.run_dir)
    return summary


def _prepare_run_dir(config: dict[str, Any], run_dir: str | Path | None,
                     out_dir: str | Path) -> Path:
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
    """The newest readable checkpoint of ``run_dir`` (unreadable ones are left in place)."""
    errors = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            log(f"warning: skipping unreadable checkpoint {path.name}")
    raise CheckpointError("no readable checkpoint to resume from: " + " | ".join(errors))


def resume(run_dir: str | Path, requested: dict[str, Any] | None = None, *,
           progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Continue a run from its newest checkpoint.

    ``requested`` (a resolved config) may change only :data:`flowkit.config.RESUMABLE_KEYS`
    (e.g. ``train.steps`` to train longer); any other difference is an error.
    """
    run_dir = Path(run_dir)
    dist.init()
    saved = resolve(dist.on_main(read_run_config, run_dir))  # rank 0 reads; all get it
    config = saved
    if requested is not None:
        conflicts = [k for k in diff(saved, requested) if k not in RESUMABLE_KEYS]
        if conflicts:
            details = "; ".join(f"{k}: run has {_lookup(saved, k)!r}, given {_lookup(requested, k)!r}"
                                for k in conflicts[:5])
            raise ConfigError(
                f"--resume {run_dir}: the given config conflicts with the run's config.toml "
                f"({details}). Resume with the run's own config (only train.steps and the "
                f"logging/eval settings may change), or start a new run."
            )
        config = requested
    dist.on_main(_require_checkpoint, run_dir)  # fail before building the model
    dist.on_main(runlock.acquire, run_dir)  # a run still training in it keeps it
    try:
        trainer = Trainer(config, run_dir, progress=progress, log=log)
        # under torchrun rank 0 reads the checkpoint on the CPU and sends it to every process
        where = trainer.device if dist.world_size() == 1 else "cpu"
        state = dist.on_main(_newest_state, run_dir, where, trainer.log)
        trainer.load_state(state)
        trainer.log(f"resuming {run_dir} from step {trainer.step}")
        summary = trainer.fit()
    finally:
        runlock.release(run_dir)
    summary["run_dir"] = str(run_dir)
    return summary


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
