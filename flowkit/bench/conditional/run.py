"""Running the conditional benchmark: train every row on every task and budget, measure, cache.

For each task: fixed observations ``x*_1..k`` and their reference posterior samples
(:mod:`.reference`), a test set of ``test_size`` simulations, and for each simulation budget
``n`` a training set of ``n`` simulations from the joint ``p(θ) p(x | θ)`` — the same data for
every row. Each row (:mod:`.models`) then trains on it with the same recipe:

* ``θ`` and ``x`` are standardised with the training split's mean and standard deviation (the
  log-density is corrected by ``−Σ log σ_θ``, so NLLs are in the original units);
* ``val_fraction`` of the simulations are held out; Adam (``lr``), ``steps`` steps of
  ``batch_size`` examples drawn with replacement in the same order for every row, gradient norm
  clipped to ``clip``; the validation loss is computed ``evals`` times and the best parameters
  are kept (early stopping without stopping, so every row costs the same steps);
* each library's Adam is built the way its users build it (:func:`row_optimizer`): flowkit's
  rows through :func:`flowkit.optim.build_optimizer`, as flowkit's trainer does — the same Adam
  update in the implementation (fused, foreach or for-loop) that a one-off measurement found
  fastest on this machine — and the peers' rows with ``torch.optim.Adam(params, lr=lr)``, as
  their documentation shows (PyTorch's default implementation: foreach on CPU). The update is
  the same up to floating-point round-off; each cell records its implementation;
* metrics: test NLL ``−(1/N) Σ log q(θ_i | x_i)`` over the test simulations (and its median
  and worst example: a few tail simulations can dominate the mean); C2ST accuracy
  (:mod:`.c2st`) between ``c2st_samples`` flow samples and as many reference samples at each
  observation (mean over observations, and per observation in ``results.json``); for
  ``inverse-kinematics`` the re-simulation error ``mean_j ‖f(θ_j) − y*‖`` of the flow samples.

Step time is measured separately, once per task, with every row's model on the same batch:
rounds of ``timing_steps`` training steps (forward, backward, clipping, Adam), the rows'
order rotating every round, ``timing_rounds`` rounds after a warm-up; a row's ``step_ms`` is the
median wall time, and its ratio is against the fastest *peer* (not flowkit) of the same family.
``step_cpu_ms`` is the median CPU time of the process per step over the same rounds: on an idle
machine with one thread the two agree; on a shared one wall time also counts the time other jobs
held the CPU, and CPU time shows whether a ratio is the code's or the scheduler's.
Everything runs on ``threads`` torch threads (default 1: these conditioners are 64 units wide,
too small for intra-op parallelism to pay, and on a busy machine extra threads spin-wait).

A cell (task × row × budget) leaves ``cells/<task>__<row>__<n>.json``; a re-run skips cells
whose fingerprint (everything that determines the result) is unchanged, and rewrites
``results.json``, ``results.csv`` and ``report.md`` after every cell.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit.atomic import atomic_write_text
from flowkit.bench.conditional.c2st import c2st
from flowkit.bench.conditional.models import (
    ROWS,
    Arch,
    ConditionalModel,
    MissingLibrary,
    Unavailable,
    build_row,
)
from flowkit.bench.conditional.reference import (
    VERSIONS as REFERENCE_VERSIONS,
)
from flowkit.bench.conditional.reference import (
    gaussian_linear_log_posterior,
    reference_samples,
)
from flowkit.bench.conditional.tasks import (
    TASKS,
    GaussianLinear,
    InverseKinematics,
    Task,
    generator,
    get_task,
)
from flowkit.errors import ConfigError
from flowkit.optim import build_optimizer, implementation_of, last_measurements

SUITE = "conditional"
#: Bump when the training or evaluation recipe changes: stored cells of older versions re-run.
RECIPE_VERSION = 3  # 3: flowkit rows build Adam with flowkit.optim (measured implementation)
#: Bump when what the step-time measurement records changes (2: CPU time too): timings re-run.
TIMING_VERSION = 2
DEFAULT_SIMS = (1000, 10000)


@dataclass(frozen=True)
class Settings:
    """Everything that determines the benchmark's numbers (and its command line)."""

    tasks: tuple[str, ...] = tuple(TASKS)
    sims: tuple[int, ...] = DEFAULT_SIMS
    rows: tuple[str, ...] = tuple(ROWS)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    clip: float = 5.0
    seed: int = 0
    observations: int = 3
    c2st_samples: int = 1000
    c2st_folds: int = 5
    test_size: int = 2000
    val_fraction: float = 0.1
    evals: int = 20
    timing_rounds: int = 20
    timing_steps: int = 5
    threads: int = 1
    arch: Arch = field(default_factory=Arch)

    def __post_init__(self) -> None:
        for name in self.tasks:
            get_task(name)
        for row in self.rows:
            if row not in ROWS:
                import difflib

                close = difflib.get_close_matches(row, ROWS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown row {row!r}{hint}; choose from {', '.join(ROWS)}")
        if not self.sims or min(self.sims) < 20:
            raise ConfigError("--sims: give budgets of at least 20 simulations, e.g. 1000,10000")
        if self.steps < 1:
            raise ConfigError("--steps must be at least 1")

    def command(self) -> str:
        """The ``flowkit bench conditional`` command that reproduces these settings."""
        parts = [
            "flowkit bench conditional",
            "--sims " + ",".join(map(str, self.sims)),
            f"--steps {self.steps}",
        ]
        if self.tasks != tuple(TASKS):
            parts.append("--tasks " + ",".join(self.tasks))
        if self.rows != tuple(ROWS):
            parts.append("--rows " + ",".join(self.rows))
        if self.threads != 1:
            parts.append(f"--threads {self.threads}")
        defaults = Settings()
        extra = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("tasks", "sims", "rows", "steps", "threads") and v != asdict(defaults)[k]
        }
        if extra:  # settings only reachable from Python: say so next to the command
            parts.append("# Python settings: " + json.dumps(extra, sort_keys=True))
        return " ".join(parts)

    def cell_fingerprint(self, task: str, row: str, sims: int) -> str:
        keep = asdict(self)
        for k in ("tasks", "rows", "sims", "threads", "timing_rounds", "timing_steps"):
            keep.pop(k)
        keep.update(
            task=task, row=row, sims=sims, recipe=RECIPE_VERSION, reference=REFERENCE_VERSIONS.get(task, 1)
        )
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def timing_fingerprint(self, task: str, rows: Sequence[str]) -> str:
        keep = {
            "task": task,
            "rows": list(rows),
            "batch": self.batch_size,
            "clip": self.clip,
            "arch": asdict(self.arch),
            "rounds": self.timing_rounds,
            "steps": self.timing_steps,
            "recipe": RECIPE_VERSION,
            "timing": TIMING_VERSION,
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# -- data ------------------------------------------------------------------------------------------
@dataclass
class Standardizer:
    """z-scores for ``θ`` and ``x`` from the training split (float32)."""

    theta_mean: Tensor
    theta_std: Tensor
    x_mean: Tensor
    x_std: Tensor

    @classmethod
    def fit(cls, theta: Tensor, x: Tensor) -> Standardizer:
        def stats(t: Tensor) -> tuple[Tensor, Tensor]:
            std = t.std(0)
            return t.mean(0).float(), torch.where(std > 1e-12, std, torch.ones_like(std)).float()

        return cls(*stats(theta), *stats(x))

    def theta(self, t: Tensor) -> Tensor:
        return (t.float() - self.theta_mean) / self.theta_std

    def x(self, x: Tensor) -> Tensor:
        return (x.float() - self.x_mean) / self.x_std

    def theta_back(self, z: Tensor) -> Tensor:
        return z.double() * self.theta_std.double() + self.theta_mean.double()

    @property
    def log_det(self) -> float:
        """``Σ log σ_θ``: subtract from the standardised log-density for the original units."""
        return float(torch.log(self.theta_std.double()).sum())


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return perm[n_val:], perm[:n_val]


def _seed_of(*keys: object) -> int:
    return int(generator(*keys).initial_seed())


# -- training and evaluation -----------------------------------------------------------------------
def row_optimizer(row: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with learning rate ``lr`` for ``row``, built as the row's library is used.

    flowkit rows: :func:`flowkit.optim.build_optimizer` (the implementation flowkit's trainer
    would use on this machine: measured once and cached, see :mod:`flowkit.optim`); peer rows:
    ``torch.optim.Adam(params, lr=lr)`` with PyTorch's defaults, as zuko's and nflows'
    documentation train their flows.
    """
    params = list(params)
    if ROWS[row].library == "flowkit":
        return build_optimizer(
            params, {"optimizer": "adam", "lr": lr, "betas": (0.9, 0.999), "weight_decay": 0.0}
        )
    return torch.optim.Adam(params, lr=lr)


def _train_step(
    model: ConditionalModel, opt: torch.optim.Optimizer, theta: Tensor, x: Tensor, clip: float
) -> float:
    loss = -model.log_prob(theta, x).mean()
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.module.parameters(), clip)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def _log_probs(model: ConditionalModel, theta: Tensor, x: Tensor, chunk: int = 4096) -> Tensor:
    return torch.cat(
        [
            model.log_prob(theta[i : i + chunk], x[i : i + chunk]).double()
            for i in range(0, theta.shape[0], chunk)
        ]
    )


def _mean_log_prob(model: ConditionalModel, theta: Tensor, x: Tensor) -> float:
    return float(_log_probs(model, theta, x).mean())


def train_and_evaluate(
    task: Task,
    row: str,
    settings: Settings,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    x_obs: Tensor,
    reference: Tensor,
    sims: int,
) -> dict[str, Any]:
    """Train ``row`` on ``train`` (``sims`` simulations) and measure it: one cell's metrics."""
    theta_all, x_all = train
    split_gen = generator("split", task.name, sims, settings.seed)
    tr, va = _split(theta_all.shape[0], settings.val_fraction, split_gen)
    std = Standardizer.fit(theta_all[tr], x_all[tr])
    th_tr, x_tr = std.theta(theta_all[tr]), std.x(x_all[tr])
    th_va, x_va = std.theta(theta_all[va]), std.x(x_all[va])

    torch.manual_seed(_seed_of("init", task.name, row, settings.seed))
    model = build_row(row, task.theta_dim, task.x_dim, settings.arch)
    params = sum(p.numel() for p in model.module.parameters())
    opt = row_optimizer(row, model.module.parameters(), settings.lr)
    batch_gen = generator("batches", task.name, sims, settings.seed)
    eval_every = max(1, settings.steps // max(1, settings.evals))
    best = (-math.inf, 0, copy.deepcopy(model.module.state_dict()))
    step_times: list[float] = []
    skipped = 0
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        idx = torch.randint(th_tr.shape[0], (settings.batch_size,), generator=batch_gen)
        t0 = time.perf_counter()
        loss = _train_step(model, opt, th_tr[idx], x_tr[idx], settings.clip)
        step_times.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            skipped += 1
            if skipped > max(10, settings.steps // 10):
                break
        if step % eval_every == 0 or step == settings.steps:
            if th_va.shape[0]:
                val = _mean_log_prob(model, th_va, x_va)
            else:
                val = -loss
            if math.isfinite(val) and val > best[0]:
                best = (val, step, copy.deepcopy(model.module.state_dict()))
    train_s = time.perf_counter() - start
    model.module.load_state_dict(best[2])

    th_te, x_te = test
    record: dict[str, Any] = {
        "params": params,
        "train_s": train_s,
        "best_step": best[1],
        "val_nll": -best[0] + std.log_det if math.isfinite(best[0]) else None,
        "skipped_steps": skipped,
        "train_step_ms_inline": 1000 * statistics.median(step_times[min(10, len(step_times) - 1) :]),
        "note": model.note,
        "optimizer": implementation_of(opt),
    }
    nlls = -(_log_probs(model, std.theta(th_te), std.x(x_te)) - std.log_det)
    nll = float(nlls.mean())
    record["nll"] = nll if math.isfinite(nll) else None
    for key, value in (("nll_median", float(nlls.median())), ("nll_max", float(nlls.max()))):
        record[key] = value if math.isfinite(value) else None
    c2sts, resims, nonfinite = [], [], 0
    with torch.no_grad():
        for i, x in enumerate(x_obs):
            gen_state = torch.get_rng_state()
            torch.manual_seed(_seed_of("sample", task.name, row, sims, settings.seed, i))
            z = model.sample(std.x(x), settings.c2st_samples)
            torch.set_rng_state(gen_state)
            samples = std.theta_back(z.reshape(settings.c2st_samples, task.theta_dim))
            finite = torch.isfinite(samples).all(-1)
            nonfinite += int((~finite).sum())
            c2sts.append(
                c2st(
                    reference[i],
                    samples,
                    folds=settings.c2st_folds,
                    seed=settings.seed,
                    threads=settings.threads or None,
                )
            )
            if isinstance(task, InverseKinematics):
                err = (task.forward(samples[finite]) - x.double()).norm(dim=-1)
                resims.append(float(err.mean()) if err.numel() else float("nan"))
    record["c2st"] = statistics.fmean(c2sts)
    record["c2st_per_observation"] = c2sts
    record["nonfinite_samples"] = nonfinite
    if resims:
        record["resim_error"] = statistics.fmean(resims)
        record["resim_error_per_observation"] = resims
    status = "ok"
    if record["nll"] is None or skipped > max(10, settings.steps // 10):
        status = "diverged"
    record["status"] = status
    return record


def measure_step_times(
    task: Task,
    rows: Sequence[str],
    settings: Settings,
    batch: tuple[Tensor, Tensor],
    implementations: dict[str, str] | None = None,
    cpu_ms: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median training-step wall time (ms) per row, interleaved round-robin (module docstring).

    ``implementations``, if given, receives each row's Adam implementation
    (:func:`row_optimizer`); ``cpu_ms`` the median CPU time of the process per step
    (``time.process_time``: unlike wall time, not inflated while other jobs hold the CPU).
    """
    theta, x = batch
    models: dict[str, tuple[ConditionalModel, torch.optim.Optimizer]] = {}
    for row in rows:
        torch.manual_seed(_seed_of("timing", task.name, row))
        model = build_row(row, task.theta_dim, task.x_dim, settings.arch)
        models[row] = (model, row_optimizer(row, model.module.parameters(), settings.lr))
        if implementations is not None:
            implementations[row] = implementation_of(models[row][1])
    for model, opt in models.values():  # warm-up
        for _ in range(3):
            _train_step(model, opt, theta, x, settings.clip)
    times: dict[str, list[float]] = {row: [] for row in rows}
    cpu: dict[str, list[float]] = {row: [] for row in rows}
    order = list(rows)
    for r in range(settings.timing_rounds):
        k = r % len(order)
        for row in order[k:] + order[:k]:
            model, opt = models[row]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(settings.timing_steps):
                _train_step(model, opt, theta, x, settings.clip)
            cpu[row].append((time.process_time() - c0) / settings.timing_steps)
            times[row].append((time.perf_counter() - t0) / settings.timing_steps)
    if cpu_ms is not None:
        cpu_ms.update({row: 1000 * statistics.median(t) for row, t in cpu.items()})
    return {row: 1000 * statistics.median(t) for row, t in times.items()}


# -- the benchmark ---------------------------------------------------------------------------------
def cell_path(out_dir: Path, task: str, row: str, sims: int) -> Path:
    return out_dir / "cells" / f"{task}__{row}__{sims}.json"


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes; compare with the CPU count), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stored_cell(out_dir: Path, settings: Settings, task: str, row: str, sims: int) -> dict[str, Any] | None:
    """The stored result of a cell computed with the same settings, if any."""
    record = _read_json(cell_path(out_dir, task, row, sims))
    if record and record.get("fingerprint") == settings.cell_fingerprint(task, row, sims):
        return record
    return None


def _availability(task: Task, rows: Sequence[str], settings: Settings) -> dict[str, str | None]:
    """``None`` for rows that build here, else ``"<status>|<reason>"`` (status ``not
    installed`` or ``unavailable``)."""
    out: dict[str, str | None] = {}
    for row in rows:
        try:
            build_row(row, task.theta_dim, task.x_dim, settings.arch)
            out[row] = None
        except MissingLibrary as exc:
            out[row] = f"not installed|{exc}"
        except Unavailable as exc:
            out[row] = f"unavailable|{exc}"
    return out


def run_conditional(
    settings: Settings, out_dir: str | Path, *, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the benchmark into ``out_dir``; return what ``results.json`` holds."""
    from flowkit.bench.conditional.report import write_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads > 0:  # 0: torch's default (every core)
        torch.set_num_threads(settings.threads)
    state: dict[str, Any] = {"settings": settings, "tasks": {}, "cells": []}

    def save() -> None:
        write_outputs(state, out_dir)

    for task_name in settings.tasks:
        task = get_task(task_name)
        t0 = time.perf_counter()
        theta_obs, x_obs = task.observations(settings.observations, settings.seed)
        reference, ref_info = reference_samples(task, x_obs, settings.c2st_samples, settings.seed)
        test = task.joint(settings.test_size, generator("test", task.name, settings.seed))
        info: dict[str, Any] = {
            "description": task.description,
            "reference": task.reference,
            "paper": task.paper,
            "theta_dim": task.theta_dim,
            "x_dim": task.x_dim,
            "observations": x_obs.tolist(),
            "true_parameters": [[None if math.isnan(v) else v for v in t] for t in theta_obs.tolist()],
            "reference_info": ref_info,
            "reference_s": time.perf_counter() - t0,
        }
        if isinstance(task, GaussianLinear):
            info["nll_reference"] = -float(gaussian_linear_log_posterior(task, *test).mean())
        availability = _availability(task, settings.rows, settings)
        info["availability"] = availability
        usable = [r for r in settings.rows if availability[r] is None]
        state["tasks"][task.name] = info
        log(
            f"{task.name}: reference ready ({info['reference_s']:.1f} s); rows: {', '.join(usable) or 'none'}"
        )

        timing_path = out_dir / "timing" / f"{task.name}.json"
        fp = settings.timing_fingerprint(task.name, usable)
        timing = None if force else _read_json(timing_path)
        if not timing or timing.get("fingerprint") != fp:
            batch_theta, batch_x = task.joint(settings.batch_size, generator("timing", task.name))
            std = Standardizer.fit(batch_theta, batch_x)
            impls: dict[str, str] = {}
            cpu_ms: dict[str, float] = {}
            load_before = _load_average()
            step_ms = (
                measure_step_times(
                    task, usable, settings, (std.theta(batch_theta), std.x(batch_x)), impls, cpu_ms
                )
                if usable
                else {}
            )
            timing = {
                "fingerprint": fp,
                "step_ms": step_ms,
                "step_cpu_ms": cpu_ms,
                "threads": torch.get_num_threads(),
                "optimizer": impls,
                "load_average": [load_before, _load_average()],
                "optimizer_choice": {k: dict(v) for k, v in last_measurements.items()},
            }
            atomic_write_text(timing_path, json.dumps(timing, indent=2))
        info["step_ms"] = timing["step_ms"]
        info["step_cpu_ms"] = timing.get("step_cpu_ms", {})
        info["optimizer"] = timing.get("optimizer", {})
        info["optimizer_choice"] = timing.get("optimizer_choice", {})
        info["timing_load_average"] = timing.get("load_average")
        save()

        for sims in settings.sims:
            train = None
            for row in settings.rows:
                record = None if force else stored_cell(out_dir, settings, task.name, row, sims)
                base = {
                    "task": task.name,
                    "row": row,
                    "library": ROWS[row].library,
                    "family": ROWS[row].family,
                    "sims": sims,
                    "fingerprint": settings.cell_fingerprint(task.name, row, sims),
                }
                if record is None and (unavailable := availability[row]) is not None:
                    status, reason = unavailable.split("|", 1)
                    record = {**base, "status": status, "reason": reason}
                elif record is None:
                    if train is None:
                        train = task.joint(sims, generator("train", task.name, sims, settings.seed))
                    t1 = time.perf_counter()
                    try:
                        metrics = train_and_evaluate(task, row, settings, train, test, x_obs, reference, sims)
                    except Exception as exc:  # one failing row never stops the benchmark
                        metrics = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                    record = {**base, **metrics, "cell_s": time.perf_counter() - t1}
                    atomic_write_text(cell_path(out_dir, task.name, row, sims), json.dumps(record, indent=2))
                    log(_cell_line(record))
                state["cells"].append(record)
                save()
    save()
    return state


def _cell_line(r: dict[str, Any]) -> str:
    head = f"  {r['task']:<18} {r['row']:<16} {r['sims']:>7} sims: "
    if r.get("status") not in ("ok", "diverged"):
        return head + f"{r.get('status')} ({r.get('reason', '')})"
    nll = "–" if r.get("nll") is None else f"{r['nll']:.3f}"
    extra = f", resim {r['resim_error']:.3f}" if "resim_error" in r else ""
    return head + f"C2ST {r['c2st']:.3f}, NLL {nll}{extra} [{r['status']}, {r.get('cell_s', 0):.0f} s]"


# -- command line ----------------------------------------------------------------------------------
def parse_list(text: str | None, what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise ConfigError(f"{what}: give a comma-separated list")
    return items


def parse_sims(text: str | None) -> tuple[int, ...] | None:
    """``"1000,10000"``, ``"1e3,1e4"`` or ``"1k,10k,100k"`` → ``(1000, 10000, …)``."""
    items = parse_list(text, "--sims")
    if items is None:
        return None
    out = []
    for item in items:
        scale = 1000 if item.lower().endswith("k") else 1
        try:
            value = float(item[:-1] if scale == 1000 else item) * scale
        except ValueError:
            raise ConfigError(f"--sims: {item!r} is not a number of simulations") from None
        if value != int(value) or value < 1:
            raise ConfigError(f"--sims: {item!r} is not a whole number of simulations")
        out.append(int(value))
    return tuple(out)


def settings_from_cli(
    sims: str | None, steps: int | None, tasks: str | None, rows: str | None, threads: int | None
) -> Settings:
    """:class:`Settings` from the command-line options (``None``: the default)."""
    given: dict[str, Any] = {}
    if (s := parse_sims(sims)) is not None:
        given["sims"] = s
    if steps is not None:
        given["steps"] = steps
    if (t := parse_list(tasks, "--tasks")) is not None:
        given["tasks"] = t
    if (r := parse_list(rows, "--rows")) is not None:
        given["rows"] = r
    if threads is not None:
        given["threads"] = threads
    return replace(Settings(), **given) if given else Settings()


def dry_run(settings: Settings, out_dir: Path, log: Callable[[str], None] = print) -> None:
    """List the cells and whether a stored result will be reused."""
    for task in settings.tasks:
        for sims in settings.sims:
            for row in settings.rows:
                done = stored_cell(out_dir, settings, task, row, sims) is not None
                log(f"  {task + '__' + row + '__' + str(sims):<60} {'done' if done else 'to run'}")
