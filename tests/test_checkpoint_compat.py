"""Checkpoints written before this release still load and give the same log-densities."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from flowkit.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints-0.1.0"
RUNS = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.toml").is_file())


def test_every_fixture_is_here() -> None:
    assert RUNS == ["glow-digits", "maf-moons", "realnvp-labels-digits", "realnvp-moons"]


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_loads_with_the_same_log_prob(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)  # load_run may not write, but keep fixtures pristine
    run = load_run(run_dir, device="cpu")
    ref = torch.load(run_dir / "reference.pt", weights_only=True)
    with torch.no_grad():
        log_prob = run.model.double().log_prob(ref["x"], ref["context"])
    torch.testing.assert_close(log_prob, ref["log_prob"], atol=1e-6, rtol=1e-9)


def test_an_old_run_resumes(tmp_path: Path) -> None:
    """A run from before checkpoint fingerprints and the [embedding] section resumes."""
    import flowkit
    import flowkit.trainer

    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURES / "realnvp-moons", run_dir)
    requested = flowkit.load_config(run_dir / "config.toml", ["train.steps=32"])
    summary = flowkit.trainer.resume(run_dir, requested, progress=False, log=lambda _: None)
    assert summary["status"] == "completed" and summary["steps"] == 32
