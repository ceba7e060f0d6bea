"""Every flow family trains from the command line by name, with no other change to the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowkit.cli.main import cli


@pytest.mark.parametrize(
    ("transform", "data", "extra"),
    [
        ("glow", "digits", ["transform.num_steps=1", "transform.hidden=8"]),
        ("maf", "moons", ["transform.hidden=16"]),
        ("iaf", "moons", ["transform.hidden=16"]),
        ("nflows-rq-coupling", "moons", ["transform.hidden=16"]),
        ("nflows-maf", "moons", ["transform.hidden=16"]),
        ("nflows-realnvp", "moons", ["transform.hidden=16"]),
        ("nice", "digits", ["transform.hidden=16", "transform.num_hidden=1"]),
    ],
)
def test_family_trains_by_name(tmp_path: Path, transform: str, data: str, extra: list[str]):
    sets = [
        f"--set={s}"
        for s in [*extra, "train.steps=3", "data.n_train=256", "data.n_test=64"]
        if data == "moons" or not s.startswith("data.")
    ]
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--transform",
            transform,
            "--data",
            data,
            *sets,
            "--out",
            str(tmp_path),
            "--name",
            "r",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["transform"] == transform
