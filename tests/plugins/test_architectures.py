"""The NICE and Real NVP architectures: shapes, invertibility, exact log-determinants."""

from __future__ import annotations

import pickle
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from transform_test_utils import jacobian_logdet, perturb

from flowkit.composition import MultiScale, Sequential
from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.transforms.coupling import AdditiveCoupling, AffineCoupling
from flowkit.plugins.transforms.nice import NICE, DiagonalScaling
from flowkit.plugins.transforms.realnvp import RealNVP
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.registry import transforms
from flowkit.transform import Transform

NICE_SMALL = {"num_couplings": 3, "hidden": 8, "num_hidden": 2}
REALNVP_SMALL = {"hidden": 4, "num_blocks": 1, "num_layers": 3, "num_hidden": 1}

# (class, event_shape, keyword arguments)
CASES: list[tuple[type[Transform], tuple[int, ...], dict[str, Any]]] = [
    (NICE, (5,), NICE_SMALL),
    (NICE, (1, 4, 4), NICE_SMALL),
    (RealNVP, (6,), REALNVP_SMALL),
    (RealNVP, (2, 3, 2), {**REALNVP_SMALL, "num_scales": 1}),
    (RealNVP, (1, 4, 4), {**REALNVP_SMALL, "num_scales": 2}),
    (RealNVP, (1, 4, 8), {**REALNVP_SMALL, "num_scales": 3}),
]


perturb = partial(perturb, scale=0.2)


def build(cls: type[Transform], shape: tuple[int, ...], **kwargs: Any) -> Transform:
    torch.manual_seed(0)
    model = cls(shape, **kwargs).double()
    perturb(model)
    return model


@pytest.mark.parametrize(("cls", "shape", "kwargs"), CASES)
def test_invertible_with_exact_logdet(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    model = build(cls, shape, **kwargs)
    dim = torch.Size(shape).numel()
    assert model.event_shape == shape and model.output_shape == (dim,)
    x = torch.randn(2, *shape, dtype=torch.float64)
    y, logdet = model(x)
    assert y.shape == (2, dim) and logdet.shape == (2,) and logdet.dtype == torch.float64
    x_back, logdet_inv = model.inverse(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(logdet, jacobian_logdet(model, x))


def test_nice_structure() -> None:
    model = NICE((1, 2, 3), **NICE_SMALL)
    steps = list(model.flow)
    couplings = [s for s in steps if isinstance(s, AdditiveCoupling)]
    assert len(couplings) == 3 and isinstance(steps[-1], DiagonalScaling)
    assert all(c.mask_kind == "alternate" for c in couplings)
    assert not torch.equal(couplings[0].mask, couplings[1].mask)  # parity alternates
    assert torch.equal(couplings[0].mask, couplings[2].mask)
    defaults = NICE((4,))
    first = next(s for s in defaults.flow if isinstance(s, AdditiveCoupling))
    linears = [m for m in first.net.modules() if isinstance(m, nn.Linear)]
    assert len(list(defaults.flow)) == 5 and len(linears) == 6  # 4 couplings; 5 hidden layers
    assert linears[0].out_features == 1000


def test_diagonal_scaling_logdet() -> None:
    layer = DiagonalScaling((3,)).double()
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x * torch.tensor([0.5, -1.0, 2.0]).exp())
    torch.testing.assert_close(logdet, torch.full((4,), 1.5, dtype=torch.float64))


@pytest.mark.parametrize("num_scales", [1, 2])
def test_realnvp_multiscale_factoring(num_scales: int) -> None:
    model = build(RealNVP, (1, 4, 4), **{**REALNVP_SMALL, "num_scales": num_scales})
    flow = model.flow
    assert isinstance(flow, MultiScale) and len(flow.levels) == num_scales
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    y, _ = model(x)
    assert y.shape == (3, 16)
    if num_scales == 1:
        level = flow.levels[0]
        assert [type(s) for s in level] == [AffineCoupling] * 4
        assert all(s.mask_kind == "checkerboard" for s in level)
        torch.testing.assert_close(y, level(x)[0].reshape(3, -1))
        return
    first, last = flow.levels
    kinds = [(type(s), getattr(s, "mask_kind", None)) for s in first]
    assert (
        kinds
        == [(AffineCoupling, "checkerboard")] * 3 + [(Squeeze, None)] + [(AffineCoupling, "channel")] * 3
    )
    assert first.output_shape == (4, 2, 2) and last.event_shape == (2, 2, 2)
    assert flow.sizes == [8, 8]
    h, _ = first(x)
    torch.testing.assert_close(y[:, :8], h[:, 2:].reshape(3, -1))  # factored-out half
    torch.testing.assert_close(y[:, 8:], last(h[:, :2])[0].reshape(3, -1))


def test_realnvp_vector_structure() -> None:
    model = RealNVP((5,), num_layers=4)
    assert isinstance(model.flow, Sequential) and len(model.flow) == 4
    layers = list(model.flow)
    assert all(isinstance(s, AffineCoupling) and s.mask_kind == "half" for s in layers)
    assert torch.equal(layers[1].mask, 1 - layers[0].mask)
    linears = [m for m in layers[0].net.modules() if isinstance(m, nn.Linear)]
    assert linears[0].out_features == 256 and len(linears) == 3
    convs = RealNVP((1, 4, 4)).flow.levels[0].steps[0].net
    assert convs.conv_in.out_channels == 64 and len(convs.blocks) == 4


def test_registry_build_and_conditional() -> None:
    model = transforms.build("realnvp", {"hidden": 8}, injected={"event_shape": (1, 8, 8), "num_classes": 10})
    assert isinstance(model, RealNVP) and model.output_shape == (64,)
    cond = transforms.build(
        "realnvp",
        {"hidden": 4, "num_blocks": 1, "num_scales": 1, "conditional": True},
        injected={"event_shape": (1, 4, 4), "num_classes": 3},
    ).double()
    assert all(c.conditional for c in cond.modules() if isinstance(c, AffineCoupling))
    perturb(cond)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64).expand(2, 1, 4, 4)
    labels = torch.tensor([0, 2])
    y, _ = cond(x, labels)
    assert not torch.allclose(y[0], y[1])
    torch.testing.assert_close(cond.inverse(y, labels)[0], x)
    with pytest.raises(ShapeError, match="labels"):
        cond(x)
    nice = transforms.build(
        "nice",
        {"hidden": 4, "num_couplings": 2, "conditional": True},
        injected={"event_shape": (4,), "num_classes": 2},
    )
    assert all(c.conditional for c in nice.modules() if isinstance(c, AdditiveCoupling))


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_conditional_without_classes_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        transforms.build(
            name, {"conditional": True, "hidden": 4}, injected={"event_shape": (4,), "num_classes": None}
        )


def test_shape_errors() -> None:
    with pytest.raises(ShapeError) as err:
        RealNVP((1, 6, 6), num_scales=3)
    message = str(err.value)
    assert "(1, 6, 6)" in message and "4" in message and "num_scales" in message
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        RealNVP((3, 4))
    with pytest.raises(ShapeError, match=r"\(2, 2\)"):
        NICE((2, 2))
    model = NICE((1, 2, 2), **NICE_SMALL)
    with pytest.raises(ShapeError) as err:
        model(torch.randn(5, 4))
    assert "1, 2, 2" in str(err.value) and "(5, 4)" in str(err.value)
    with pytest.raises(ShapeError) as err:
        model.inverse(torch.randn(5, 1, 2, 2))
    assert "(batch, 4)" in str(err.value) and "(5, 1, 2, 2)" in str(err.value)
    with pytest.raises(ConfigError, match="num_scales"):
        RealNVP((1, 4, 4), num_scales=0)


@pytest.mark.parametrize(("cls", "shape", "kwargs"), [CASES[1], CASES[4]])
def test_pickle_round_trip(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    model = build(cls, shape, **kwargs)
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, *shape, dtype=torch.float64)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
