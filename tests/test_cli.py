"""End-to-end command-line tests on tiny budgets: run, list, sample, eval, resume, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit.cli.main import cli

TINY_MOONS = [
    "--data",
    "moons",
    "--set",
    "data.n_train=512",
    "--set",
    "data.n_test=256",
    "--set",
    "transform.num_layers=2",
    "--set",
    "transform.hidden=16",
    "--set",
    "train.batch_size=64",
    "--quiet",
]
TINY_DIGITS = [
    "--data",
    "digits",
    "--set",
    "transform.hidden=4",
    "--set",
    "transform.num_blocks=1",
    "--set",
    "train.batch_size=32",
    "--set",
    "eval.n_samples=16",
    "--quiet",
]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def user_error(result, *needles: str) -> None:
    """Non-zero exit, a message naming the problem, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    ok(
        invoke(
            "run",
            "--transform",
            "realnvp",
            "--objective",
            "mle",
            *TINY_MOONS,
            "--set",
            "train.steps=40",
            "--set",
            "train.checkpoint_every=20",
            "--set",
            "train.eval_every=20",
            "--set",
            "train.sample_every=20",
            "--out",
            str(out),
            "--name",
            "moons",
        )
    )
    return out / "moons"


def test_list_shows_every_kind_with_provider():
    result = invoke("list")
    ok(result)
    for name in (
        "realnvp",
        "nice",
        "affine-coupling",
        "gaussian",
        "logistic",
        "mle",
        "moons",
        "digits",
        "mnist",
        "realnvp-digits",
    ):
        assert name in result.output
    assert f"[torch-flowkit {flowkit.__version__}]" in result.output
    assert "Real NVP" in result.output or "Real-NVP" in result.output


def test_list_one_kind_by_its_plural_including_elementwise_maps():
    result = invoke("list", "elementwise")
    ok(result)
    assert result.output.startswith("elementwise maps (flowkit.elementwise)")
    for name in ("additive", "affine", "rq-spline", "volume-preserving-affine"):
        assert f"  {name} " in result.output
    assert "transforms (" not in result.output
    embeddings = invoke("list", "embeddings")
    ok(embeddings)
    assert embeddings.output.startswith("embeddings (flowkit.embeddings)")


def test_list_params():
    result = invoke("list", "transforms", "--params")
    ok(result)
    assert "num_layers: int ≥ 1 = 8" in result.output  # the declared range of the parameter
    assert "tail_bound: float > 0 = 5.0" in result.output
    assert "kernel_size: int ≥ 1, odd = 3" in result.output


def test_list_config_shows_the_keys_with_their_ranges():
    result = invoke("list", "config")
    ok(result)
    for line in (
        "steps: int ≥ 1 = 2000",
        "lr: float > 0 = 0.001",
        "betas: tuple[float in [0, 1), float in [0, 1)] = (0.9, 0.999)",
        "seed: int in [0, 4294967295] = 0",
        "temperature: float > 0 = 1.0",
        "alpha: float in [0, 0.5) = 0.05",
    ):
        assert line in result.output, line


def test_out_of_range_values_stop_a_dry_run_with_one_line():
    user_error(
        invoke("run", "--config", "realnvp-moons", "--set", "train.lr=0", "--dry-run"),
        "[train] lr must be greater than 0, got 0.0; the default is 0.001.",
    )
    user_error(
        invoke("run", "--config", "realnvp-moons", "--set", "train.max_minutes=inf", "--dry-run"),
        "[train] max_minutes must be a finite number at least 0",
    )
    user_error(
        invoke("run", "--config", "realnvp-moons", "--set", "transform.num_layers=0", "--dry-run"),
        "[transform] realnvp num_layers must be at least 1, got 0",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sample", "-n", "0"], "0 is not in the range x>=1"),
        (["sample", "-T", "0"], "0.0 is not in the range x>0"),
        (["sample", "-T", "-1.5"], "-1.5 is not in the range x>0"),
        (["sample", "-T", "nan"], "nan is not a finite number"),
        (["sample", "-T", "inf"], "inf is not a finite number"),
        (["sample", "--label", "-1"], "-1 is not in the range x>=0"),
        (["sample", "--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
        (["eval", "--max-examples", "-1"], "-1 is not in the range x>=0"),
        (["eval", "--sample-accuracy", "-2"], "-2 is not in the range x>=0"),
    ],
)
def test_cli_numbers_are_checked_by_the_option_parser(tmp_path: Path, args, needle):
    """Out of range: a usage error (exit 2) naming the option, before the run is even read."""
    command, *options = args
    result = invoke(command, str(tmp_path), *options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"Invalid value for '{options[0]}'" in result.output or "Invalid value for '--" in result.output, (
        result.output
    )
    assert needle in result.output, result.output


def test_run_writes_a_complete_run_folder(moons_run: Path):
    for name in ("config.toml", "metrics.jsonl", "summary.json", "samples.png"):
        assert (moons_run / name).is_file(), name
    assert sorted(p.name for p in (moons_run / "checkpoints").iterdir()) == [
        "step-00000020.pt",
        "step-00000040.pt",
    ]
    assert (moons_run / "samples" / "step-00000020.png").is_file()
    summary = json.loads((moons_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert torch.isfinite(torch.tensor(summary["test_nll"]))
    records = [json.loads(line) for line in (moons_run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "eval" for r in records)
    assert any("nll_per_dim" in r for r in records)


def test_eval_reproduces_summary(moons_run: Path):
    result = invoke("eval", str(moons_run))
    ok(result)
    summary = json.loads((moons_run / "summary.json").read_text())
    evaluated = json.loads((moons_run / "eval.json").read_text())
    assert evaluated["test_nll"] == pytest.approx(summary["test_nll"], rel=1e-5)


def test_sample_label_on_unlabelled_data_says_there_are_no_classes(moons_run: Path, tmp_path: Path):
    user_error(
        invoke("sample", str(moons_run), "--label", "3", "--out", str(tmp_path / "s.png")),
        "has no class labels",
        "leave out --label",
    )


def test_sample_png_and_tensor(moons_run: Path, tmp_path: Path):
    ok(invoke("sample", str(moons_run), "-n", "64", "--out", str(tmp_path / "s.png")))
    assert (tmp_path / "s.png").stat().st_size > 0
    ok(invoke("sample", str(moons_run), "-n", "10", "--out", str(tmp_path / "s.pt")))
    assert torch.load(tmp_path / "s.pt").shape == (10, 2)


def test_resume_continues_and_matches_uninterrupted(tmp_path: Path):
    common = ["run", *TINY_MOONS, "--set", "train.checkpoint_every=10", "--out", str(tmp_path)]
    ok(invoke(*common, "--set", "train.steps=20", "--name", "straight"))
    ok(invoke(*common, "--set", "train.steps=10", "--name", "cut"))
    ok(invoke("run", "--resume", str(tmp_path / "cut"), "--set", "train.steps=20", "--quiet"))
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert b["steps"] == 20
    assert b["test_nll"] == pytest.approx(a["test_nll"], rel=1e-4, abs=1e-4)


def test_resume_with_conflicting_config_is_refused(moons_run: Path):
    """Model and data keys, and keys that shape the data stream or the optimiser's state, cannot
    change on resume; the message says why and which keys may."""
    user_error(
        invoke("run", "--resume", str(moons_run), "--set", "transform.hidden=32"),
        "conflicts",
        "transform.hidden: run has 16, given 32",
        "define what the checkpoint's weights mean",
        "cannot change on resume",
        "Keys that may change",
        "lr",
        "start a new run",
    )
    user_error(
        invoke("run", "--resume", str(moons_run), "--set", "data.n_train=100"),
        "data.n_train",
        "define what the checkpoint's weights mean",
    )
    user_error(
        invoke("run", "--resume", str(moons_run), "--set", "train.batch_size=7"),
        "train.batch_size",
        "data stream or the optimiser's saved state",
    )
    user_error(invoke("run", "--resume", str(moons_run), "--transform", "nice"), "conflicts")


def test_image_run_sample_and_eval(tmp_path: Path):
    ok(
        invoke(
            "run",
            "--transform",
            "realnvp",
            *TINY_DIGITS,
            "--set",
            "train.steps=6",
            "--out",
            str(tmp_path),
            "--name",
            "digits",
        )
    )
    run = tmp_path / "digits"
    for name in ("samples.png", "traversals.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["test_bpd"] < 20
    ok(invoke("sample", str(run), "-n", "16", "--out", str(tmp_path / "grid.png")))
    ok(invoke("sample", str(run), "-n", "4", "--label", "3", "--out", str(tmp_path / "g3.png")))
    result = invoke("eval", str(run))
    ok(result)
    assert "test_bpd" in result.output


def test_unknown_plugin_is_a_clean_error():
    user_error(
        invoke("run", "--transform", "realnpv", "--dry-run"), "Did you mean 'realnvp'", "Known transforms"
    )


def test_bad_config_value_is_a_clean_error():
    user_error(invoke("run", "--set", "train.steps=many", "--dry-run"), "must be an integer")


def test_shape_mismatch_is_a_clean_error(tmp_path: Path):
    # an MLP coupling cannot take 1x8x8 images
    user_error(
        invoke(
            "run",
            "--transform",
            "affine-coupling",
            "--set",
            "transform.conditioner=mlp",
            "--data",
            "digits",
            "--dry-run",
        ),
        "(1, 8, 8)",
    )
    result = invoke(
        "run",
        "--transform",
        "affine-coupling",
        "--set",
        "transform.conditioner=mlp",
        "--data",
        "digits",
        "--set",
        "train.steps=1",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    user_error(result, "(1, 8, 8)")


def test_missing_data_folder_is_a_clean_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("FLOWKIT_DATA", raising=False)
    result = invoke(
        "run",
        "--data",
        "mnist",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--set",
        "train.steps=1",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    user_error(result, "train-images-idx3-ubyte.gz", "--data-dir")


def test_corrupt_checkpoint_is_a_clean_error(moons_run: Path, tmp_path: Path):
    bad = tmp_path / "step-00000001.pt"
    good = sorted((moons_run / "checkpoints").iterdir())[-1]
    bad.write_bytes(good.read_bytes()[:1000])  # truncated
    user_error(invoke("sample", str(moons_run), "--checkpoint", str(bad)), "truncated or corrupt")
    user_error(invoke("eval", str(moons_run), "--checkpoint", str(bad)), "truncated or corrupt")


def test_not_a_run_folder(tmp_path: Path):
    user_error(invoke("eval", str(tmp_path)), "not a flowkit run folder")


def test_dry_run_prints_resolved_toml():
    result = invoke("run", "--config", "realnvp-moons", "--set", "train.steps=7", "--dry-run")
    ok(result)
    assert "steps = 7" in result.output and "[transform]" in result.output
