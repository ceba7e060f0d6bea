"""Trainer behaviour: NaN guard, atomic checkpoints, data-dependent init, objective schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import flowkit
from flowkit import registry
from flowkit.checkpoint import load_checkpoint, save_checkpoint
from flowkit.errors import CheckpointError, TrainingDiverged
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.plugins.priors.gaussian import DiagonalGaussian
from flowkit.runs import list_checkpoints
from flowkit.transform import sum_except_batch

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "transform.num_layers=2",
    "transform.hidden=8",
    "train.batch_size=32",
]


class NaNAtStep(Objective):
    """Test objective: maximum likelihood that turns NaN at a given step."""

    def __init__(self, at: int = 3) -> None:
        super().__init__()
        self.at = at

    def loss(self, model, batch: Batch, step: int) -> LossOutput:
        nll = -model.log_prob(batch.x).mean()
        if step >= self.at:
            nll = nll * float("nan")
        return LossOutput(nll, {"loss": float(nll.detach())})


class Alternating(Objective):
    """Test objective: an auxiliary 'critic' on even steps, model updates on odd steps."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = torch.nn.Linear(2, 1)
        self.calls: list[tuple[str, int]] = []

    def setup(self, model) -> None:
        self.opt = torch.optim.SGD(self.critic.parameters(), lr=0.1)

    def auxiliary_update(self, model, batch: Batch, step: int) -> dict[str, float]:
        if step % 2:
            return {}
        self.calls.append(("critic", step))
        loss = self.critic(batch.x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"critic_loss": float(loss.detach())}

    def loss(self, model, batch: Batch, step: int) -> LossOutput:
        if step % 2 == 0:
            return LossOutput(None, {})
        self.calls.append(("model", step))
        nll = -model.log_prob(batch.x).mean()
        return LossOutput(nll, {"nll": float(nll.detach())})


class DataInitPrior(DiagonalGaussian):
    """Test prior: mean set from the untrained network's outputs."""

    needs_data_init = True

    def initialize(self, z, context=None) -> None:
        self.loc.data.copy_(z.mean(0))
        self.log_scale.data.copy_(z.std(0).log())
        self.initialized.fill_(True)


@pytest.fixture
def plugins():
    registry.objectives.register("nan-at", NaNAtStep)
    registry.objectives.register("alternating", Alternating)
    registry.priors.register("data-init", DataInitPrior)
    yield
    registry.objectives.unregister("nan-at")
    registry.objectives.unregister("alternating")
    registry.priors.unregister("data-init")


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path: Path, plugins):
    cfg = flowkit.load_config(
        "realnvp-moons",
        [*TINY, "train.steps=10", "train.checkpoint_every=2", "objective.at=5"],
        objective="nan-at",
    )
    with pytest.raises(TrainingDiverged, match=r"step 5.*NaN.*last good checkpoint.*step-00000004"):
        flowkit.train(cfg, tmp_path / "run", progress=False)
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts[-1].name == "step-00000004.pt"
    state = load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"


def test_objective_owns_its_schedule(tmp_path: Path, plugins):
    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=6"], objective="alternating")
    from flowkit.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.objective.calls == [
        ("critic", 0),
        ("model", 1),
        ("critic", 2),
        ("model", 3),
        ("critic", 4),
        ("model", 5),
    ]
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    # the critic is part of the checkpoint
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert "critic.weight" in state["objective"]


def test_data_dependent_prior_init_runs_once_and_survives_reload(tmp_path: Path, plugins):
    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=2", "train.lr=1e-12"], prior="data-init")
    summary = flowkit.train(cfg, tmp_path / "run", progress=False)
    run = flowkit.load_run(summary["run_dir"])
    assert bool(run.model.prior.initialized)
    loc = run.model.prior.loc.detach().clone()
    assert loc.abs().sum() > 0  # not the N(0, I) start
    run.model.initialize(torch.randn(64, 2) * 10)  # a second call must not re-initialise
    assert torch.equal(run.model.prior.loc.detach(), loc)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_checkpoint_refuses_pickled_objects(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "obj": Alternating}, path)
    with pytest.raises(CheckpointError, match="is pickle-bearing") as info:
        load_checkpoint(path)
    assert "Alternating" in str(info.value) and "arbitrary code" in str(info.value)
    assert "weights_only" not in str(info.value)  # never torch's hint to unpickle anyway


def test_checkpoint_that_is_not_flowkit(tmp_path: Path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match=r"not a flowkit checkpoint.*weights.*foreign"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (lambda good: good[:1000], r"is truncated or corrupt \(1000 bytes\)"),
        (lambda good: good[:-40], "is truncated or corrupt"),
        (lambda good: b"", r"is empty \(0 bytes\)"),
        (lambda good: b"not a pytorch file at all", "is truncated or corrupt"),
    ],
)
def test_a_refused_checkpoint_says_which_kind_it_is(tmp_path: Path, content, kind):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}, "step": 1})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(good.read_bytes()))
    with pytest.raises(CheckpointError, match=kind) as info:
        load_checkpoint(bad)
    assert "weights_only" not in str(info.value) and "pickle" not in str(info.value)
    assert "checkpoints/step-*.pt" in str(info.value)  # what to do instead


def test_resume_skips_an_unreadable_newest_checkpoint(tmp_path: Path):
    cfg = flowkit.load_config(
        "realnvp-moons", [*TINY, "train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=5"]
    )
    flowkit.train(cfg, tmp_path / "run", progress=False)
    newest = list_checkpoints(tmp_path / "run")[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    from flowkit.trainer import resume

    messages: list[str] = []
    summary = resume(tmp_path / "run", progress=False, log=messages.append)
    assert any("skipping unreadable checkpoint" in m for m in messages)
    assert summary["steps"] == 6
    assert newest.exists()  # the user's file is never deleted by resume


def test_training_lowers_the_loss(tmp_path: Path):
    cfg = flowkit.load_config(
        "realnvp-moons", ["data.n_train=2048", "data.n_test=512", "train.steps=150", "train.batch_size=128"]
    )
    from flowkit.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    start = trainer.evaluate(0)["test_nll"]
    end = trainer.fit()["test_nll"]
    assert end < start - 0.3


def test_log_prob_dtype_follows_sum_except_batch():
    x = torch.ones(2, 3, dtype=torch.float64)
    assert sum_except_batch(x).dtype == torch.float64


def test_class_balanced_stream_is_balanced_and_a_function_of_the_step():
    from flowkit.data import ClassBalancedStream

    labels = torch.arange(100) % 4
    data = torch.arange(100).float().unsqueeze(1)
    stream = ClassBalancedStream(data, labels, batch_size=20, seed=3, num_classes=4)
    x, y = stream(7)
    assert torch.equal(torch.bincount(y, minlength=4), torch.tensor([5, 5, 5, 5]))
    assert torch.equal(labels[x.squeeze(1).long()], y)
    again = ClassBalancedStream(data, labels, batch_size=20, seed=3, num_classes=4)
    assert torch.equal(again(7)[0], x)
    # one pass over a class covers each of its examples once
    seen = torch.cat([stream(s)[0] for s in range(5)]).squeeze(1).long()
    assert seen.unique().numel() == 100


def test_class_balanced_sampler_without_labels_falls_back_to_random(tmp_path: Path):
    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=1", "train.sampler=class-balanced"])
    messages: list[str] = []
    flowkit.train(cfg, tmp_path / "run", progress=False, log=messages.append)
    assert any("no labels" in m for m in messages)


def test_time_budget_stops_early_and_finishes_the_run(tmp_path: Path):
    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=100000", "train.max_minutes=0.002"])
    messages: list[str] = []
    summary = flowkit.train(cfg, tmp_path / "run", progress=False, log=messages.append)
    assert summary["status"] == "completed" and 0 < summary["steps"] < 100000
    assert any("time budget" in m for m in messages)
    assert (tmp_path / "run" / "checkpoints" / f"step-{summary['steps']:08d}.pt").is_file()


def _widen(value: torch.Tensor, dim: int, index: list[int], full: int) -> torch.Tensor:
    """Put ``value`` back at positions ``index`` of a zero tensor ``full`` wide along ``dim``."""
    shape = list(value.shape)
    shape[dim] = full
    out = value.new_zeros(shape)
    out.index_copy_(dim, torch.tensor(index), value)
    return out


def test_resume_a_run_saved_with_full_size_coupling_conditioners(tmp_path: Path):
    """A checkpoint from before the sliced coupling path (full-size first and last conditioner
    layers, and Adam moments of those shapes) resumes: the model narrows the old tensors and the
    optimiser restarts only the moments whose shapes changed."""
    from flowkit.trainer import Trainer, resume

    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=4", "train.checkpoint_every=4"])
    flowkit.train(cfg, tmp_path / "run", progress=False)
    path = list_checkpoints(tmp_path / "run")[-1]
    state = load_checkpoint(path)
    probe = Trainer(cfg, tmp_path / "probe", progress=False)
    order = [name for name, _ in probe.model.named_parameters()]
    widened = 0
    for prefix, module in probe.model.named_modules():
        for key, (dim, index) in getattr(module, "_narrowed", {}).items():
            full = module._full_sizes["inputs" if dim == 1 else "outputs"]
            name = f"{prefix}.{key}"
            state["model"][name] = _widen(state["model"][name], dim, index, full)
            moments = state["optimizer"]["state"][order.index(name)]
            for moment in ("exp_avg", "exp_avg_sq"):
                moments[moment] = _widen(moments[moment], dim, index, full)
            widened += 1
    assert widened > 0
    save_checkpoint(path, state)

    messages: list[str] = []
    longer = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=8", "train.checkpoint_every=4"])
    summary = resume(tmp_path / "run", longer, progress=False, log=messages.append)
    assert summary["steps"] == 8
    assert any(f"optimiser state of {widened} parameter tensor(s)" in m for m in messages)


def test_a_foreign_checkpoint_is_refused(tmp_path: Path):
    """A moons checkpoint copied into a digits run folder must not sample moons and exit 0."""
    import shutil

    from flowkit.runs import load_run

    moons = flowkit.load_config(
        "realnvp-moons", ["train.steps=2", "transform.num_layers=2", "transform.hidden=8"]
    )
    flowkit.train(moons, run_dir=tmp_path / "moons", progress=False, log=lambda _: None)
    digits = flowkit.load_config(
        None,
        ["train.steps=2", "transform.num_scales=1", "transform.hidden=4", "transform.num_blocks=1"],
        data="digits",
    )
    flowkit.train(digits, run_dir=tmp_path / "digits", progress=False, log=lambda _: None)
    foreign = list_checkpoints(tmp_path / "moons")[-1]
    target = tmp_path / "digits" / "checkpoints" / "step-99999999.pt"
    shutil.copy(foreign, target)
    with pytest.raises(CheckpointError, match=r"not written by this run.*on data 'moons'"):
        load_run(tmp_path / "digits")
    with pytest.raises(CheckpointError, match="not written by this run"):
        flowkit.trainer.resume(tmp_path / "digits", progress=False, log=lambda _: None)
    target.unlink()
    assert load_run(tmp_path / "digits").step == 2  # its own checkpoints still load


def test_one_writer_per_run_folder(tmp_path: Path):
    """A second writer of a folder that a run holds gets a clear error naming the holder."""
    import os

    from flowkit import runlock
    from flowkit.errors import ConfigError

    config = flowkit.load_config(None, [*TINY, "train.steps=2"], data="moons")
    flowkit.train(config, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    # another process holds the folder: simulate with a second open file description
    import fcntl

    with open(tmp_path / "run" / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.seek(0)
        fh.truncate()
        fh.write('{"pid": 4242, "host": "elsewhere", "started": "2026-12-04T05:00:00"}')
        fh.flush()
        with pytest.raises(ConfigError, match=r"in use by another flowkit run.*process 4242"):
            flowkit.trainer.resume(tmp_path / "run", progress=False, log=lambda _: None)
        with pytest.raises(ConfigError, match="in use"):
            flowkit.train(config, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    # released: resuming works, and the lock is given back afterwards
    flowkit.trainer.resume(tmp_path / "run", progress=False, log=lambda _: None)
    assert not runlock._HELD and os.path.exists(tmp_path / "run" / ".lock")


def test_generated_run_names_never_collide(tmp_path: Path):
    from flowkit.runs import new_run_dir

    config = flowkit.load_config(None, [], data="digits")
    folders = {new_run_dir(tmp_path, config) for _ in range(5)}
    assert len(folders) == 5


# -- the loop: typed config, callbacks, exact resume --------------------------------------------
class Recorder(flowkit.Callback):
    """Test callback: sees every hook, keeps a count in checkpoints, and may stop training."""

    state_key = "recorder"

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.steps_seen = 0
        self.events: list[tuple[str, int]] = []
        self.records: list[dict] = []

    def on_fit_start(self, trainer) -> None:
        self.events.append(("start", trainer.step))

    def after_step(self, trainer, out) -> None:
        self.steps_seen += 1
        assert out.step == trainer.step and out.examples == 32 and "grad_norm" in out.terms
        if out.step == self.stop_at:
            trainer.stop("recorder: enough")

    def on_metrics(self, trainer, record) -> None:
        self.records.append(record)

    def on_fit_end(self, trainer) -> None:
        self.events.append(("end", trainer.step))

    def on_summary(self, trainer, summary) -> None:
        summary["recorder_steps"] = self.steps_seen

    def state_dict(self) -> dict:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.steps_seen = state["steps_seen"]


def test_the_trainer_reads_typed_sections(tmp_path: Path):
    from flowkit.config import EvalConfig, TrainConfig
    from flowkit.trainer import Trainer

    cfg = flowkit.load_config("realnvp-moons", [*TINY, "train.steps=3", "eval.n_samples=7"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert isinstance(trainer.train_config, TrainConfig) and trainer.train_config.steps == 3
    assert isinstance(trainer.eval_config, EvalConfig) and trainer.eval_config.n_samples == 7
    assert trainer.train_config.betas == (0.9, 0.999)  # TOML's list, typed back to a tuple


def test_callbacks_plug_into_fit_and_their_state_resumes(tmp_path: Path):
    from flowkit.trainer import resume

    def config(steps: int) -> dict:
        return flowkit.load_config(
            "realnvp-moons",
            [
                *TINY,
                f"train.steps={steps}",
                "train.log_every=2",
                "train.eval_every=4",
                "train.checkpoint_every=3",
            ],
        )

    recorder, messages = Recorder(stop_at=6), []
    summary = flowkit.train(
        config(10), tmp_path / "run", progress=False, log=messages.append, callbacks=[recorder]
    )
    assert summary["steps"] == 6 and summary["recorder_steps"] == 6
    assert "recorder: enough" in messages
    assert recorder.events == [("start", 0), ("end", 6)]
    assert [(r["step"], r.get("kind")) for r in recorder.records] == [
        (2, None),
        (4, None),
        (4, "eval"),
        (6, None),
        (6, "final"),
    ]
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert written == recorder.records
    # the checkpoint of step 6 holds the callback's state of step 6; resume restores it
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["recorder"] == {"steps_seen": 6}
    again = Recorder()
    resume(tmp_path / "run", config(8), progress=False, log=lambda _: None, callbacks=[again])
    assert again.steps_seen == 8 and again.events == [("start", 6), ("end", 8)]


def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path: Path):
    """A weighted sum with OT (prior samples: the global random stream), evaluations, sample
    figures and checkpoints (each checks the state's NLL) in between: the resumed run ends with
    the very same parameters."""
    from flowkit.trainer import resume

    def config(steps: int) -> dict:
        return flowkit.load_config(
            "realnvp-moons",
            [
                *TINY,
                f"train.steps={steps}",
                "train.scheduler=constant",
                "train.checkpoint_every=3",
                "train.eval_every=2",
                "train.sample_every=4",
                "train.log_every=1",
            ],
            objective="mle+0.1*ot",
            prior="diag-gaussian",
        )

    flowkit.train(config(8), tmp_path / "straight", progress=False, log=lambda _: None)
    flowkit.train(config(5), tmp_path / "cut", progress=False, log=lambda _: None)
    resume(tmp_path / "cut", config(8), progress=False, log=lambda _: None)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / name)[-1]) for name in ("straight", "cut"))
    assert a["step"] == b["step"] == 8
    for part in ("model", "objective"):
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), (part, key)
    for key, value in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][k]) for k, v in value.items())
