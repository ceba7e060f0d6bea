"""Config layering, validation and resolution."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from flowkit.config import available_presets, diff, dumps, load_config, parse_objective_expression, read_toml
from flowkit.errors import ConfigError, UnknownPluginError


def test_presets_ship_and_resolve():
    presets = available_presets()
    for name in ("nice-mnist", "realnvp-mnist", "realnvp-moons", "realnvp-digits"):
        assert name in presets
        cfg = load_config(name)
        assert set(cfg) == {"transform", "embedding", "prior", "objective", "data", "train", "eval"}


def test_defaults_are_filled_from_plugin_signatures():
    cfg = load_config("realnvp-moons")
    assert cfg["transform"]["num_layers"] == 8  # from the preset
    assert "hidden" in cfg["transform"]  # default from RealNVP's signature
    assert cfg["data"]["n_train"] > 0  # default from the dataset's signature
    assert cfg["train"]["steps"] == 3000


def test_layers_apply_in_order(tmp_path: Path):
    path = tmp_path / "my.toml"
    path.write_text('[transform]\nname = "realnvp"\nnum_layers = 4\n[train]\nsteps = 10\n')
    cfg = load_config(path, ["train.steps=20", "train.lr=3e-4"], data="circles")
    assert cfg["transform"]["num_layers"] == 4
    assert cfg["train"]["steps"] == 20
    assert cfg["train"]["lr"] == pytest.approx(3e-4)
    assert cfg["data"]["name"] == "circles"


def test_switching_plugin_drops_old_parameters():
    cfg = load_config("realnvp-moons", transform="nice")
    assert "num_layers" not in cfg["transform"]
    assert cfg["transform"]["name"] == "nice"


def test_switching_dataset_keeps_generic_data_keys():
    cfg = load_config("realnvp-digits", data="mnist", resolve_plugins=False)
    assert cfg["data"]["preprocess"] == "logit"
    assert cfg["data"]["name"] == "mnist"


def test_resolved_config_round_trips_through_toml(tmp_path: Path):
    cfg = load_config("realnvp-digits")
    path = tmp_path / "config.toml"
    path.write_text(dumps(cfg))
    again = load_config(path)
    assert diff(cfg, again) == []


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.stepz=5"], r"unknown parameter 'stepz'.*Did you mean 'steps'"),
        (["train.steps=abc"], r"\[train\] steps must be an integer, got 'abc'"),
        (["train.lr=true"], r"lr must be a number"),
        (["train.optimizer=adamm"], r"must be one of 'adam', 'adamw', 'sgd'.*Did you mean 'adam'"),
        (["transform.hiden=3"], r"\[transform\] realnvp: unknown parameter 'hiden'.*'hidden'"),
        (["trian.steps=3"], r"unknown config section \[trian\].*Did you mean 'train'"),
        (["data.noise=[1, 2]"], r"noise must be a number"),
        (["steps=3"], r"section.key=value"),
    ],
)
def test_bad_keys_and_values_name_the_problem(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("realnvp-moons", overrides)


def test_unknown_plugin_names_suggest():
    with pytest.raises(UnknownPluginError, match=r"Did you mean 'realnvp'"):
        load_config(None, transform="realnvpp")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match=r"Did you mean 'realnvp-moons'"):
        read_toml("realnvp-moon")


def test_invalid_toml_file(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_objective_expressions():
    assert parse_objective_expression("mle") == [("mle", 1.0)]
    assert parse_objective_expression("mle + 0.1*ot") == [("mle", 1.0), ("ot", 0.1)]
    with pytest.raises(ConfigError, match="cannot read term"):
        parse_objective_expression("mle + * ot")
    cfg = load_config("realnvp-moons", objective="mle+0.5*mle2", resolve_plugins=False)
    assert cfg["objective"]["name"] == "mle+0.5*mle2"


def test_weighted_sum_objective_resolves():
    cfg = load_config("realnvp-moons", objective="2*mle")
    assert cfg["objective"] == {"name": "2*mle", "mle": {}}


def test_a_plugin_chosen_on_the_command_line_brings_its_recommendations():
    from flowkit import registry
    from flowkit.plugins.objectives.mle import MaximumLikelihood

    class Recommending(MaximumLikelihood):
        """Test objective that recommends a prior and a sampler."""

        config_defaults: ClassVar[dict] = {"prior": {"name": "diag-gaussian"}, "train": {"batch_size": 7}}

    registry.objectives.register("recommending", Recommending)
    try:
        cfg = load_config(None, objective="recommending")
        assert cfg["prior"]["name"] == "diag-gaussian" and cfg["train"]["batch_size"] == 7
        cfg = load_config(
            None, ["train.batch_size=9"], objective="recommending", prior="logistic"
        )  # explicit choices win
        assert cfg["prior"]["name"] == "logistic" and cfg["train"]["batch_size"] == 9
    finally:
        registry.objectives.unregister("recommending")


def test_resume_may_change_the_schedule_but_not_the_model_or_data():
    from flowkit.config import SCHEDULE_KEYS, resume_conflicts, with_recorded_values

    saved = load_config(None, data="moons")
    saved["transform"]["hidden"] = 256  # a value the run recorded at build time
    assert {"train.lr", "train.grad_clip", "train.scheduler", "train.steps"} <= SCHEDULE_KEYS
    lower = load_config(
        None,
        ["train.lr=1e-4", "train.grad_clip=5.0", "train.steps=9000", "train.warmup_steps=10"],
        data="moons",
    )
    assert resume_conflicts(saved, lower) == []  # "hidden" unset: the recorded value holds
    assert with_recorded_values(saved, lower)["transform"]["hidden"] == 256
    assert resume_conflicts(saved, load_config(None, ["transform.hidden=8"], data="moons")) == [
        "transform.hidden"
    ]
    assert resume_conflicts(
        saved, load_config(None, ["data.noise=0.2", "train.batch_size=7"], data="moons")
    ) == ["data.noise", "train.batch_size"]
