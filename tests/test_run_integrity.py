"""No silent wrong runs: the last good checkpoint is good, resume with a lower learning rate,
no orphaned temporary files, no duplicated metrics, a clear line on a full disk, figures written
atomically."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit import registry
from flowkit.atomic import DiskFullError, atomic_write
from flowkit.cli.main import cli
from flowkit.errors import ConfigError, TrainingDiverged
from flowkit.metrics import evaluate_nll
from flowkit.plugins.priors.gaussian import DiagonalGaussian
from flowkit.runs import list_checkpoints, load_run
from flowkit.trainer import resume

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "transform.num_layers=2",
    "transform.hidden=8",
    "train.batch_size=32",
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "train.scheduler=constant",
]

#: When (after which optimiser step) and how the test prior goes bad.
BREAK: dict = {"at": None, "how": "parameters"}


class BreakingPrior(DiagonalGaussian):
    """Test prior: after optimiser step ``BREAK["at"]`` its location becomes infinite
    (``how="parameters"``) or, with finite parameters, its density NaN (``how="density"``)."""

    def __init__(self, shape, num_classes=None) -> None:
        super().__init__(shape, num_classes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("broken", torch.zeros((), dtype=torch.bool))

    def after_step(self) -> None:
        self.steps += 1
        if BREAK["at"] is not None and int(self.steps) == BREAK["at"]:
            if BREAK["how"] == "parameters":
                self.loc.data.fill_(float("inf"))
            else:
                self.broken.fill_(True)

    def log_prob(self, z, context=None):
        log_p = super().log_prob(z, context)
        return log_p * float("nan") if bool(self.broken) else log_p


@pytest.fixture
def breaking():
    registry.priors.register("breaking", BreakingPrior)
    yield BREAK
    registry.priors.unregister("breaking")
    BREAK.update(at=None, how="parameters")


def config(*overrides: str, **shortcuts: str) -> dict:
    return flowkit.load_config("realnvp-moons", [*TINY, *overrides], **shortcuts)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- "last good" means good ---------------------------------------------------------------------
@pytest.mark.parametrize("how", ["parameters", "density"])
def test_the_last_good_checkpoint_is_finite_and_gives_a_finite_nll(tmp_path: Path, breaking, how):
    """The state goes bad right after step 4, a checkpoint step: step 4 is not written as a
    "good" checkpoint; the message names step 2 and how to resume with a lower learning rate."""
    breaking.update(at=4, how=how)
    run_dir = tmp_path / "run"
    overrides = ["train.checkpoint_every=2", "train.keep_checkpoints=5"]
    with pytest.raises(TrainingDiverged) as info:
        flowkit.train(
            config("train.steps=10", *overrides, prior="breaking"),
            run_dir,
            progress=False,
            log=lambda _: None,
        )
    message = str(info.value)
    assert "training stopped at step 4" in message
    assert ("the parameters" if how == "parameters" else "NLL") in message
    assert f"last good checkpoint is kept: {run_dir / 'checkpoints' / 'step-00000002.pt'}" in message
    assert f"flowkit run --resume {run_dir} --set train.lr=0.0001" in message
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000002.pt"]
    run = load_run(run_dir)  # the checkpoint the message points to is good
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values() if v.is_floating_point())
    nll = evaluate_nll(run.model, run.load_data(), dequantize_data=False)["test_nll"]
    assert torch.isfinite(torch.tensor(nll))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"

    # resume from it with a lower learning rate (the cause is gone): accepted and recorded
    breaking["at"] = None
    messages: list[str] = []
    summary = resume(
        run_dir,
        config("train.steps=10", "train.lr=1e-4", *overrides, prior="breaking"),
        progress=False,
        log=messages.append,
    )
    assert any(f"resuming {run_dir} from step 2" in m for m in messages)
    assert summary["status"] == "completed" and summary["steps"] == 10
    history = [json.loads(line) for line in (run_dir / "config-history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 2
    assert history[-1]["changes"] == {"train.lr": {"from": 0.001, "to": 0.0001}}
    assert "lr = 0.0001" in (run_dir / "config.toml").read_text()
    steps = [r["step"] for r in records(run_dir) if "kind" not in r]
    assert steps == list(range(1, 11))  # steps 3 and 4 of the diverged attempt were dropped


def test_resume_with_a_lower_learning_rate_from_the_command_line(tmp_path: Path):
    run_dir = tmp_path / "run"
    common = [
        "--data",
        "moons",
        "--set",
        "data.n_train=256",
        "--set",
        "data.n_test=64",
        "--set",
        "transform.num_layers=2",
        "--set",
        "transform.hidden=8",
        "--quiet",
    ]
    result = CliRunner().invoke(
        cli, ["run", *common, "--set", "train.steps=4", "--out", str(tmp_path), "--name", "run"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--resume",
            str(run_dir),
            "--set",
            "train.lr=2e-4",
            "--set",
            "train.grad_clip=5.0",
            "--set",
            "train.steps=6",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    history = json.loads((run_dir / "config-history.jsonl").read_text().splitlines()[-1])
    assert set(history["changes"]) == {"train.lr", "train.grad_clip", "train.steps"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6


# -- crashes, metrics, fewer steps --------------------------------------------------------------
def test_a_restart_removes_the_temporary_files_of_interrupted_writes(tmp_path: Path):
    run_dir = tmp_path / "run"
    flowkit.train(
        config("train.steps=4", "train.checkpoint_every=2"), run_dir, progress=False, log=lambda _: None
    )
    leftovers = [
        run_dir / "checkpoints" / ".step-00000006.pt.a1b2c3d4.tmp",
        run_dir / ".summary.json.x9y8_7w6.tmp",
        run_dir / "samples" / ".step-00000002.png.abcdefgh.tmp",
    ]
    kept = [run_dir / "notes.tmp", run_dir / ".hidden.tmp"]  # not names flowkit writes
    for path in leftovers + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a file")
    messages: list[str] = []
    resume(run_dir, config("train.steps=6", "train.checkpoint_every=2"), progress=False, log=messages.append)
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)
    assert any("removed 3 temporary file(s)" in m for m in messages)
    assert sorted(run_dir.rglob("*.tmp")) == sorted(kept)  # only the user's files are left


def test_metrics_have_no_duplicated_steps_or_second_final_record_after_resume(tmp_path: Path):
    run_dir = tmp_path / "run"
    flowkit.train(
        config("train.steps=8", "train.checkpoint_every=4", "train.keep_checkpoints=5"),
        run_dir,
        progress=False,
        log=lambda _: None,
    )
    (list_checkpoints(run_dir)[-1]).unlink()  # a crash before the step-8 checkpoint was written
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 9, "loss"')  # and a line torn by the crash
    resume(
        run_dir,
        config("train.steps=10", "train.checkpoint_every=4", "train.keep_checkpoints=5"),
        progress=False,
        log=lambda _: None,
    )
    written = records(run_dir)
    assert [r["step"] for r in written if "kind" not in r] == list(range(1, 11))
    assert [r["step"] for r in written if r.get("kind") == "final"] == [10]
    # resuming a finished run repeats its final evaluation once, not twice
    resume(run_dir, progress=False, log=lambda _: None)
    assert [r["step"] for r in records(run_dir) if r.get("kind") == "final"] == [10]


def test_resuming_with_fewer_steps_than_done_says_so(tmp_path: Path):
    run_dir = tmp_path / "run"
    flowkit.train(config("train.steps=6"), run_dir, progress=False, log=lambda _: None)
    with pytest.raises(
        ConfigError,
        match=r"already trained 6 steps, more than train.steps = 4; "
        r"a run cannot be shortened.*train.steps above 6",
    ):
        resume(run_dir, config("train.steps=4"), progress=False, log=lambda _: None)
    result = CliRunner().invoke(cli, ["run", "--resume", str(run_dir), "--set", "train.steps=3"])
    assert result.exit_code == 1 and "already trained 6 steps" in result.output
    assert "Traceback" not in result.output
    messages: list[str] = []
    resume(run_dir, progress=False, log=messages.append)
    assert any("already trained all 6 steps" in m for m in messages)


# -- a full disk --------------------------------------------------------------------------------
def _full_disk_on_call(monkeypatch, target, name: str, from_call: int) -> None:
    """Make ``target.name`` raise ENOSPC from its ``from_call``-th call on."""
    real = getattr(target, name)
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= from_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, full)


def test_a_full_disk_is_one_clear_line(tmp_path: Path, monkeypatch):
    _full_disk_on_call(monkeypatch, torch, "save", from_call=2)  # the step-4 checkpoint
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--data",
            "moons",
            "--set",
            "data.n_train=256",
            "--set",
            "data.n_test=64",
            "--set",
            "transform.num_layers=2",
            "--set",
            "transform.hidden=8",
            "--set",
            "train.steps=6",
            "--set",
            "train.checkpoint_every=2",
            "--quiet",
            "--out",
            str(tmp_path),
            "--name",
            "run",
        ],
    )
    run_dir = tmp_path / "run"
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    line = next(ln for ln in result.output.splitlines() if "no space left" in ln)
    assert (
        f"no space left on device while writing {run_dir / 'checkpoints' / 'step-00000004.pt'}"
        f"; the last complete checkpoint is {run_dir / 'checkpoints' / 'step-00000002.pt'}; "
        f"free space and run `flowkit run --resume {run_dir}`"
    ) in line
    assert not list(run_dir.rglob("*.tmp"))
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000002.pt"]


def test_a_full_disk_wrapped_by_a_library_is_still_recognised(tmp_path: Path):
    """torch wraps the OSError of a failed write in a RuntimeError; it is still a full disk."""
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def write(fh):
        fh.write(b"partial")
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    with pytest.raises(DiskFullError, match=f"no space left on device while writing {target}"):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("kind", ["image", "2-d"])
def test_a_full_disk_leaves_no_partial_figure(tmp_path: Path, monkeypatch, kind):
    from matplotlib.figure import Figure
    from PIL import Image

    from flowkit.figures import plot_2d, save_image_grid

    def partial_then_full(self, fp, *args, **kwargs):
        with open(fp, "wb") if isinstance(fp, (str, Path)) else _keep_open(fp) as fh:
            fh.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "figures" / "figure.png"
    if kind == "2-d":
        flowkit.train(config("train.steps=1"), tmp_path / "run", progress=False, log=lambda _: None)
        run = load_run(tmp_path / "run")
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {path}"):
        if kind == "image":
            monkeypatch.setattr(Image.Image, "save", partial_then_full)
            save_image_grid(torch.rand(4, 1, 8, 8), path)
        else:
            monkeypatch.setattr(Figure, "savefig", partial_then_full)
            plot_2d(run.model, run.load_data(), path, n_samples=64, resolution=8)
    assert not path.exists() and not list(path.parent.iterdir())  # no partial file, no temporary


class _keep_open:
    """A context manager over an open file object that leaves it open."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self.fh

    def __exit__(self, *exc) -> None:
        return None


def test_an_optimiser_state_of_another_layout_resumes_with_fresh_moments(tmp_path: Path):
    """A checkpoint whose optimiser grouped the parameters into more tensors (an older flowkit's
    conditional MADE: 8 tensors, now 6) resumes: the model exactly, the moments restarted."""
    run_dir = tmp_path / "run"
    flowkit.train(config("train.steps=4"), run_dir, progress=False, log=lambda _: None)
    path = list_checkpoints(run_dir)[-1]
    state = torch.load(path, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = [*group["params"], max(group["params"]) + 1]  # one tensor more than now
    torch.save(state, path)
    messages: list[str] = []
    summary = resume(run_dir, config("train.steps=6"), progress=False, log=messages.append)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert any("the optimiser's moments restart" in m for m in messages), messages
