"""Build in one place: objective terms parsed once, the builder module, old import paths, and
build-time defaults recorded in the run folder's config.toml."""

from __future__ import annotations

import ast
import math
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import flowkit
import flowkit.builder
from flowkit import registry
from flowkit.checkpoint import load_checkpoint
from flowkit.cli.main import cli
from flowkit.config import (
    ObjectiveTerm,
    load_config,
    objective_section,
    parse_objective,
    resolve,
    resume_conflicts,
)
from flowkit.errors import ConfigError
from flowkit.objective import WeightedSum
from flowkit.runs import list_checkpoints, load_run, read_run_config
from flowkit.trainer import Trainer, resume
from flowkit.transform import Transform

SMALL = [
    "data.n_train=128",
    "data.n_test=64",
    "train.batch_size=32",
    "train.sample_every=0",
    "train.eval_every=0",
]


# -- parse once, build in one place -------------------------------------------------------------
def test_an_objective_is_parsed_into_terms_with_their_parameters():
    terms = parse_objective({"name": "mle + 0.1*ot", "ot": {"blur": 0.2}})
    assert terms == (ObjectiveTerm("mle", 1.0, {}), ObjectiveTerm("ot", 0.1, {"blur": 0.2}))
    assert parse_objective({"name": "mle", "x": 1}) == (ObjectiveTerm("mle", 1.0, {"x": 1}),)
    assert parse_objective("2*mle") == (ObjectiveTerm("mle", 2.0, {}),)
    assert parse_objective(objective_section(terms)) == terms  # the section round-trips
    with pytest.raises(ConfigError, match=r"'blur' is not a term of 'mle \+ 0.1\*ot'"):
        parse_objective({"name": "mle + 0.1*ot", "blur": 0.2})
    with pytest.raises(ConfigError, match="cannot read term"):
        parse_objective("mle + * ot")
    with pytest.raises(ConfigError, match="names a term twice"):
        parse_objective("mle + mle")


def test_the_builder_consumes_terms():
    single = flowkit.build_objective((ObjectiveTerm("mle"),))
    assert type(single).__name__ == "MaximumLikelihood"
    summed = flowkit.build_objective(parse_objective("mle + 0.1*ot"))
    assert isinstance(summed, WeightedSum) and summed.weights == {"mle": 1.0, "ot": 0.1}
    resolved = load_config("realnvp-moons", objective="mle+0.1*ot")["objective"]
    assert flowkit.build_objective(resolved).weights == summed.weights


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_interface_modules_know_neither_configs_nor_the_registry():
    import flowkit.model
    import flowkit.objective

    assert not _imports(flowkit.objective) & {"flowkit.config", "flowkit.registry"}
    assert "flowkit.registry" not in _imports(flowkit.model)


def test_old_import_paths_still_work_with_a_deprecation_warning():
    import flowkit.model
    import flowkit.objective

    with pytest.warns(DeprecationWarning, match="flowkit.builder.build_model"):
        old = flowkit.model.build_model
    assert old is flowkit.builder.build_model
    with pytest.warns(DeprecationWarning, match="flowkit.builder.build_objective"):
        old = flowkit.objective.build_objective
    assert old is flowkit.builder.build_objective
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package-level names are plain re-exports
        assert flowkit.build_model is flowkit.builder.build_model
        assert flowkit.build_objective is flowkit.builder.build_objective


# -- effective values ---------------------------------------------------------------------------
#: The "release default" of the test transform's width, and whether it reports it.
DEFAULT = {"hidden": 6, "report": True}


class Widened(Transform):
    """Test transform: an elementwise affine map computed from ``hidden`` learned features.

    ``hidden`` unset means ``DEFAULT["hidden"]``, chosen at build time — like Real NVP's width.
    """

    def __init__(self, event_shape, hidden: int | None = None) -> None:
        super().__init__(event_shape)
        self.hidden = DEFAULT["hidden"] if hidden is None else hidden
        self.code = nn.Parameter(0.1 * torch.randn(self.hidden))
        self.out = nn.Linear(self.hidden, 2 * math.prod(self.event_shape))

    def _affine(self):
        s, b = self.out(self.code).chunk(2)
        return 0.1 * torch.tanh(s).reshape(self.event_shape), b.reshape(self.event_shape)

    def forward(self, x, context=None):
        s, b = self._affine()
        return x * s.exp() + b, s.sum().expand(x.shape[0])

    def inverse(self, y, context=None):
        s, b = self._affine()
        return (y - b) * (-s).exp(), (-s.sum()).expand(y.shape[0])

    def effective_params(self) -> dict:
        return {"hidden": self.hidden} if DEFAULT["report"] else {}


@pytest.fixture
def widened():
    registry.transforms.register("widened", Widened)
    DEFAULT.update(hidden=6, report=True)
    yield
    registry.transforms.unregister("widened")
    DEFAULT.update(hidden=6, report=True)


def _config(*overrides: str) -> dict:
    return load_config(None, [*SMALL, *overrides], transform="widened", data="moons")


def test_build_time_defaults_are_recorded_and_rebuild_the_model(tmp_path: Path, widened):
    run_dir = tmp_path / "run"
    config = _config("train.steps=4")
    assert "hidden" not in config["transform"]  # left to the plugin
    flowkit.train(config, run_dir, progress=False, log=lambda _: None)
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["transform"] == {"name": "widened", "hidden": 6}
    assert "hidden = 6" in load_checkpoint(list_checkpoints(run_dir)[-1])["config"]

    DEFAULT["hidden"] = 9  # a later release changes the default
    run = load_run(run_dir)  # the run folder alone rebuilds the model it trained
    assert run.model.transform.hidden == 6
    fresh = _config("train.steps=6")  # resolved afresh: hidden unset again
    assert resume_conflicts(resolve(read_run_config(run_dir)), fresh) == []
    summary = resume(run_dir, fresh, progress=False, log=lambda _: None)
    assert summary["steps"] == 6 and load_run(run_dir).model.transform.hidden == 6

    # a value the config sets is never replaced, and a dry run shows what would be recorded
    assert (
        Trainer(_config("transform.hidden=3"), tmp_path / "x", progress=False).config["transform"]["hidden"]
        == 3
    )
    result = CliRunner().invoke(cli, ["run", "--transform", "widened", "--data", "moons", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "hidden = 9" in result.output


def test_a_run_from_before_recorded_values_still_resumes_and_loads(tmp_path: Path, widened):
    """Checkpoints whose config lacks the recorded keys (written by an older flowkit) keep their
    fingerprint check: they are compared on the keys they have."""
    run_dir = tmp_path / "run"
    DEFAULT["report"] = False  # an older flowkit: nothing recorded
    flowkit.train(
        _config("train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=5"),
        run_dir,
        progress=False,
        log=lambda _: None,
    )
    assert "hidden" not in tomllib.loads((run_dir / "config.toml").read_text())["transform"]
    DEFAULT["report"] = True  # this flowkit records the value when the run goes on
    summary = resume(
        run_dir,
        _config("train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=5"),
        progress=False,
        log=lambda _: None,
    )
    assert summary["steps"] == 6
    assert tomllib.loads((run_dir / "config.toml").read_text())["transform"]["hidden"] == 6
    for checkpoint in list_checkpoints(run_dir):  # old and new checkpoints both load
        assert load_run(run_dir, checkpoint).model.transform.hidden == 6


def test_real_nvp_records_its_hidden_width(tmp_path: Path):
    """The built-in case of the issue: Real NVP's ``hidden`` (256 for vectors when unset)."""
    from flowkit.plugins.transforms.realnvp import RealNVP

    if not hasattr(RealNVP, "effective_params"):
        pytest.skip("RealNVP does not report its effective parameters yet")
    config = load_config(None, [*SMALL, "train.steps=1", "transform.num_layers=2"], data="moons")
    assert "hidden" not in config["transform"]
    flowkit.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["transform"]["hidden"] == 256
