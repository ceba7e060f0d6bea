"""The coupling layers' sliced fast path against the masked formula it replaces.

Every mask but the checkerboard is run by cutting the input into ``x[:, cond]`` and
``x[:, free]`` with a conditioner narrowed to them. These tests check, for every sliceable mask,
both parities, both couplings and with and without class labels, that

* the fast path gives the outputs and log-dets of the masked formula computed with the
  full-size network it was cut from, and inverts them, and
* a checkpoint of the full-size conditioner (as written by flowkit before the fast path existed)
  loads with ``strict=True`` and computes the masked formula of Dinh et al. 2017, eq. (9), with
  that full-size network — i.e. old checkpoints keep their function.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from transform_test_utils import perturb

from flowkit.context import append_context as append_labels
from flowkit.plugins.transforms.conditioners import MLP, ConvNet
from flowkit.plugins.transforms.coupling import AdditiveCoupling, AffineCoupling

SMALL = {"hidden": 8, "num_hidden": 2, "num_blocks": 1}
NUM_CLASSES = 3

# (event_shape, keyword arguments): every sliceable mask, both parities, odd and even sizes
SLICEABLE: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((6,), {"mask": "half"}),
    ((5,), {"mask": "half", "parity": True}),
    ((7,), {"mask": "alternate"}),
    ((4,), {"mask": "alternate", "parity": True}),
    ((2, 4, 4), {"mask": "channel"}),
    ((3, 2, 2), {"mask": "channel", "parity": True}),
]
COUPLINGS = [AdditiveCoupling, AffineCoupling]


def _case_id(case: tuple[tuple[int, ...], dict[str, Any]]) -> str:
    shape, kwargs = case
    return f"{'x'.join(map(str, shape))}-{kwargs['mask']}{'-parity' if kwargs.get('parity') else ''}"


def _build(cls: type, shape: tuple[int, ...], kwargs: dict[str, Any], conditional: bool) -> Any:
    torch.manual_seed(0)
    extra = {"conditional": True, "num_classes": NUM_CLASSES} if conditional else {}
    layer = cls(shape, **SMALL, **kwargs, **extra).double()
    perturb(layer)  # away from the identity the layer starts as
    return layer


def _inputs(shape: tuple[int, ...], conditional: bool) -> tuple[Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0]) if conditional else None
    return x, labels


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("case", SLICEABLE, ids=_case_id)
@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
def test_fast_path_equals_masked_formula(
    cls: type,
    case: tuple[tuple[int, ...], dict[str, Any]],
    conditional: bool,
) -> None:
    shape, kwargs = case
    layer = _build(cls, shape, kwargs, conditional)
    assert layer.sliced, "a sliceable mask must take the fast path"
    x, labels = _inputs(shape, conditional)
    y, logdet = layer(x, labels)
    y_ref, logdet_ref = _masked_reference(layer, _widened_net(layer, conditional), x, labels)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-12)
    x_back, logdet_inv = layer.inverse(y, labels)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-12, atol=1e-12)
    # the conditioning side passes through bit-exactly
    cond = layer.mask.bool().expand_as(x[0])
    assert torch.equal(y[:, cond], x[:, cond])


def test_checkerboard_maps_the_gathered_pixels() -> None:
    layer = _build(AffineCoupling, (1, 4, 4), {"mask": "checkerboard"}, conditional=False)
    assert layer.slices is None and not layer.sliced
    assert layer.free_positions.tolist() == [1, 3, 4, 6, 9, 11, 12, 14]


def _widened_net(layer: Any, conditional: bool) -> MLP | ConvNet:
    """The layer's narrowed conditioner inside the full-size network it was cut from (the
    dropped rows and columns zero)."""
    net = _full_size_net(layer, conditional)
    state = {}
    for key, value in layer.net.state_dict().items():
        full = net.state_dict()[key]
        if f"net.{key}" in layer._narrowed:
            dim, index = layer._narrowed[f"net.{key}"]
            value = torch.zeros_like(full).index_copy(dim, torch.tensor(index), value)
        state[key] = value
    net.load_state_dict(state)
    return net


def _full_size_net(layer: Any, conditional: bool) -> MLP | ConvNet:
    """The conditioner as flowkit built it before the fast path: all inputs, all outputs."""
    channels = layer.event_shape[0]
    inputs = channels + (NUM_CLASSES if conditional else 0)
    outputs = layer.elementwise_map.num_params * channels
    torch.manual_seed(2)
    if layer.conditioner_kind == "mlp":
        net: MLP | ConvNet = MLP(inputs, outputs, SMALL["hidden"], SMALL["num_hidden"])
    else:
        net = ConvNet(inputs, outputs, SMALL["hidden"], SMALL["num_blocks"])
    net = net.double()
    perturb(net, seed=3)  # every weight non-zero, the unused rows and columns included
    return net


def _masked_reference(
    layer: Any,
    net: MLP | ConvNet,
    x: Tensor,
    labels: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Dinh et al. 2017, eq. (9), computed with the full-size network, written out by hand."""
    mask = layer.mask.to(x.dtype)
    h = mask * x
    if labels is not None:
        h = append_labels(h, torch.nn.functional.one_hot(labels, NUM_CLASSES).to(x.dtype))
    out = net(h).reshape(x.shape[0], layer.elementwise_map.num_params, *layer.event_shape)
    if layer.elementwise_map.num_params == 1:
        return x + (1 - mask) * out[:, 0], torch.zeros(x.shape[0], dtype=x.dtype)
    log_scale = (1 - mask) * layer.scale * torch.tanh(out[:, 0])
    y = x * torch.exp(log_scale) + (1 - mask) * out[:, 1]
    return y, log_scale.flatten(1).sum(1)


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("case", SLICEABLE, ids=_case_id)
@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
def test_full_size_checkpoint_loads_and_keeps_its_function(
    cls: type,
    case: tuple[tuple[int, ...], dict[str, Any]],
    conditional: bool,
) -> None:
    shape, kwargs = case
    layer = _build(cls, shape, kwargs, conditional)
    net = _full_size_net(layer, conditional)
    old = {k: v for k, v in layer.state_dict().items() if not k.startswith("net.")}
    old.update({f"net.{k}": v.clone() for k, v in net.state_dict().items()})
    # the old checkpoint really is full-size: at least one tensor differs in shape
    assert any(old[k].shape != v.shape for k, v in layer.state_dict().items())

    fresh = _build(cls, shape, kwargs, conditional)
    fresh.load_state_dict(old, strict=True)
    x, labels = _inputs(shape, conditional)
    y, logdet = fresh(x, labels)
    y_ref, logdet_ref = _masked_reference(fresh, net, x, labels)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-12)
    x_back, _ = fresh.inverse(y, labels)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    # saved again, the checkpoint is the narrowed one and round-trips unchanged
    again = _build(cls, shape, kwargs, conditional)
    again.load_state_dict(fresh.state_dict(), strict=True)
    torch.testing.assert_close(again(x, labels)[0], y, rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in SLICEABLE if c[1]["mask"] != "alternate"], ids=_case_id)
def test_contiguous_halves_are_split_and_concatenated(
    case: tuple[tuple[int, ...], dict[str, Any]],
) -> None:
    """ "half" and "channel" masks cut the input with one ``split`` and join it with one ``cat``
    (no zero-filled full-size gradient buffers, no in-place writes into a fresh output)."""
    shape, kwargs = case
    layer = _build(AffineCoupling, shape, kwargs, conditional=False)
    x, _ = _inputs(shape, conditional=False)
    y, _ = layer(x.requires_grad_())
    assert type(y.grad_fn).__name__ == "CatBackward0"
    producers = {type(fn).__name__ for fn, _ in y.grad_fn.next_functions if fn is not None}
    assert "SplitWithSizesBackward0" in producers


def testscaled_tanh_is_scale_times_tanh():
    """The affine coupling's bounded log-scale, written with sigmoid, is ``scale ⊙ tanh``."""
    from flowkit.plugins.transforms.coupling import scaled_tanh

    x = torch.linspace(-30, 30, 2001, dtype=torch.float64).reshape(-1, 3)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(scaled_tanh(x, scale), scale * torch.tanh(x), rtol=0, atol=1e-15)
    x32, s32 = x.float(), scale.float()
    torch.testing.assert_close(scaled_tanh(x32, s32), s32 * torch.tanh(x32), rtol=0, atol=1e-6)
