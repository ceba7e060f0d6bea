"""Every declared range is enforced before anything runs (:mod:`flowkit.params`).

For every numeric key of ``[train]``, ``[eval]`` and ``[data]`` and every numeric parameter of
every built-in plugin (all five kinds), Hypothesis draws values outside the declared range (and
``nan``/``±inf`` for floats): :func:`flowkit.config.resolve` must refuse each with a
:class:`ConfigError` that names the section, the key, the value and the range, and building the
plugin directly from Python must refuse it too. Values inside the range must resolve unchanged.
"""

from __future__ import annotations

import copy
import inspect
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowkit import registry
from flowkit.config import DataConfig, EvalConfig, TrainConfig, defaults, load_config, resolve
from flowkit.errors import ConfigError, PluginLoadError
from flowkit.params import INJECTED, Constraint, Odd, Range, constraints_of, parameter_hints

#: config section of each plugin kind
SECTION = {
    "transform": "transform",
    "prior": "prior",
    "objective": "objective",
    "dataset": "data",
    "embedding": "embedding",
}
#: values for the injected parameters a plugin may require positionally (direct calls only)
INJECTED_VALUES = {"event_shape": (2,), "shape": (2,), "context_shape": (2,)}
#: Built-in plugins added while ranges were introduced, whose numbers are still checked inline
#: (only ``nan``/``inf`` by the declaration): declare their ranges, then drop them from here.
PENDING = {"cnf", "flow-matching"}


@dataclass(frozen=True)
class Case:
    """One number a user can set: ``[section] (plugin) key`` (``index``: an entry of a tuple)."""

    section: str
    plugin: str | None
    key: str
    index: int | None
    base: type  # int or float
    constraints: tuple[Constraint, ...]
    default: Any
    target: Any = None  # the plugin class or function

    @property
    def id(self) -> str:
        where = f"{self.section}.{self.plugin}" if self.plugin else self.section
        return f"{where}.{self.key}" + ("" if self.index is None else f"[{self.index}]")

    @property
    def finite(self) -> bool:
        return self.base is float and not any(isinstance(c, Range) and not c.finite for c in self.constraints)


def numeric(hint: Any) -> tuple[type, tuple[Constraint, ...]] | None:
    """``(int or float, constraints)`` of a numeric hint, or of a union's numeric member."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    if base in (int, float):
        return base, constraints_of(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            found = numeric(member)
            if found is not None:
                return found
    return None


def cases_of(section: str, plugin: str | None, target: Any, params: dict[str, Any]) -> list[Case]:
    """The numeric cases among ``params`` (name → (hint, default))."""
    out = []
    for key, (hint, default) in params.items():
        found = numeric(hint)
        if found is not None:
            base, constraints = found
            if constraints or base is float:
                out.append(Case(section, plugin, key, None, base, constraints, default, target))
            continue
        if typing.get_origin(hint) is tuple and Ellipsis not in typing.get_args(hint):
            for i, item in enumerate(typing.get_args(hint)):
                found = numeric(item)
                if found is not None and (found[1] or found[0] is float):
                    out.append(Case(section, plugin, key, i, *found, default, target))
    return out


def config_cases() -> list[Case]:
    out = []
    for section, cls in (("train", TrainConfig), ("eval", EvalConfig), ("data", DataConfig)):
        hints = typing.get_type_hints(cls, include_extras=True)
        out += cases_of(section, None, cls, {f.name: (hints[f.name], f.default) for f in fields(cls)})
    return out


UNRANGED_INTS: list[str] = []  # "section.plugin.key" of int parameters without a range


def plugin_cases() -> list[Case]:
    out = []
    for kind, section in SECTION.items():
        for entry in registry.registry(kind).entries():
            if entry.distribution != registry.BUILTIN_DISTRIBUTION:
                continue
            try:
                target = entry.load()
            except PluginLoadError:
                continue
            hints = parameter_hints(target)
            params = {
                name: (hints[name], p.default)
                for name, p in inspect.signature(target).parameters.items()
                if name not in INJECTED and name in hints
            }
            out += cases_of(section, entry.name, target, params)
            UNRANGED_INTS.extend(
                f"{section}.{entry.name}.{name}"
                for name, (hint, _) in params.items()
                if numeric(hint) == (int, ())
            )
    return out


CONFIG_CASES = config_cases()
PLUGIN_CASES = plugin_cases()
ALL_CASES = CONFIG_CASES + PLUGIN_CASES


def required_values(target: Any) -> dict[str, Any]:
    """Stand-ins for a plugin's required user parameters (``table``'s ``path``)."""
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if (
            p.default is inspect.Parameter.empty
            and name not in INJECTED
            and name != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ):
            out[name] = "missing.csv"
    return out


def with_value(case: Case, value: Any) -> Any:
    """The config value to set: ``value`` itself, or the default tuple with one entry replaced."""
    if case.index is None:
        return value
    items = list(case.default)
    items[case.index] = value
    return items


def config_with(case: Case, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(defaults())
    if case.plugin is None:
        config[case.section][case.key] = with_value(case, value)
    else:
        config[case.section] = {
            "name": case.plugin,
            **required_values(case.target),
            case.key: with_value(case, value),
        }
    return config


def accepted(case: Case, value: float) -> bool:
    if case.finite and not math.isfinite(value):
        return False
    return all(c.accepts(value) for c in case.constraints)


def out_of_range(case: Case) -> st.SearchStrategy[Any]:
    """Values the declared range refuses: beyond each bound, even for ``Odd``, non-finite floats."""
    options: list[st.SearchStrategy[Any]] = []
    is_int = case.base is int
    for c in case.constraints:
        if isinstance(c, Range) and c.minimum is not None:
            options.append(
                st.integers(max_value=math.ceil(c.minimum))
                if is_int
                else st.floats(max_value=c.minimum, allow_nan=False, allow_infinity=False)
            )
        if isinstance(c, Range) and c.maximum is not None:
            options.append(
                st.integers(min_value=math.floor(c.maximum))
                if is_int
                else st.floats(min_value=c.maximum, allow_nan=False, allow_infinity=False)
            )
        if isinstance(c, Odd):
            options.append(st.integers(-1000, 1000).map(lambda k: 2 * k))
    if case.finite:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    assert options, f"{case.id} declares nothing to test"
    return st.one_of(options).filter(lambda v: not accepted(case, v))


def in_range(case: Case) -> st.SearchStrategy[Any]:
    ranges = [c for c in case.constraints if isinstance(c, Range)]
    lo = max((c.minimum for c in ranges if c.minimum is not None), default=None)
    hi = min((c.maximum for c in ranges if c.maximum is not None), default=None)
    if case.base is int:
        low = -(10**6) if lo is None else math.ceil(lo)
        strategy = st.integers(low, low + 10**6 if hi is None else math.floor(hi))
    else:
        strategy = st.floats(
            min_value=lo, max_value=1e12 if hi is None else hi, allow_nan=False, allow_infinity=False
        )
    return strategy.filter(lambda v: accepted(case, v))


def test_every_kind_of_number_is_covered() -> None:
    """The cases include every config key the issue names and plugins of all five kinds."""
    ids = {case.id for case in ALL_CASES}
    for key in (
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "grad_clip",
        "warmup_steps",
        "max_minutes",
        "seed",
        "threads",
        "log_every",
        "eval_every",
        "sample_every",
        "checkpoint_every",
        "keep_checkpoints",
        "init_examples",
        "invertible_backprop_chunks",
        "patience",
        "betas[0]",
        "betas[1]",
    ):
        assert f"train.{key}" in ids, key
    for key in ("batch_size", "max_examples", "final_max_examples", "n_samples", "temperature"):
        assert f"eval.{key}" in ids, key
    assert "data.alpha" in ids
    for plugin_id in (
        "transform.realnvp.hidden",
        "transform.rq-coupling.num_bins",
        "transform.nsf.tail_bound",
        "transform.revnet-block.kernel_size",
        "prior.class-gaussian.min_scale",
        "objective.adversarial.critic_betas[1]",
        "data.moons.n_train",
        "data.table.val_fraction",
        "embedding.conv.num_layers",
    ):
        assert plugin_id in ids, plugin_id
    # every number of a built-in plugin declares its range (the finite floats included)
    unranged = [case.id for case in ALL_CASES if not any(isinstance(c, Range) for c in case.constraints)]
    assert [i for i in unranged if i.split(".")[1] not in PENDING] == []
    assert [name for name in UNRANGED_INTS if name.split(".")[1] not in PENDING] == []


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_out_of_range_values_fail_at_resolution(case: Case) -> None:
    @given(out_of_range(case))
    def check(value: Any) -> None:
        with pytest.raises(ConfigError) as info:
            resolve(config_with(case, value))
        message = str(info.value)
        where = f"[{case.section}] {case.plugin} " if case.plugin else f"[{case.section}] "
        key = case.key if case.index is None else f"{case.key}[{case.index}]"
        assert f"{where}{key} must be " in message, message
        assert f"got {value!r}" in message or f"got {float(value)!r}" in message, message
        broken = [c for c in case.constraints if not c.accepts(value)]
        if broken and math.isfinite(value):
            assert broken[0].words() in message, message  # the allowed range, in words
        elif not math.isfinite(value):
            assert "finite number" in message, message

    check()


@pytest.mark.parametrize("case", PLUGIN_CASES, ids=lambda c: c.id)
def test_out_of_range_values_fail_when_built_from_python(case: Case) -> None:
    """The same declaration guards ``Plugin(..., key=value)`` (no config involved)."""
    target = case.target
    needed = {
        name: INJECTED_VALUES[name]
        for name, p in inspect.signature(target).parameters.items()
        if name in INJECTED_VALUES and p.default is inspect.Parameter.empty
    }

    @given(out_of_range(case))
    def check(value: Any) -> None:
        with pytest.raises(ConfigError) as info:
            target(**needed, **required_values(target), **{case.key: with_value(case, value)})
        key = case.key if case.index is None else f"{case.key}[{case.index}]"
        assert f": {key} must be " in str(info.value), str(info.value)

    check()


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_in_range_values_resolve_unchanged(case: Case) -> None:
    @given(in_range(case))
    def check(value: Any) -> None:
        resolved = resolve(config_with(case, value))
        got = resolved[case.section][case.key]
        assert (got if case.index is None else got[case.index]) == value

    check()


def test_load_config_refuses_a_bad_value_before_training() -> None:
    """Through the public entry point, from a --set override, with the key, value and range."""
    with pytest.raises(
        ConfigError,
        match=r"\[train\] lr must be a finite number greater than 0, "
        r"got nan; the default is 0\.001",
    ):
        load_config("realnvp-moons", ["train.lr=nan"])
    with pytest.raises(ConfigError, match=r"\[transform\] realnvp hidden must be at least 1 .*got 0"):
        load_config("realnvp-moons", ["transform.hidden=0"])
    with pytest.raises(ConfigError, match=r"\[data\] alpha must be in \[0, 0\.5\) .*got 0\.5"):
        load_config("realnvp-digits", ["data.alpha=0.5"])
    with pytest.raises(ConfigError, match=r"\[train\] seed must be between 0 and 4294967295, got -1"):
        load_config("realnvp-moons", ["train.seed=-1"])


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_flow_sample_refuses_a_bad_temperature(temperature: float) -> None:
    from flowkit import flows

    flow = flows.MAF(features=2, transforms=1, hidden=4)
    with pytest.raises(ConfigError, match=r"Flow\.sample: temperature must be .*greater than 0"):
        flow.sample(3, temperature=temperature)
    with pytest.raises(ConfigError, match=r"Flow\.sample_and_log_prob: temperature must be"):
        flow.sample_and_log_prob(3, temperature=temperature)
    assert flow.sample(3, temperature=0.5).shape == (3, 2)


@pytest.mark.parametrize("n", [-5, 2.5, True, "3"])
def test_flow_sample_refuses_a_bad_count(n: object) -> None:
    from flowkit import flows

    flow = flows.MAF(features=2, transforms=1, hidden=4)
    with pytest.raises(ConfigError, match=r"Flow\.sample: n must be a whole number ≥ 0"):
        flow.sample(n)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Flow\.sample_and_log_prob: n must be"):
        flow.sample_and_log_prob(n)  # type: ignore[arg-type]
    assert flow.sample(0).shape == (0, 2)


def test_build_model_names_the_missing_sections() -> None:
    from flowkit import build_model
    from flowkit.data import DataMeta

    with pytest.raises(ConfigError, match=r"lacks \[data\], \[prior\]\. Build one with flowkit\.load_config"):
        build_model({"transform": {"name": "nice"}}, DataMeta(shape=(2,)))


def test_dataclasses_check_their_fields_when_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"\[train\] steps must be at least 1, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match=r"\[eval\] temperature must be a finite number"):
        EvalConfig(temperature=math.inf)
