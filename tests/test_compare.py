"""``flowkit compare``: curves of several runs in one PNG, a table of final metrics, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

import flowkit
from flowkit.cli.main import cli
from flowkit.compare import compare_runs, read_run_history
from flowkit.config import dumps, load_config
from flowkit.errors import CheckpointError


def fake_run(
    folder: Path,
    data: str = "moons",
    *,
    overrides: tuple[str, ...] = (),
    steps: int = 40,
    bpd: bool = False,
    finished: bool = True,
    scale: float = 1.0,
) -> Path:
    """A run folder as the trainer writes it (config.toml, metrics.jsonl, summary.json), without
    training: the curves are made up, the config is a real resolved one."""
    folder.mkdir(parents=True)
    config = load_config(None, list(overrides), data=data)
    (folder / "config.toml").write_text(dumps(config))
    lines = []
    for step in range(5, steps + 1, 5):
        record: dict[str, Any] = {"step": step, "nll_per_dim": scale * (2.0 - step / 100), "lr": 1e-3}
        if bpd:
            record["bpd"] = record["nll_per_dim"] * 1.44 + 8
        lines.append(record)
        if step % 20 == 0:
            evaluation = {"step": step, "kind": "eval", "test_nll": scale * (4.0 - step / 50)}
            if bpd:
                evaluation["test_bpd"] = evaluation["test_nll"] + 4
            lines.append(evaluation)
    if finished:
        final = {
            "step": steps,
            "kind": "final",
            "test_nll": scale * 3.0,
            **({"test_bpd": 7.0} if bpd else {}),
        }
        lines.append(final)
        summary = {
            "status": "completed",
            "steps": steps,
            "test_nll": scale * 3.0,
            "transform": "realnvp",
            "objective": "mle",
            "data": data,
            "train_time_s": 1.25,
            **({"test_bpd": 7.0} if bpd else {}),
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    lines.append("{torn line")
    (folder / "metrics.jsonl").write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines)
    )
    return folder


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_compare_writes_one_png_and_a_table_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = fake_run(tmp_path / "runs" / "a")
    b = fake_run(tmp_path / "runs" / "b", scale=0.9)
    c = fake_run(tmp_path / "runs" / "c", finished=False, steps=20)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), str(c)])
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "compare.png") == (1200, 400)  # one data: one row of two panels
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "run",
        "data",
        "transform",
        "objective",
        "steps",
        "status",
        "test_nll",
        "time_s",
    ]
    assert lines[2].split() == ["a", "moons", "realnvp", "mle", "40", "completed", "3.0000", "1.2"]
    assert lines[3].split()[-2] == "2.7000"
    assert lines[4].split() == ["c", "moons", "realnvp", "mle", "20", "incomplete", "-", "-"]
    assert lines[-1] == "figure: compare.png"
    assert "note" not in result.output


def test_runs_of_different_data_get_separate_rows_or_one_axis_with_force(tmp_path: Path) -> None:
    moons = fake_run(tmp_path / "moons")
    circles = fake_run(tmp_path / "circles", "circles")
    small = fake_run(tmp_path / "small", overrides=("data.n_train=500",))
    comparison = compare_runs([moons, circles, small], tmp_path / "out" / "cmp.png")
    assert [[r.label for r in g] for g in comparison.groups] == [["moons"], ["circles"], ["small"]]
    assert png_size(tmp_path / "out" / "cmp.png") == (1200, 1200)  # a row per data
    (note,) = comparison.notes
    assert note.startswith("note: the runs use different data")
    assert "circles: circles" in note and "small: moons (n_train=500)" in note and "--force" in note

    result = CliRunner().invoke(
        cli, ["compare", str(moons), str(circles), "--force", "--out", str(tmp_path / "forced.png")]
    )
    assert result.exit_code == 0, result.output
    assert "warning: the runs use different data" in result.output and "not comparable" in result.output
    assert png_size(tmp_path / "forced.png") == (1200, 400)  # one axis


def test_runs_that_differ_only_in_preprocessing_are_comparable(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", bpd=True)
    b = fake_run(tmp_path / "b", overrides=("data.preprocess=none",), bpd=True)
    comparison = compare_runs([a, b], tmp_path / "cmp.png")
    assert len(comparison.groups) == 1 and not comparison.notes
    assert "test_bpd" in comparison.columns


def test_folders_that_are_not_runs_are_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    for bad, says in [
        (tmp_path / "empty", "is not a flowkit run folder (no config.toml)"),
        (tmp_path / "missing", "it does not exist"),
        (run / "metrics.jsonl", "a file"),
    ]:
        result = CliRunner().invoke(cli, ["compare", str(run), str(bad), "--out", str(tmp_path / "x.png")])
        assert result.exit_code == 1
        assert str(bad) in result.output and says in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.toml").write_text("[train\n")
    with pytest.raises(CheckpointError, match="not valid TOML"):
        read_run_history(tmp_path / "broken")
    result = CliRunner().invoke(cli, ["compare"])
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_compare_reads_a_real_run(tmp_path: Path) -> None:
    config = load_config(
        "realnvp-moons",
        [
            "data.n_train=128",
            "data.n_test=64",
            "transform.num_layers=2",
            "transform.hidden=8",
            "train.batch_size=32",
            "train.steps=4",
            "train.log_every=1",
            "train.eval_every=2",
            "train.sample_every=0",
        ],
    )
    flowkit.train(config, tmp_path / "real", progress=False, log=lambda _: None)
    history = read_run_history(tmp_path / "real")
    assert [r["step"] for r in history.train] == [1, 2, 3, 4]
    assert [r["step"] for r in history.evals] == [2] and history.final is not None
    comparison = compare_runs([tmp_path / "real", fake_run(tmp_path / "made-up")], tmp_path / "cmp.png")
    assert comparison.rows[0][:6] == ["real", "moons", "realnvp", "mle", "4", "completed"]
