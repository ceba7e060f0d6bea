"""Coupling layers, their masks and conditioners."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
from torch import nn
from transform_test_utils import jacobian_logdet, perturb

from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.transforms import masks
from flowkit.plugins.transforms.conditioners import MLP, ConvNet
from flowkit.plugins.transforms.coupling import AdditiveCoupling, AffineCoupling
from flowkit.registry import transforms
from flowkit.transform import Transform

COUPLINGS = [AdditiveCoupling, AffineCoupling]

# (event_shape, keyword arguments): every mask, both parities, both conditioner kinds
CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((6,), {}),
    ((5,), {"mask": "half", "parity": True}),
    ((7,), {"mask": "alternate"}),
    ((4,), {"mask": "alternate", "parity": True}),
    ((1, 4, 4), {}),
    ((2, 3, 4), {"mask": "checkerboard", "parity": True}),
    ((2, 4, 4), {"mask": "channel"}),
    ((3, 2, 2), {"mask": "channel", "parity": True}),
]
SMALL = {"hidden": 8, "num_hidden": 2, "num_blocks": 1}


def build(cls: type[Transform], shape: tuple[int, ...], **kwargs: Any) -> Transform:
    torch.manual_seed(0)
    return cls(shape, **{**SMALL, **kwargs}).double()


# -- masks ------------------------------------------------------------------------------------
def test_vector_masks() -> None:
    assert masks.half_mask(5).tolist() == [1, 1, 1, 0, 0]
    assert masks.half_mask(5, invert=True).tolist() == [0, 0, 0, 1, 1]
    assert masks.alternate_mask(5).tolist() == [1, 0, 1, 0, 1]
    assert masks.alternate_mask(4, invert=True).tolist() == [0, 1, 0, 1]
    assert masks.half_mask(4).dtype.is_floating_point


def test_image_masks() -> None:
    board = masks.checkerboard_mask(3, 4)
    assert board.shape == (1, 3, 4)
    assert board[0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert torch.equal(masks.checkerboard_mask(3, 4, invert=True), 1 - board)
    chan = masks.channel_mask(4)
    assert chan.shape == (4, 1, 1)
    assert chan.flatten().tolist() == [1, 1, 0, 0]
    assert masks.channel_mask(3, invert=True).flatten().tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("half", (1, 4, 4)),
        ("checkerboard", (8,)),
        ("channel", (1, 4, 4)),
        ("alternate", (1,)),
    ],
)
def test_mask_shape_errors(kind: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        masks.build_mask(kind, shape)


# -- conditioners -----------------------------------------------------------------------------
def test_conditioners_start_at_zero() -> None:
    mlp = MLP(3, 6, hidden=5, num_hidden=2)
    assert torch.equal(mlp(torch.randn(4, 3)), torch.zeros(4, 6))
    conv = ConvNet(2, 4, hidden=5, num_blocks=2)
    out = conv(torch.randn(3, 2, 5, 6))
    assert out.shape == (3, 4, 5, 6) and not out.any()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in conv.modules())


# -- coupling layers --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize(("shape", "kwargs"), CASES)
def test_identity_at_initialisation(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    layer = build(cls, shape, **kwargs)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize(("shape", "kwargs"), CASES)
def test_invertible_with_exact_logdet(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    layer = build(cls, shape, **kwargs)
    perturb(layer)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,) and logdet.dtype == torch.float64
    assert not torch.allclose(y, x)  # the perturbed layer really transforms
    mask = layer.mask
    torch.testing.assert_close(mask * y, mask * x, rtol=0, atol=0)  # conditioning side kept
    x_back, logdet_inv = layer.inverse(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(logdet, jacobian_logdet(layer, x))
    if cls is AdditiveCoupling:
        assert layer.volume_preserving and not logdet.any()


def test_masks_are_buffers_and_default_per_rank() -> None:
    vec = AffineCoupling((6,), **SMALL)
    img = AffineCoupling((2, 4, 4), **SMALL)
    assert (vec.mask_kind, vec.conditioner_kind) == ("half", "mlp")
    assert (img.mask_kind, img.conditioner_kind) == ("checkerboard", "conv")
    assert "mask" in dict(img.named_buffers()) and "mask" not in dict(img.named_parameters())
    assert torch.equal(img.scale, torch.ones(2, 1, 1))  # per-channel bound, starts at 1
    assert torch.equal(vec.scale, torch.ones(6))  # per-feature
    assert torch.equal(AffineCoupling((6,), parity=True, **SMALL).mask, 1 - vec.mask)


@pytest.mark.parametrize(("shape", "kwargs"), [((5,), {}), ((2, 4, 4), {"mask": "channel"})])
def test_conditional_coupling(shape: tuple[int, ...], kwargs: dict[str, Any]) -> None:
    layer = build(AffineCoupling, shape, conditional=True, num_classes=3, **kwargs)
    perturb(layer)
    x = torch.randn(1, *shape, dtype=torch.float64).expand(3, *shape)
    labels = torch.tensor([0, 1, 2])
    y, logdet = layer(x, labels)
    assert not torch.allclose(y[0], y[1]) and not torch.allclose(y[1], y[2])
    x_back, _ = layer.inverse(y, labels)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logdet, jacobian_logdet(layer, x, labels))
    with pytest.raises(ShapeError, match="labels"):
        layer(x)
    with pytest.raises(ShapeError, match="labels"):
        layer.inverse(y)
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        layer(x, torch.tensor([0, 1, 3]))
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        layer(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("cls", COUPLINGS)
def test_conditional_needs_num_classes(cls: type[Transform]) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        cls((4,), conditional=True)
    name = "affine-coupling" if cls is AffineCoupling else "additive-coupling"
    with pytest.raises(ConfigError, match="conditional"):
        transforms.build(name, {"conditional": True}, injected={"event_shape": (4,), "num_classes": None})


def test_conditioner_rank_errors_name_shapes_and_fix() -> None:
    with pytest.raises(ShapeError) as err:
        AffineCoupling((1, 8, 8), conditioner="mlp")
    assert "(1, 8, 8)" in str(err.value) and "conv" in str(err.value)
    assert "(64,)" in str(err.value)  # the flattening suggestion
    with pytest.raises(ShapeError, match="mlp") as err:
        AdditiveCoupling((8,), conditioner="conv")
    assert "(8,)" in str(err.value)
    with pytest.raises(ShapeError, match=r"\(4, 4\)"):
        AffineCoupling((4, 4))
    with pytest.raises(ShapeError, match="at least 2"):
        AffineCoupling((1,))
    with pytest.raises(ShapeError, match="channels"):
        AffineCoupling((1, 4, 4), mask="channel")


@pytest.mark.parametrize("cls", COUPLINGS)
def test_wrong_input_shape_names_both_shapes(cls: type[Transform]) -> None:
    layer = cls((2, 4, 4), **SMALL)
    with pytest.raises(ShapeError) as err:
        layer(torch.randn(3, 2, 4, 5))
    assert "2, 4, 4" in str(err.value) and "(3, 2, 4, 5)" in str(err.value)
    with pytest.raises(ShapeError, match=r"\(3, 8\)"):
        layer.inverse(torch.randn(3, 8))


def test_registry_build_and_validation() -> None:
    layer = transforms.build(
        "affine-coupling",
        {"mask": "channel", "hidden": 8},
        injected={"event_shape": (4, 2, 2), "num_classes": None},
    )
    assert isinstance(layer, AffineCoupling) and layer.mask_kind == "channel"
    with pytest.raises(ConfigError, match="checkerboard"):
        transforms.build("additive-coupling", {"mask": "chekerboard"}, injected={"event_shape": (4, 2, 2)})
    with pytest.raises(ConfigError, match="hidden"):
        transforms.build("additive-coupling", {"hidden": 0}, injected={"event_shape": (4,)})


def test_pickle_round_trip() -> None:
    layer = build(AffineCoupling, (2, 4, 4), conditional=True, num_classes=2)
    perturb(layer)
    clone = pickle.loads(pickle.dumps(layer))
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(clone(x, labels), layer(x, labels), rtol=0, atol=0)
