"""Validation splits, early stopping (``train.patience``), resume, and the sample/eval commands on
conditional ``table`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit import trainer as trainer_module
from flowkit.checkpoint import load_checkpoint
from flowkit.cli.main import cli
from flowkit.errors import ConfigError
from flowkit.runs import list_checkpoints

TINY = [
    "transform.num_layers=2",
    "transform.hidden=8",
    "train.batch_size=32",
    "train.sample_every=0",
    "train.checkpoint_every=0",
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """A 2-column table without context and a 3+1-column table whose context sets the mean."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    plain = folder / "plain.csv"
    np.savetxt(
        plain, rng.normal(size=(200, 2)) * [1.0, 3.0] + [0.0, 10.0], delimiter=",", header="a,b", comments=""
    )
    c = rng.uniform(-1.0, 1.0, size=(200, 1))
    x = np.concatenate([3.0 * c, -c, c * c], axis=1) + 0.1 * rng.normal(size=(200, 3))
    conditional = folder / "conditional.csv"
    np.savetxt(conditional, np.concatenate([x, c], axis=1), delimiter=",")
    return {"plain": plain, "conditional": conditional}


def config(table: Path, *overrides: str, transform: str = "maf") -> dict:
    return flowkit.load_config(
        None, [f"data.path={table}", *TINY, *overrides], transform=transform, data="table"
    )


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.fixture
def scripted_val(monkeypatch):
    """Replace the validation NLL by a script (test NLLs stay real) to make stopping exact."""
    script: list[float] = []
    real = trainer_module.evaluate_nll

    def fake(model, data, *, split="test", **kwargs):
        out = real(model, data, split=split, **kwargs)
        if split == "val":
            out["val_nll"] = script.pop(0)
        return out

    monkeypatch.setattr(trainer_module, "evaluate_nll", fake)
    return script


def test_early_stopping_stops_and_restores_the_best_model(tables, tmp_path: Path, scripted_val):
    scripted_val.extend([5.0, 4.0, 3.0, 3.5, 3.2, 9.0])
    cfg = config(
        tables["plain"], "train.steps=100", "train.eval_every=5", "train.patience=2", "train.lr=0.01"
    )
    messages: list[str] = []
    summary = flowkit.train(cfg, tmp_path / "run", progress=False, log=messages.append)
    run_dir = tmp_path / "run"
    assert any("early stopping at step 25: best val NLL 3.0000 at step 15" in m for m in messages)
    assert summary["steps"] == 25 and summary["stopped_early"] is True
    assert summary["best_step"] == 15 and summary["best_val_nll"] == 3.0
    assert [r["step"] for r in records(run_dir, "eval")] == [5, 10, 15, 20, 25]
    assert "val_nll" in records(run_dir, "eval")[0]
    # best.pt holds step 15; the final checkpoint's model is the best one, its training state the last
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    final = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert best["step"] == 15 and final["step"] == 25 and final["best_step"] == 15
    for key, value in best["model"].items():
        assert torch.equal(final["model"][key], value)
    assert any(not torch.equal(final["last"]["model"][k], v) for k, v in best["model"].items())
    # the summary's test NLL is the best model's: flowkit eval and load_run agree
    run = flowkit.load_run(run_dir)
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in best["model"].items())
    result = CliRunner().invoke(cli, ["eval", str(run_dir)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["test_nll"] == pytest.approx(summary["test_nll"], abs=1e-6)


def test_best_model_of_a_real_run_is_the_lowest_validation_nll(tables, tmp_path: Path):
    cfg = config(
        tables["plain"], "train.steps=60", "train.eval_every=10", "train.patience=3", "train.lr=0.01"
    )
    summary = flowkit.train(cfg, tmp_path / "run", progress=False)
    evals = records(tmp_path / "run", "eval")
    best = min(evals, key=lambda r: r["val_nll"])
    assert evals[-1]["step"] == summary["steps"]  # the last step is evaluated too
    assert summary["best_step"] == best["step"]
    assert summary["best_val_nll"] == pytest.approx(best["val_nll"])
    run = flowkit.load_run(tmp_path / "run")
    data = run.load_data()
    again = flowkit.metrics.evaluate_nll(run.model, data, split="val", dequantize_data=False)
    assert again["val_nll"] == pytest.approx(best["val_nll"], abs=1e-5)


def test_resume_keeps_the_early_stopping_state(tables, tmp_path: Path, scripted_val):
    # val NLL at steps 10, 20, 30, 40: the best is step 20, earlier than where the cut run ends
    scripted_val.extend([5.0, 3.0, 4.0, 3.5] * 2)
    overrides = ["train.eval_every=10", "train.patience=3", "train.lr=0.01", "train.checkpoint_every=10"]
    straight = flowkit.train(
        config(tables["plain"], "train.steps=40", *overrides), tmp_path / "straight", progress=False
    )
    flowkit.train(config(tables["plain"], "train.steps=30", *overrides), tmp_path / "cut", progress=False)
    cut_final = load_checkpoint(list_checkpoints(tmp_path / "cut")[-1])
    assert cut_final["step"] == 30 and cut_final["best_step"] == 20 and "last" in cut_final
    from flowkit.trainer import resume

    resumed = resume(tmp_path / "cut", config(tables["plain"], "train.steps=40", *overrides), progress=False)
    for key in ("steps", "best_step", "best_val_nll", "stopped_early", "test_nll"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key
    assert resumed["best_step"] == 20
    assert records(tmp_path / "cut", "eval") == records(tmp_path / "straight", "eval")
    # training went on from the last weights of step 30, not from the best ones
    a = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1])["last"]["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "cut")[-1])["last"]["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resuming_a_run_that_stopped_early_trains_no_further(tables, tmp_path: Path, scripted_val):
    scripted_val.extend([2.0, 3.0, 4.0])
    cfg = config(tables["plain"], "train.steps=50", "train.eval_every=5", "train.patience=2")
    flowkit.train(cfg, tmp_path / "run", progress=False)
    from flowkit.trainer import resume

    messages: list[str] = []
    summary = resume(tmp_path / "run", progress=False, log=messages.append)
    assert summary["steps"] == 15 and summary["stopped_early"] and summary["best_step"] == 5
    assert any("raise train.patience to train on" in m for m in messages)


def test_patience_needs_a_validation_split(tables, tmp_path: Path):
    cfg = config(tables["plain"], "train.patience=3", "data.val_fraction=0.0")
    with pytest.raises(
        ConfigError,
        match=r"has no validation split; use a dataset with one "
        r"\(e.g. data = \"table\" with data.val_fraction > 0\)",
    ):
        flowkit.train(cfg, tmp_path / "run", progress=False)
    moons = flowkit.load_config("realnvp-moons", ["train.patience=3"])
    with pytest.raises(ConfigError, match="'moons' has no validation split"):
        flowkit.train(moons, tmp_path / "moons", progress=False)
    cfg = config(tables["plain"], "train.patience=3", "train.eval_every=0")
    with pytest.raises(ConfigError, match=r"set train\.eval_every"):
        flowkit.train(cfg, tmp_path / "run2", progress=False)


def test_without_patience_nothing_changes(tables, tmp_path: Path):
    summary = flowkit.train(
        config(tables["plain"], "train.steps=20", "train.eval_every=10", "data.val_fraction=0.0"),
        tmp_path / "run",
        progress=False,
    )
    assert "best_step" not in summary and "stopped_early" not in summary
    assert [r["step"] for r in records(tmp_path / "run", "eval")] == [10]  # not the last step
    assert "test_nll" in records(tmp_path / "run", "eval")[0]
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    # with a validation split, periodic evaluation reads it
    flowkit.train(
        config(tables["plain"], "train.steps=20", "train.eval_every=10"), tmp_path / "val", progress=False
    )
    assert "val_nll" in records(tmp_path / "val", "eval")[0]


# -- flowkit sample / eval on a conditional run ----------------------------------------------------
@pytest.fixture(scope="module")
def conditional_run(tables, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "conditional"
    cfg = config(
        tables["conditional"],
        "data.context_columns=[-1]",
        "train.steps=150",
        "train.eval_every=50",
        "train.patience=3",
        "train.lr=0.01",
    )
    flowkit.train(cfg, run_dir, progress=False)
    return run_dir


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def test_sample_with_a_context(conditional_run: Path, tmp_path: Path):
    out = tmp_path / "s.npy"
    result = invoke("sample", str(conditional_run), "--context", "0.5", "-n", "300", "--out", str(out))
    assert result.exit_code == 0, result.output
    low = np.load(out)
    assert low.shape == (300, 3)
    ok = invoke(
        "sample", str(conditional_run), "--context", "-0.5", "-n", "300", "--out", str(tmp_path / "s.csv")
    )
    assert ok.exit_code == 0, ok.output
    high = np.loadtxt(tmp_path / "s.csv", delimiter=",")
    assert high.shape == (300, 3)
    # x0 ≈ 3c: the context moves the samples (in the data's units)
    assert low[:, 0].mean() - high[:, 0].mean() > 1.5
    contexts = tmp_path / "c.npy"
    np.save(contexts, np.array([[-1.0], [0.0], [1.0], [0.2]]))
    result = invoke(
        "sample", str(conditional_run), "--context", str(contexts), "--out", str(tmp_path / "per-row.pt")
    )
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "per-row.pt").shape == (4, 3)


def user_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for needle in needles:
        assert needle in result.output, result.output


def test_sample_context_errors(conditional_run: Path, tables, tmp_path: Path):
    run = str(conditional_run)
    user_error(
        invoke("sample", run, "--context", "0.1,0.2", "--out", str(tmp_path / "a.npy")),
        "--context has 2 value(s) but the model's context has 1 feature(s)",
    )
    user_error(
        invoke("sample", run, "--out", str(tmp_path / "a.npy")),
        "conditional on a context of shape (1,)",
        "--context",
    )
    user_error(
        invoke("sample", run, "--context", "abc", "--out", str(tmp_path / "a.npy")), "comma-separated numbers"
    )
    np.save(tmp_path / "c.npy", np.zeros((4, 1)))
    user_error(
        invoke(
            "sample", run, "--context", str(tmp_path / "c.npy"), "-n", "3", "--out", str(tmp_path / "a.npy")
        ),
        "holds 4 contexts",
        "asks for 3 samples",
    )
    user_error(
        invoke("sample", run, "--context", "0.1", "--out", str(tmp_path / "a.txt")),
        "--out must end in .png, .pt, .npy or .csv",
    )
    user_error(
        invoke("sample", run, "--context", "0.1", "--out", str(tmp_path / "a.png")),
        "cannot draw data of shape (3,)",
    )
    plain = tmp_path / "plain"
    flowkit.train(config(tables["plain"], "train.steps=4"), plain, progress=False)
    user_error(
        invoke("sample", str(plain), "--context", "0.1", "--out", str(tmp_path / "a.npy")),
        "has no real-valued context",
        "drop --context",
    )


def test_eval_on_the_validation_split(conditional_run: Path, tmp_path: Path):
    result = invoke("eval", str(conditional_run), "--split", "val")
    assert result.exit_code == 0, result.output
    summary = json.loads((conditional_run / "summary.json").read_text())
    assert json.loads((conditional_run / "eval.json").read_text())["val_nll"] == pytest.approx(
        summary["best_val_nll"], abs=1e-5
    )


def test_eval_scores_samples_drawn_at_the_test_contexts(conditional_run: Path):
    result = invoke("eval", str(conditional_run), "--samples", "200")
    assert result.exit_code == 0, result.output
    scores = json.loads((conditional_run / "eval.json").read_text())
    # each sample is drawn with its test example's context, so a fitted p(x | c) matches the test
    # data's joint spread; samples ignoring the context would miss the x0 ≈ 3c trend
    n = int(scores["sample_examples"])  # min(200, size of the test split)
    assert n >= 10
    assert scores["precision"] > 0.6 and scores["recall"] > 0.6, scores
    assert f"samples ({n} vs test data): precision" in result.output


def test_sample_scores_of_a_context_model_see_the_context(conditional_run: Path, monkeypatch):
    """Samples drawn at the wrong contexts have the right marginal but the wrong joint (x, c):
    the scores must drop, so they judge p(x | c), not p(x)."""
    import flowkit.metrics.frechet as frechet  # draws the samples of every feature-space metric
    import flowkit.metrics.variety as variety
    from flowkit.runs import load_run

    run = load_run(conditional_run)
    data = run.load_data()
    right = variety.sample_metrics(run.model, data, n=200)
    draw = frechet.draw_samples

    def at_wrong_contexts(model, n, labels, **kw):
        return draw(model, n, labels.flip(0), **kw)

    monkeypatch.setattr(frechet, "draw_samples", at_wrong_contexts)
    wrong = variety.sample_metrics(run.model, data, n=200)
    assert right["precision"] - wrong["precision"] > 0.2, (right, wrong)
