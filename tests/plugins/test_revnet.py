"""The GRN transforms: reversible block, checkerboard subsample, padding and the revnet builder."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.transforms.revnet import GRNSubsample, RevNet, RevNetBlock, ZeroPad
from flowkit.registry import transforms
from flowkit.testing import check_transform, perturb_parameters
from flowkit.transform import Transform

SMALL_REVNET = {"widths": [4, 6], "blocks_per_stage": 2, "kernel_sizes": [3, 1]}
MNIST = {
    "pad_to": 32,
    "widths": [25, 50, 100, 200],
    "blocks_per_stage": 2,
    "kernel_sizes": 3,
    "init": "xavier",
}
CELEBA = {
    "chunk_first_at_first": False,
    "widths": [25, 50, 100, 200, 400, 400],
    "blocks_per_stage": [2, 2, 2, 2, 2, 1],
    "kernel_sizes": [3, 3, 3, 3, 3, 1],
}

# (class, event_shape, keyword arguments): all dimension preserving, small enough for Jacobians
CASES: list[tuple[type[Transform], tuple[int, ...], dict[str, Any]]] = [
    (RevNetBlock, (4, 3, 4), {"hidden": 5}),
    (RevNetBlock, (2, 4, 4), {"hidden": 3, "kernel_size": 1, "init": "xavier"}),
    (RevNetBlock, (6,), {"hidden": 7, "kernel_size": 1}),
    (GRNSubsample, (1, 4, 4), {}),
    (GRNSubsample, (3, 2, 4), {}),
    (GRNSubsample, (4, 2, 2), {"chunk_first": False}),
    (RevNet, (1, 4, 4), SMALL_REVNET),
    (RevNet, (3, 4, 4), {**SMALL_REVNET, "chunk_first_at_first": False, "init": "xavier"}),
]


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(cls: type[Transform], shape: tuple[int, ...], kwargs: dict[str, Any]) -> Transform:
    torch.manual_seed(0)
    module = cls(shape, **kwargs)
    perturb_parameters(module, 0.2, generator=torch.Generator().manual_seed(1))
    return module


def jacobian_logdet(t: Transform, x: Tensor) -> Tensor:
    """``log|det ∂t(x)/∂x|`` per example, by autograd."""
    values = []
    for i in range(x.shape[0]):

        def flat(v: Tensor) -> Tensor:
            return t(v.reshape(1, *x.shape[1:]))[0].reshape(-1)

        values.append(torch.linalg.slogdet(jacobian(flat, x[i].reshape(-1)))[1])
    return torch.stack(values)


@pytest.fixture
def registered() -> Iterator[None]:
    """The three entry points, registered at runtime (the editable install may predate them)."""
    names = {"revnet-block": RevNetBlock, "grn-subsample": GRNSubsample, "revnet": RevNet}
    for name, cls in names.items():
        transforms.register(name, cls)
    yield
    for name in names:
        transforms.unregister(name)


# -- invertibility and log-determinants ---------------------------------------------------------
@pytest.mark.parametrize(("cls", "shape", "kwargs"), CASES)
def test_exact_inverse_in_float32(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    module = build(cls, shape, kwargs)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2)) * 2
    z = torch.randn(5, *module.output_shape, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        y, logdet = module(x)
        x_back, logdet_inv = module.inverse(y)
        z_back = module(module.inverse(z)[0])[0]
    assert y.shape == (5, *module.output_shape) and y.dtype == torch.float32
    scale = max(1.0, float(x.abs().max()), float(y.abs().max()))
    assert float((x_back - x).abs().max()) <= 1e-5 * scale
    assert float((z_back - z).abs().max()) <= 1e-5 * max(scale, float(z.abs().max()))
    assert not logdet.any() and not logdet_inv.any()


@pytest.mark.parametrize(("cls", "shape", "kwargs"), CASES)
def test_logdet_is_zero_and_matches_the_jacobian(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    module = build(cls, shape, kwargs).double()
    assert module.volume_preserving
    x = torch.randn(2, *shape, dtype=torch.float64)
    y, logdet = module(x)
    assert torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(jacobian_logdet(module, x), logdet, atol=1e-9)
    inverse = module.inverse
    _, logdet_inv = inverse(y)
    assert torch.equal(logdet_inv, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("cls", "shape", "params"),
    [
        (RevNetBlock, (4, 2, 2), {"hidden": 3}),
        (RevNetBlock, (4,), {"hidden": 3, "kernel_size": 1}),
        (GRNSubsample, (3, 2, 4), {"chunk_first": True}),
        (RevNet, (2, 4, 4), {"widths": [3, 3], "blocks_per_stage": [1, 2], "init": "xavier"}),
    ],
)
def test_conformance_checks_pass(
    cls: type[Transform],
    shape: tuple[int, ...],
    params: dict[str, Any],
) -> None:
    check_transform(cls, shape, params)


# -- the reversible block -------------------------------------------------------------------------
def test_block_formula_and_half_swap() -> None:
    block = build(RevNetBlock, (4, 3, 3), {"hidden": 6})
    x = torch.randn(2, 4, 3, 3)
    a, b = x[:, :2], x[:, 2:]
    y, _ = block(x)
    y1 = b + block.f(a)
    assert torch.allclose(y[:, :2], y1) and torch.allclose(y[:, 2:], a + block.g(y1))
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    y, _ = block(x)
    assert torch.equal(y, torch.cat([b, a], dim=1))  # F = G = 0 swaps the halves


def test_block_networks_and_init() -> None:
    block = RevNetBlock((6, 4, 4), hidden=10, kernel_size=5, init="xavier")
    assert block.f is not block.g
    conv1, relu, conv2 = block.f
    assert isinstance(relu, nn.ReLU)
    assert conv1.weight.shape == (10, 3, 5, 5) and conv1.padding == (2, 2)
    assert conv2.weight.shape == (3, 10, 5, 5)
    assert not conv1.bias.any() and not conv2.bias.any()
    bound = (6 / (3 * 25 + 10 * 25)) ** 0.5  # Xavier-uniform, gain 1
    assert float(conv1.weight.detach().abs().max()) <= bound
    default = RevNetBlock((6, 4, 4), hidden=10, kernel_size=5)
    assert default.f[0].bias.any()  # PyTorch's own init: uniform biases


def test_block_context_is_ignored() -> None:
    block = build(RevNetBlock, (2, 2, 2), {"hidden": 3})
    x = torch.randn(3, 2, 2, 2)
    assert torch.equal(block(x)[0], block(x, torch.tensor([0, 1, 2]))[0])


@pytest.mark.parametrize(
    ("shape", "kwargs", "error"),
    [
        ((3, 4, 4), {}, ShapeError),
        ((5,), {}, ShapeError),
        ((1, 4, 4), {}, ShapeError),
        ((4, 4), {}, ShapeError),
        ((2, 4, 4), {"kernel_size": 2}, ConfigError),
        ((2, 4, 4), {"hidden": 0}, ConfigError),
    ],
)
def test_block_rejects_bad_shapes_and_params(
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    with pytest.raises(error) as info:
        RevNetBlock(shape, **kwargs)
    if error is ShapeError and len(shape) != 2:
        assert "even" in str(info.value) and str(shape) in str(info.value)


# -- the subsample: exact index mappings of the reference ----------------------------------------
def pixels(c: int, h: int, w: int) -> Tensor:
    """``(1, c, h, w)`` whose entry holds its own flat index ``c·h·w + r·w + s``."""
    return torch.arange(float(c * h * w)).reshape(1, c, h, w)


def test_subsample_worked_4x4_example() -> None:
    x = pixels(1, 4, 4)  # pixel (r, c) holds 4r + c
    first = GRNSubsample((1, 4, 4))  # chunk-first is a no-op for one channel
    y1, _ = first(x)
    assert y1[0].tolist() == [[[0, 2], [8, 10]], [[5, 7], [13, 15]], [[1, 3], [9, 11]], [[4, 6], [12, 14]]]
    y2, _ = GRNSubsample((4, 2, 2))(y1)
    assert y2.shape == (1, 16, 1, 1)
    assert y2.flatten().tolist() == [0, 5, 10, 15, 2, 7, 8, 13, 1, 4, 11, 14, 3, 6, 9, 12]
    # the output channel index at each pixel position: channels 0-7 are the r + c even pixels
    where = torch.empty(16)
    where[y2.flatten().long()] = torch.arange(16.0)
    assert where.reshape(4, 4).tolist() == [[0, 8, 4, 12], [9, 1, 13, 5], [6, 14, 2, 10], [15, 7, 11, 3]]
    # without chunk-first at split 2, stream 1 = the top-left and bottom-right 2×2 blocks
    y2_plain, _ = GRNSubsample((4, 2, 2), chunk_first=False)(y1)
    assert y2_plain.flatten().tolist() == [0, 5, 1, 4, 10, 15, 11, 14, 2, 7, 3, 6, 8, 13, 9, 12]
    assert sorted(y2_plain.flatten()[:8].tolist()) == [0, 1, 4, 5, 10, 11, 14, 15]
    for layer, inp, out in ((first, x, y1), (GRNSubsample((4, 2, 2)), y1, y2)):
        assert torch.equal(layer.inverse(out)[0], inp)


def test_subsample_rgb_first_split_without_chunk() -> None:
    x = pixels(3, 4, 6)
    layer = GRNSubsample((3, 4, 6), chunk_first=False)
    y, logdet = layer(x)
    assert layer.output_shape == (12, 2, 3) and not logdet.any()
    phases = [(0, 0), (1, 1), (0, 1), (1, 0)]  # [RGB@(0,0), RGB@(1,1), RGB@(0,1), RGB@(1,0)]
    for p, (i, j) in enumerate(phases):
        for c in range(3):
            assert torch.equal(y[0, 3 * p + c], x[0, c, i::2, j::2])
    assert torch.equal(layer.inverse(y)[0], x)


def test_subsample_chunk_first_general_rule() -> None:
    x = pixels(4, 2, 4)
    y, _ = GRNSubsample((4, 2, 4))(x)
    phases = [(0, 0), (1, 1), (0, 1), (1, 0)]
    for half in range(2):  # [sub(channels 0-1); sub(channels 2-3)]
        for p, (i, j) in enumerate(phases):
            for c in range(2):
                assert torch.equal(y[0, 8 * half + 2 * p + c], x[0, 2 * half + c, i::2, j::2])
    # odd channel counts split like torch.chunk: the first half has one channel more
    odd = GRNSubsample((3, 2, 2))
    y_odd, _ = odd(pixels(3, 2, 2))
    assert odd.parts == (2, 1)
    assert y_odd.flatten().tolist() == [0, 4, 3, 7, 1, 5, 2, 6, 8, 11, 9, 10]


def test_subsample_rejects_odd_sizes_and_vectors() -> None:
    with pytest.raises(ShapeError, match=r"even height and width.*\(2, 3, 4\)"):
        GRNSubsample((2, 3, 4))
    with pytest.raises(ShapeError, match="images"):
        GRNSubsample((8,))
    layer = GRNSubsample((1, 2, 2))
    with pytest.raises(ShapeError, match="expects inputs of shape"):
        layer(torch.zeros(1, 1, 4, 4))


# -- the architecture ------------------------------------------------------------------------------
def test_revnet_structure_and_flatten_order() -> None:
    model = RevNet((1, 4, 4), widths=[3, 5], blocks_per_stage=[1, 2], kernel_sizes=[3, 1])
    kinds = [type(step).__name__ for step in model.flow]
    assert kinds == ["GRNSubsample", "RevNetBlock", "GRNSubsample", "RevNetBlock", "RevNetBlock", "Reshape"]
    hidden = [(s.hidden, s.kernel_size) for s in model.flow if isinstance(s, RevNetBlock)]
    assert hidden == [(3, 3), (5, 1), (5, 1)]
    assert model.output_shape == (16,) and model.volume_preserving
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    z, _ = model(pixels(1, 4, 4))
    # F = G = 0: split 1, one block swaps the halves, split 2 (chunk-first), two blocks restore the order
    x = pixels(1, 4, 4)
    swapped = torch.cat(
        [
            x[:, :, 0::2, 1::2],
            x[:, :, 1::2, 0::2],  # phases (0,1), (1,0) first
            x[:, :, 0::2, 0::2],
            x[:, :, 1::2, 1::2],
        ],
        dim=1,
    )
    expected, _ = GRNSubsample((4, 2, 2))(swapped)
    assert torch.equal(z, expected.reshape(1, 16))

    # the flatten index is c·h·w + i·w + j
    wide = RevNet((1, 4, 8), widths=[2], blocks_per_stage=1)
    with torch.no_grad():
        for p in wide.parameters():
            p.zero_()
    before_flatten = unflattened(wide, pixels(1, 4, 8))
    z, _ = wide(pixels(1, 4, 8))
    c, h, w = before_flatten.shape[1:]
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                assert z[0, ch * h * w + i * w + j] == before_flatten[0, ch, i, j]


def unflattened(model: RevNet, x: Tensor) -> Tensor:
    """The revnet's output just before its final flatten."""
    for step in list(model.flow)[:-1]:
        x = step(x)[0]
    return x


def test_revnet_padding_round_trip() -> None:
    model = build(RevNet, (1, 6, 6), {"widths": [4, 4], "pad_to": 8})
    assert isinstance(model.flow.steps[0], ZeroPad)
    assert model.output_shape == (64,)
    x = torch.randn(4, 1, 6, 6)
    with torch.no_grad():
        z, logdet = model(x)
        x_back, logdet_inv = model.inverse(z)
    assert x_back.shape == x.shape
    assert float((x_back - x).abs().max()) <= 1e-5 * max(1.0, float(z.abs().max()))
    assert not logdet.any() and not logdet_inv.any()
    assert model.inverse(torch.randn(2, 64))[0].shape == (2, 1, 6, 6)

    pad = ZeroPad((2, 3, 4), size=6)
    x = torch.randn(2, 2, 3, 4)
    padded, logdet = pad(x)
    assert padded.shape == (2, 2, 6, 6) and not logdet.any() and pad.border_dim == 2 * 36 - 24
    assert torch.equal(padded[:, :, 1:4, 1:5], x)  # ⌊(6−3)/2⌋ = 1 row on top, 1 column left
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[1:4, 1:5] = False
    assert not padded[:, :, mask].any()
    assert torch.equal(pad.inverse(padded)[0], x)
    # pad_to equal to the image size is no padding at all
    same = RevNet((1, 4, 4), widths=[2, 2], pad_to=4)
    assert not any(isinstance(s, ZeroPad) for s in same.flow)


def test_reference_architectures_latent_sizes_and_parameter_counts() -> None:
    torch.manual_seed(0)
    mnist = RevNet((1, 28, 28), **MNIST)
    assert mnist.output_shape == (1024,)
    assert abs(num_parameters(mnist) - 2.11e6) <= 0.01 * 2.11e6
    assert [type(s).__name__ for s in mnist.flow][:2] == ["ZeroPad", "GRNSubsample"]
    widths = [s.hidden for s in mnist.flow if isinstance(s, RevNetBlock)]
    assert widths == [25, 25, 50, 50, 100, 100, 200, 200]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        z, _ = mnist(x)
        assert torch.allclose(mnist.inverse(z)[0], x, atol=1e-5)

    celeba = RevNet((3, 64, 64), **CELEBA)
    assert celeba.output_shape == (12288,)
    assert abs(num_parameters(celeba) - 60.4e6) <= 0.01 * 60.4e6
    subsamples = [s for s in celeba.flow if isinstance(s, GRNSubsample)]
    assert [s.chunk_first for s in subsamples] == [False] + [True] * 5
    last = [s for s in celeba.flow if isinstance(s, RevNetBlock)][-1]
    assert last.event_shape == (12288, 1, 1) and last.kernel_size == 1 and last.hidden == 400
    start = time.perf_counter()
    with torch.no_grad():
        z, logdet = celeba(torch.rand(2, 3, 64, 64))
    assert z.shape == (2, 12288) and not logdet.any()
    assert time.perf_counter() - start < 10  # ~0.5 s normally; generous on a busy machine


def test_revnet_default_fits_8x8_digits() -> None:
    model = RevNet((1, 8, 8))
    assert model.widths == (16, 32, 64) and model.output_shape == (64,)
    assert model.flow.steps[-2].event_shape == (64, 1, 1)


@pytest.mark.parametrize(
    ("shape", "kwargs", "pattern"),
    [
        ((1, 28, 28), {"widths": [4, 4, 4]}, r"2\^3 = 8.*\(1, 28, 28\).*pad_to = 32.*at most 2"),
        ((1, 28, 28), {"widths": [4] * 4, "pad_to": 30}, r"30×30 after padding.*pad_to = 32"),
        ((1, 6, 6), {"widths": [4, 4]}, r"2\^2 = 4.*pad_to = 8.*at most 1"),
    ],
)
def test_revnet_size_errors_suggest_padding_or_fewer_stages(
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
    pattern: str,
) -> None:
    with pytest.raises(ShapeError, match=pattern):
        RevNet(shape, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"widths": []}, "at least one stage"),
        ({"widths": [4, 0]}, r"RevNet: widths\[1\] must be at least 1, got 0"),
        ({"widths": [4, 4], "blocks_per_stage": [2]}, "blocks_per_stage has 1 entries"),
        ({"widths": [4, 4], "kernel_sizes": [3, 3, 1]}, "kernel_sizes has 3 entries"),
        (
            {"widths": [4], "kernel_sizes": 4},
            r"kernel_sizes must be an odd number \(padding k//2 "
            r"keeps the image size; use e\.g\. 1 or 3\), got 4",
        ),
        ({"widths": [4], "kernel_sizes": [0]}, r"kernel_sizes\[0\] must be at least 1, got 0"),
        ({"widths": [4], "blocks_per_stage": 0}, r"blocks_per_stage must be at least 1, got 0"),
        ({"widths": [4], "pad_to": 2}, "at least the image height"),
        ({"widths": [4], "pad_to": -1}, "pad_to must be at least 0"),
    ],
)
def test_revnet_config_errors(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        RevNet((1, 4, 4), **kwargs)


def test_revnet_rejects_vectors() -> None:
    with pytest.raises(ShapeError, match="images"):
        RevNet((16,))


def test_build_through_the_registry(registered: None) -> None:
    model = transforms.build(
        "revnet",
        {"widths": [25, 50, 100, 200], "pad_to": 32, "init": "xavier"},
        injected={"event_shape": (1, 28, 28), "num_classes": 10},
    )
    assert isinstance(model, RevNet) and model.output_shape == (1024,)
    block = transforms.build("revnet-block", {"hidden": 8}, injected={"event_shape": (4, 2, 2)})
    assert isinstance(block, RevNetBlock) and block.hidden == 8
    sub = transforms.build("grn-subsample", {"chunk_first": False}, injected={"event_shape": (3, 4, 4)})
    assert sub.output_shape == (12, 2, 2) and not sub.chunk_first
    with pytest.raises(ConfigError, match="init must be one of"):
        transforms.build("revnet", {"init": "xavir"}, injected={"event_shape": (1, 8, 8)})
    with pytest.raises(ConfigError, match="widths"):
        transforms.build("revnet", {"widths": 16}, injected={"event_shape": (1, 8, 8)})
    for name in ("revnet-block", "grn-subsample", "revnet"):
        assert transforms.entry(name).summary()  # a one-line docstring summary for `flowkit list`


def test_pickle_and_float64() -> None:
    model = build(RevNet, (1, 4, 4), {**SMALL_REVNET, "pad_to": 0})
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(clone(x)[0], model(x)[0])
    padded = RevNet((1, 6, 6), widths=[2], pad_to=8).double()
    z, logdet = padded(torch.randn(2, 1, 6, 6, dtype=torch.float64))
    assert z.dtype == logdet.dtype == torch.float64
