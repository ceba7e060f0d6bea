"""Permutations and the squeeze: exact index mappings, inverses, zero log-determinants."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.autograd.functional import jacobian

from flowkit.errors import ShapeError
from flowkit.plugins.transforms.permutation import RandomPermutation, ReversePermutation
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.registry import transforms
from flowkit.transform import Transform

SHAPES = [(5,), (3, 2, 2), (4, 2, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cls", [RandomPermutation, ReversePermutation])
def test_permutations_invert_with_zero_logdet(
    cls: type[Transform],
    shape: tuple[int, ...],
) -> None:
    layer = cls(shape)
    x = torch.randn(4, *shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.dtype == torch.float64 and not logdet.any()
    # dimension 1 is permuted: every slice along it is moved whole
    if isinstance(layer, RandomPermutation):
        order = layer.perm.tolist()
    else:
        order = list(range(shape[0]))[::-1]
    assert torch.equal(y, x[:, order])
    x_back, logdet_inv = layer.inverse(y)
    assert torch.equal(x_back, x) and not logdet_inv.any()
    assert layer.volume_preserving


def test_reverse_is_a_flip() -> None:
    x = torch.arange(12.0).reshape(1, 3, 2, 2)
    y, _ = ReversePermutation((3, 2, 2))(x)
    assert torch.equal(y[0, 0], x[0, 2]) and torch.equal(y[0, 2], x[0, 0])


def test_random_permutation_is_seeded_and_stored() -> None:
    a = RandomPermutation((8,), permutation_seed=3)
    b = transforms.build("permute", {"permutation_seed": 3}, injected={"event_shape": (8,)})
    assert torch.equal(a.perm, b.perm)
    assert sorted(a.perm.tolist()) == list(range(8))
    assert torch.equal(a.perm[a.inv_perm], torch.arange(8))
    seeds = [RandomPermutation((8,), permutation_seed=s).perm for s in range(4)]
    assert any(not torch.equal(seeds[0], p) for p in seeds[1:])
    assert {"perm", "inv_perm"} <= set(a.state_dict())
    x = torch.arange(8.0).unsqueeze(0)
    assert a(x)[0][0].tolist() == a.perm.float().tolist()


def test_squeeze_exact_index_mapping() -> None:
    x = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    y, _ = Squeeze((1, 2, 2))(x)
    assert y.shape == (1, 4, 1, 1)
    assert y.flatten().tolist() == [0, 1, 2, 3]  # channel 2i + j holds offset (i, j)

    c, h, w = 2, 4, 6
    x = torch.arange(float(c * h * w)).reshape(1, c, h, w)
    layer = Squeeze((c, h, w))
    y, logdet = layer(x)
    assert layer.output_shape == (4 * c, h // 2, w // 2) and y.shape == (1, *layer.output_shape)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                for r in range(h // 2):
                    for s in range(w // 2):
                        assert y[0, 4 * ch + 2 * i + j, r, s] == x[0, ch, 2 * r + i, 2 * s + j]
    x_back, logdet_inv = layer.inverse(y)
    assert torch.equal(x_back, x) and not logdet.any() and not logdet_inv.any()


@pytest.mark.parametrize(
    "layer", [Squeeze((1, 2, 4)), RandomPermutation((3, 2, 2)), ReversePermutation((6,))]
)
def test_jacobian_is_a_permutation(layer: Transform) -> None:
    x = torch.randn(1, *layer.event_shape, dtype=torch.float64)
    jac = jacobian(lambda v: layer(v.reshape(x.shape))[0].reshape(-1), x.reshape(-1))
    assert torch.equal(jac.abs().sum(0), torch.ones(x.numel(), dtype=torch.float64))
    assert torch.linalg.slogdet(jac)[1].abs() < 1e-12


def test_shape_errors_name_both_shapes() -> None:
    with pytest.raises(ShapeError, match=r"\(1, 3, 4\)"):
        Squeeze((1, 3, 4))
    with pytest.raises(ShapeError, match=r"\(8,\)"):
        Squeeze((8,))
    with pytest.raises(ShapeError, match=r"\(2, 4\)"):
        RandomPermutation((2, 4))
    layer = Squeeze((1, 4, 4))
    with pytest.raises(ShapeError) as err:
        layer(torch.randn(2, 1, 4, 6))
    assert "1, 4, 4" in str(err.value) and "(2, 1, 4, 6)" in str(err.value)
    with pytest.raises(ShapeError) as err:
        layer.inverse(torch.randn(2, 1, 4, 4))
    assert "4, 2, 2" in str(err.value) and "(2, 1, 4, 4)" in str(err.value)
    with pytest.raises(ShapeError, match=r"\(2, 6\)"):
        ReversePermutation((5,))(torch.randn(2, 6))


def test_pickle_round_trip() -> None:
    for layer in (RandomPermutation((5,), permutation_seed=1), ReversePermutation((5,)), Squeeze((1, 2, 2))):
        clone = pickle.loads(pickle.dumps(layer))
        x = torch.randn(2, *layer.event_shape)
        assert torch.equal(clone(x)[0], layer(x)[0])
