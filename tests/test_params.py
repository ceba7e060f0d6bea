"""Plugin parameters are validated from the plugin's typed signature (:mod:`flowkit.params`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pytest

from flowkit.errors import ConfigError
from flowkit.params import (
    INJECTED,
    Odd,
    Range,
    check_value,
    checked,
    describe_parameters,
    user_parameters,
    validate_parameters,
)
from flowkit.transform import Transform

WHERE = "[transform] dummy"


class Dummy:
    """A plugin with one parameter of every supported kind."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        hidden: int,
        rate: float = 0.5,
        flag: bool = False,
        label: str = "x",
        mode: Literal["mlp", "conv"] = "mlp",
        limit: int | None = None,
        sizes: list[int] | None = None,
        pair: tuple[float, float] = (0.0, 1.0),
        num_classes: int | None = None,
    ) -> None:
        self.event_shape = event_shape


def dataset_factory(
    *, n: int = 10, root: Path | None = None, data_dir: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """A dataset-like factory that asks for ``data_dir`` and ``seed``."""
    return {"n": n, "data_dir": data_dir, "seed": seed}


def open_plugin(*, size: int = 1, **extra: Any) -> dict[str, Any]:
    """A factory that takes any extra keyword."""
    return {"size": size, **extra}


ALL_INJECTED = {
    "event_shape": (2, 4, 4),
    "shape": (32,),
    "num_classes": 3,
    "data_dir": Path("/data"),
    "seed": 7,
}


# ---------------------------------------------------------------------------------------------
# validate_parameters
# ---------------------------------------------------------------------------------------------
def test_valid_parameters_are_converted() -> None:
    kwargs = validate_parameters(
        Dummy, {"hidden": 8.0, "rate": 1, "mode": "conv", "sizes": [1, 2], "pair": [0, 2]}, WHERE
    )
    assert kwargs == {"hidden": 8, "rate": 1.0, "mode": "conv", "sizes": [1, 2], "pair": (0.0, 2.0)}
    assert type(kwargs["hidden"]) is int and type(kwargs["rate"]) is float


def test_unknown_parameter_suggests_and_lists() -> None:
    with pytest.raises(ConfigError) as info:
        validate_parameters(Dummy, {"hidden": 4, "hiden": 4}, WHERE)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: unknown parameter 'hiden'.")
    assert "Did you mean 'hidden'?" in message
    assert "Parameters it takes: hidden, rate, flag, label, mode, limit, sizes, pair." in message


def test_unknown_parameter_without_a_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'zzz'") as info:
        validate_parameters(Dummy, {"hidden": 4, "zzz": 1}, WHERE)
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("name", sorted(INJECTED))
def test_injected_names_cannot_be_set(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{name}' is set by flowkit from the data; remove it"):
        validate_parameters(Dummy, {"hidden": 4, name: 1}, WHERE)


def test_missing_required_parameter() -> None:
    with pytest.raises(ConfigError, match=r"\[transform\] dummy: missing required parameter 'hidden'"):
        validate_parameters(Dummy, {"rate": 0.1}, WHERE)


def test_bad_value_names_section_and_key() -> None:
    with pytest.raises(ConfigError, match=r"\[transform\] dummy hidden must be an integer, got '8'"):
        validate_parameters(Dummy, {"hidden": "8"}, WHERE)


def test_injected_values_only_when_the_signature_names_them() -> None:
    kwargs = validate_parameters(Dummy, {"hidden": 4}, WHERE, injected=ALL_INJECTED)
    assert kwargs == {"hidden": 4, "event_shape": (2, 4, 4), "num_classes": 3}
    kwargs = validate_parameters(dataset_factory, {"n": 5}, "[data] fake", injected=ALL_INJECTED)
    assert kwargs == {"n": 5, "data_dir": Path("/data"), "seed": 7}
    assert dataset_factory(**kwargs)["seed"] == 7


def test_var_keyword_plugins_take_any_key() -> None:
    kwargs = validate_parameters(open_plugin, {"size": 2.0, "anything": "goes"}, "[objective] open")
    assert kwargs == {"size": 2, "anything": "goes"}
    with pytest.raises(ConfigError, match="set by flowkit"):  # still no injected names
        validate_parameters(open_plugin, {"seed": 1}, "[objective] open")


def test_reserved_can_be_emptied() -> None:
    kwargs = validate_parameters(dataset_factory, {"seed": 3}, "[train]", reserved=frozenset())
    assert kwargs == {"seed": 3}


def test_user_parameters_leave_out_self_injected_and_var_keyword() -> None:
    assert list(user_parameters(Dummy)) == [
        "hidden",
        "rate",
        "flag",
        "label",
        "mode",
        "limit",
        "sizes",
        "pair",
    ]
    assert list(user_parameters(dataset_factory)) == ["n", "root"]
    assert list(user_parameters(open_plugin)) == ["size"]


# ---------------------------------------------------------------------------------------------
# check_value
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(3, 3), (3.0, 3), (-2, -2), (0.0, 0)])
def test_int_accepts_integers_and_integral_floats(value: Any, expected: int) -> None:
    out = check_value(value, int, "k")
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [True, False, 3.5, "3", None, [3]])
def test_int_is_strict(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"k must be an integer, got "):
        check_value(value, int, "k")


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (2.5, 2.5), (0, 0.0)])
def test_float_accepts_numbers(value: Any, expected: float) -> None:
    out = check_value(value, float, "k")
    assert out == expected and type(out) is float


@pytest.mark.parametrize("value", [True, "1.0", None])
def test_float_is_strict(value: Any) -> None:
    with pytest.raises(ConfigError, match="k must be a number"):
        check_value(value, float, "k")


def test_bool_is_strict() -> None:
    assert check_value(True, bool, "k") is True
    assert check_value(False, bool, "k") is False
    for value in (1, 0, "true", "yes", None):
        with pytest.raises(ConfigError, match="k must be true or false"):
            check_value(value, bool, "k")


def test_str_is_strict() -> None:
    assert check_value("abc", str, "k") == "abc"
    for value in (3, True, None, ["a"]):
        with pytest.raises(ConfigError, match="k must be a string"):
            check_value(value, str, "k")


def test_literal_choices_with_did_you_mean() -> None:
    hint = Literal["mlp", "conv"]
    assert check_value("conv", hint, "k") == "conv"
    with pytest.raises(ConfigError) as info:
        check_value("mpl", hint, "k")
    assert str(info.value) == "k must be one of 'mlp', 'conv', got 'mpl'. Did you mean 'mlp'?"
    with pytest.raises(ConfigError, match=r"must be one of 'mlp', 'conv', got 'resnet'\.$"):
        check_value("resnet", hint, "k")


def test_optional() -> None:
    hint = int | None
    assert check_value(None, hint, "k") is None
    assert check_value(4.0, hint, "k") == 4
    with pytest.raises(ConfigError, match=r"k must be int \| None, got 'four'"):
        check_value("four", hint, "k")
    with pytest.raises(ConfigError, match="k must be an integer"):
        check_value(None, int, "k")


def test_union_tries_each_member() -> None:
    hint = int | str
    assert check_value(3, hint, "k") == 3
    assert check_value("auto", hint, "k") == "auto"
    with pytest.raises(ConfigError, match=r"k must be int \| str"):
        check_value(1.5, hint, "k")


def test_list_of_int() -> None:
    assert check_value([1, 2.0, 3], list[int], "k") == [1, 2, 3]
    assert check_value((4, 5), list[int], "k") == [4, 5]
    assert check_value([], list[int], "k") == []
    with pytest.raises(ConfigError, match=r"k\[1\] must be an integer, got 'a'"):
        check_value([1, "a"], list[int], "k")
    with pytest.raises(ConfigError, match=r"k must be a list \(list\[int\]\), got 12"):
        check_value(12, list[int], "k")
    with pytest.raises(ConfigError, match="k must be a list"):
        check_value("12", list[int], "k")


def test_fixed_length_tuple() -> None:
    out = check_value([1, 2.5], tuple[float, float], "betas")
    assert out == (1.0, 2.5) and isinstance(out, tuple)
    with pytest.raises(ConfigError, match="betas must have 2 items, got 3"):
        check_value([0.9, 0.99, 0.999], tuple[float, float], "betas")
    with pytest.raises(ConfigError, match=r"betas\[0\] must be a number"):
        check_value(["a", 0.9], tuple[float, float], "betas")


def test_variable_length_tuple() -> None:
    assert check_value([2, 4, 4], tuple[int, ...], "shape") == (2, 4, 4)
    with pytest.raises(ConfigError, match=r"shape\[2\] must be an integer"):
        check_value([2, 4, 4.5], tuple[int, ...], "shape")


def test_dict_path_and_any() -> None:
    assert check_value({"a": 1}, dict[str, int], "k") == {"a": 1}
    with pytest.raises(ConfigError, match=r"k must be a table \(dict\)"):
        check_value([1], dict, "k")
    assert check_value("data/mnist", Path, "k") == Path("data/mnist")
    with pytest.raises(ConfigError, match="k must be a path"):
        check_value(3, Path, "k")
    sentinel = object()
    assert check_value(sentinel, Any, "k") is sentinel


# ---------------------------------------------------------------------------------------------
# describe_parameters
# ---------------------------------------------------------------------------------------------
def test_describe_parameters() -> None:
    assert describe_parameters(Dummy) == [
        ("hidden", "int", "required"),
        ("rate", "float", "0.5"),
        ("flag", "bool", "False"),
        ("label", "str", "'x'"),
        ("mode", "'mlp' | 'conv'", "'mlp'"),
        ("limit", "int | None", "None"),
        ("sizes", "list[int] | None", "None"),
        ("pair", "tuple[float, float]", "(0.0, 1.0)"),
    ]
    assert describe_parameters(dataset_factory) == [("n", "int", "10"), ("root", "Path | None", "None")]
    assert describe_parameters(open_plugin) == [("size", "int", "1")]


# ---------------------------------------------------------------------------------------------
# declared ranges
# ---------------------------------------------------------------------------------------------
Hidden = Annotated[int, Range(1)]
Rate = Annotated[float, Range(0, min_inclusive=False, note="a step size")]
Alpha = Annotated[float, Range(0, 0.5, max_inclusive=False)]
Kernel = Annotated[int, Range(1), Odd(note="k//2 padding keeps the size")]


class Ranged(Transform):
    """A transform whose numbers declare their ranges (checked from configs and from Python)."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        hidden: Hidden = 4,
        rate: Rate = 0.1,
        alpha: Alpha = 0.05,
        kernel: Kernel = 3,
        width: Hidden | None = None,
        sizes: list[Hidden] | None = None,
        scale: float = 1.0,
        anything: Annotated[float, Range(finite=False)] = 0.0,
    ) -> None:
        super().__init__(event_shape)
        self.built_with = hidden


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden": 0}, "[transform] ranged hidden must be at least 1, got 0; the default is 4."),
        (
            {"rate": 0},
            "[transform] ranged rate must be greater than 0 (a step size), got 0.0; the default is 0.1.",
        ),
        (
            {"rate": math.nan},
            "[transform] ranged rate must be a finite number greater than 0 "
            "(a step size), got nan; the default is 0.1.",
        ),
        ({"alpha": 0.5}, "[transform] ranged alpha must be in [0, 0.5), got 0.5; the default is 0.05."),
        (
            {"kernel": 4},
            "[transform] ranged kernel must be an odd number (k//2 padding keeps the "
            "size), got 4; the default is 3.",
        ),
        ({"kernel": -1}, "[transform] ranged kernel must be at least 1, got -1; the default is 3."),
        ({"width": 0}, "[transform] ranged width must be at least 1, got 0."),
        ({"sizes": [2, 0]}, "[transform] ranged sizes[1] must be at least 1, got 0."),
        (
            {"scale": -math.inf},
            "[transform] ranged scale must be a finite number, got -inf; the default is 1.0.",
        ),
    ],
)
def test_declared_ranges_are_enforced_with_the_range_in_the_message(params, message) -> None:
    with pytest.raises(ConfigError) as info:
        validate_parameters(Ranged, params, "[transform] ranged")
    assert str(info.value) == message


def test_values_inside_the_ranges_pass() -> None:
    kwargs = validate_parameters(
        Ranged,
        {
            "hidden": 1,
            "rate": 1e-9,
            "alpha": 0,
            "kernel": 1,
            "width": None,
            "sizes": [1, 5],
            "scale": -3,
            "anything": math.nan,
        },
        "[transform] ranged",
    )
    assert kwargs["hidden"] == 1 and kwargs["alpha"] == 0.0 and math.isnan(kwargs["anything"])
    assert check_value(0.49, Alpha, "k") == 0.49
    with pytest.raises(ConfigError, match=r"k must be int ≥ 1 \| None, got 'a'"):
        check_value("a", Hidden | None, "k")  # a type error still names the type (and range)


def test_python_calls_are_checked_too() -> None:
    """A Transform subclass needs nothing more than the annotations; types are not converted."""
    with pytest.raises(
        ConfigError,
        match=r"^Ranged: hidden must be at least 1, got 0; the "
        r"default is 4\.$",
    ):
        Ranged((2,), hidden=0)
    with pytest.raises(ConfigError, match=r"Ranged: rate must be a finite number"):
        Ranged((2,), rate=math.inf)
    with pytest.raises(ConfigError, match=r"Ranged: sizes\[0\] must be at least 1"):
        Ranged((2,), sizes=[0])
    with pytest.raises(ConfigError, match=r"Ranged: scale must be a finite number"):
        Ranged((2,), scale=math.nan)
    assert Ranged((2,), hidden=np.int64(3), width=None, anything=math.inf).built_with == 3

    class Sub(Ranged):  # inherits the checked __init__; messages name the class built
        pass

    with pytest.raises(ConfigError, match=r"^Sub: kernel must be an odd number"):
        Sub((2,), kernel=2)


def test_checked_decorates_functions() -> None:
    @checked
    def blobs(*, n: Hidden = 100, spread: Rate = 1.0) -> int:
        """A dataset-like factory."""
        return n

    assert blobs(n=3) == 3 and blobs.__doc__ == "A dataset-like factory."
    with pytest.raises(ConfigError, match=r"^blobs: n must be at least 1, got 0; the default is 100"):
        blobs(n=0)
    assert list(user_parameters(blobs)) == ["n", "spread"]  # the signature is the function's
    assert describe_parameters(blobs) == [("n", "int ≥ 1", "100"), ("spread", "float > 0", "1.0")]


def test_describe_parameters_shows_the_ranges() -> None:
    assert describe_parameters(Ranged) == [
        ("hidden", "int ≥ 1", "4"),
        ("rate", "float > 0", "0.1"),
        ("alpha", "float in [0, 0.5)", "0.05"),
        ("kernel", "int ≥ 1, odd", "3"),
        ("width", "int ≥ 1 | None", "None"),
        ("sizes", "list[int ≥ 1] | None", "None"),
        ("scale", "float", "1.0"),
        ("anything", "float (nan/inf allowed)", "0.0"),
    ]


def test_range_words_and_symbols() -> None:
    cases = [
        (Range(1), "at least 1", "≥ 1"),
        (Range(0, min_inclusive=False), "greater than 0", "> 0"),
        (Range(None, 10), "at most 10", "≤ 10"),
        (Range(None, 0.5, max_inclusive=False), "less than 0.5", "< 0.5"),
        (Range(1, 89), "between 1 and 89", "in [1, 89]"),
        (Range(0, 1, min_inclusive=False, max_inclusive=False), "strictly between 0 and 1", "in (0, 1)"),
        (Range(0, 1, max_inclusive=False), "in [0, 1)", "in [0, 1)"),
        (Range(1e-6), "at least 1e-06", "≥ 1e-06"),
    ]
    for constraint, words, symbol in cases:
        assert (constraint.words(), constraint.symbol()) == (words, symbol)
    assert Range(0, 1).accepts(1) and not Range(0, 1, max_inclusive=False).accepts(1)
    assert not Range(0).accepts(math.nan) and Range(0, finite=False).accepts(math.nan)
