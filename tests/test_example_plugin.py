"""The example third-party plugin (docs/examples/flowkit-example-plugin) works end to end.

It is a separately installed distribution that registers the ``sinh-arcsinh`` transform through
the ``flowkit.transforms`` entry-point group, exactly as any third-party package would; these
tests prove that such a package is discovered, listed, checked and trained with no change to
flowkit. ``make test`` installs it; without it the tests are skipped with the install command.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowkit import registry
from flowkit.cli.main import cli
from flowkit.testing import check_plugin

NAME = "sinh-arcsinh"
DISTRIBUTION = "flowkit-example-plugin"

try:
    metadata.distribution(DISTRIBUTION)
except metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"{DISTRIBUTION} is not installed: pip install -e docs/examples/flowkit-example-plugin",
        allow_module_level=True,
    )


def test_discovered_with_provenance() -> None:
    registry.transforms.refresh()
    assert NAME in registry.transforms.names()
    entry = registry.transforms.entry(NAME)
    assert entry.distribution == DISTRIBUTION
    assert entry.version == metadata.version(DISTRIBUTION)
    assert entry.target == "flowkit_example.sinh_arcsinh:SinhArcsinh"


def test_shown_by_flowkit_list() -> None:
    result = CliRunner().invoke(cli, ["list", "transforms"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.strip().startswith(NAME))
    assert "sinh-arcsinh flow" in line
    assert f"[{DISTRIBUTION} " in line


def test_parameters_are_listed() -> None:
    result = CliRunner().invoke(cli, ["list", "transforms", "--params"])
    assert result.exit_code == 0, result.output
    assert "min_tailweight: float in (0, 1) = 0.1" in result.output
    assert "init_scale: float ≥ 0 = 0.0" in result.output


@pytest.mark.parametrize("event_shape", [(5,), (2, 4, 4)], ids=["vector", "image"])
def test_passes_the_conformance_checks(event_shape: tuple[int, ...]) -> None:
    check_plugin(NAME, event_shape)
    check_plugin(NAME, event_shape, {"min_tailweight": 0.5, "init_scale": 0.3})


def test_flowkit_check_command() -> None:
    result = CliRunner().invoke(cli, ["check", NAME])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    assert f"checks passed for '{NAME}'" in result.output


def test_trains_through_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--transform",
            NAME,
            "--data",
            "moons",
            "--set",
            "train.steps=20",
            "--set",
            "data.n_train=500",
            "--set",
            "data.n_test=200",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(summary["test_nll"])
    config = (run_dir / "config.toml").read_text()
    assert f'name = "{NAME}"' in config
    assert "min_tailweight = 0.1" in config  # the plugin's defaults are recorded in the run
    assert (run_dir / "metrics.jsonl").stat().st_size > 0
    assert list((run_dir / "checkpoints").glob("step-*.pt"))
    assert (run_dir / "samples.png").stat().st_size > 0


def test_unknown_parameter_is_a_clean_cli_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--transform",
            NAME,
            "--data",
            "moons",
            "--set",
            "transform.min_tailwieght=0.2",
            "--out",
            str(tmp_path),
            "--dry-run",
        ],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "Did you mean 'min_tailweight'?" in result.output
