"""GRN through the command line: the default GRN run, presets, and plugin independence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowkit.cli.main import cli
from flowkit.config import load_config

TINY_REVNET = ["--set", "transform.widths=[4, 8, 8]", "--set", "transform.blocks_per_stage=1"]
TINY_REALNVP = ["--set", "transform.hidden=4", "--set", "transform.num_blocks=1"]


def run(tmp_path: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            *args,
            "--set",
            "train.steps=3",
            "--set",
            "train.init_examples=400",
            "--out",
            str(tmp_path),
            "--name",
            "r",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads((tmp_path / "r" / "summary.json").read_text())


def test_revnet_ot_on_the_default_dataset_writes_grn_figures(tmp_path: Path):
    summary = run(tmp_path, "--transform", "revnet", "--objective", "ot", *TINY_REVNET)
    assert summary["prior"] == "class-gaussian" and summary["data"] == "digits"
    for name in ("class-samples.png", "traversals.png", "reconstructions.png", "samples.png"):
        assert (tmp_path / "r" / name).is_file(), name
    config = (tmp_path / "r" / "config.toml").read_text()
    assert 'sampler = "class-balanced"' in config


@pytest.mark.parametrize(
    ("transform", "objective", "extra"),
    [
        ("revnet", "mle", TINY_REVNET),
        ("realnvp", "ot", TINY_REALNVP),
        ("realnvp", "mle+0.1*ot", TINY_REALNVP),
        ("revnet", "adversarial", TINY_REVNET),
    ],
)
def test_transforms_and_objectives_are_independent(tmp_path: Path, transform, objective, extra):
    extra = [*extra, "--set", "prior.num_selected=8"] if objective == "adversarial" else extra
    summary = run(tmp_path, "--transform", transform, "--objective", objective, *extra)
    assert summary["status"] == "completed"


def test_weighted_sum_on_the_command_line_logs_both_terms(tmp_path: Path):
    run(
        tmp_path,
        "--transform",
        "realnvp",
        "--objective",
        "mle + 0.1*ot",
        *TINY_REALNVP,
        "--set",
        "objective.ot.solver=lsa",
        "--set",
        "train.log_every=1",
    )
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("mle/nll_per_dim" in r and "ot/ot" in r for r in records)


@pytest.mark.parametrize("preset", ["grn-ot-digits", "grn-ot-mnist", "grn-adv-mnist", "grn-adv-celeba"])
def test_grn_presets_resolve(preset):
    cfg = load_config(preset)
    assert cfg["transform"]["name"] == "revnet"


def test_padded_model_says_its_likelihood_is_not_a_data_density(tmp_path: Path):
    summary = run(
        tmp_path, "--transform", "revnet", "--objective", "mle", *TINY_REVNET, "--set", "transform.pad_to=16"
    )
    assert summary["exact_density"] is False
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "not densities of the data" in result.output


def test_eval_keeps_both_class_accuracies(tmp_path: Path):
    """--sample-accuracy (N per class) and --samples (N in all) each keep their own figure."""
    run(tmp_path, "--transform", "revnet", "--objective", "ot", *TINY_REVNET)
    args = ["eval", str(tmp_path / "r"), "--sample-accuracy", "3", "--samples", "40"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    written = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert 0.0 <= written["sample_accuracy"] <= 1.0
    assert 0.0 <= written["samples_class_accuracy"] <= 1.0
    assert "precision" in written
