"""Tests of the sinh-arcsinh transform, as a plugin author would write them."""

from __future__ import annotations

import pytest
import torch
from flowkit.errors import ConfigError
from flowkit.testing import check_elementwise, check_plugin, check_transform

from flowkit_example import SinhArcsinh, SinhArcsinhMap


@pytest.mark.parametrize("event_shape", [(5,), (2, 4, 4)])
def test_conformance(event_shape: tuple[int, ...]) -> None:
    check_transform(SinhArcsinh, event_shape, {"min_tailweight": 0.2, "init_scale": 0.5})


def test_registered_under_its_entry_point_name() -> None:
    check_plugin("sinh-arcsinh", (3,))


def test_starts_as_identity() -> None:
    x = torch.randn(7, 3, dtype=torch.float64)
    y, logdet = SinhArcsinh((3,)).double()(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(7, dtype=torch.float64))


def test_matches_the_formula() -> None:
    flow = SinhArcsinh((2,), init_scale=1.0).double()
    x = torch.linspace(-3.0, 3.0, 10, dtype=torch.float64).reshape(5, 2)
    a, b = flow.skew.detach(), flow.tailweight.detach()
    y, _ = flow(x)
    torch.testing.assert_close(y, torch.sinh(b * torch.asinh(x) - a))


def test_stable_far_in_the_tails() -> None:
    flow = SinhArcsinh((1,), min_tailweight=0.5)
    with torch.no_grad():
        flow.raw_tailweight.fill_(-20.0)  # b ≈ 0.5: y grows like |x|^0.5
        y, logdet = flow(torch.tensor([[1e30], [-1e30]]))
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"min_tailweight": 0.0}, "min_tailweight must be strictly between 0 and 1"),
        ({"min_tailweight": 1.5}, "min_tailweight must be strictly between 0 and 1"),
        ({"min_tailweight": float("nan")}, "min_tailweight must be a finite number"),
        ({"init_scale": -1.0}, "init_scale must be at least 0"),
    ],
)
def test_bad_parameters_are_config_errors(bad: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SinhArcsinh((3,), **bad)


def test_the_elementwise_map_in_a_coupling_and_an_autoregressive_flow() -> None:
    check_elementwise(SinhArcsinhMap)  # the class, before packaging
    check_elementwise("sinh-arcsinh")  # through the flowkit.elementwise entry point
