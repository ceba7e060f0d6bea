"""The GRN priors: per-class learnable Gaussians (``class-gaussian``) and ``restricted``."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Normal

from flowkit import registry
from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.priors.class_gaussian import ClassGaussian
from flowkit.plugins.priors.restricted import RestrictedGaussian
from flowkit.prior import Prior


def _round_trip(prior: Prior, fresh: Prior) -> Prior:
    """Save ``prior``'s state dict to bytes and load it, weights only, into ``fresh``."""
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def _class_data(n_per_class: int = 50) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    means = torch.tensor([[0.0, 1.0, 2.0, 3.0], [10.0, 0.0, -5.0, 1.0], [-3.0, 3.0, 0.0, 0.0]])
    stds = torch.tensor([[1.0, 0.5, 2.0, 0.1], [0.2, 3.0, 1.0, 1.0], [1.0, 1.0, 0.3, 5.0]])
    z = means[labels] + stds[labels] * torch.randn(len(labels), 4, generator=gen)
    return z, labels


# -- class-gaussian ------------------------------------------------------------------------------
def test_class_gaussian_starts_as_standard_normal() -> None:
    prior = ClassGaussian((4,), 3)
    assert prior.conditional and prior.needs_data_init and not bool(prior.initialized)
    z, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(prior.log_prob(z, labels), Normal(0.0, 1.0).log_prob(z).sum(1))


def test_class_gaussian_initialises_per_class() -> None:
    prior = ClassGaussian((4,), 3)
    z, labels = _class_data()
    prior.initialize(z, labels)
    assert bool(prior.initialized)
    for c in range(3):
        torch.testing.assert_close(prior.loc[c], z[labels == c].mean(0))
        torch.testing.assert_close(prior.scale[c], z[labels == c].std(0, unbiased=True))
    torch.testing.assert_close(prior.class_mean_scale(), prior.scale.detach().mean(0))
    assert prior.class_mean_scale().shape == (4,)


def test_class_gaussian_samples_per_class_and_reparameterises() -> None:
    prior = ClassGaussian((2, 2), 2)
    with torch.no_grad():
        prior.loc[0].fill_(-5.0)
        prior.loc[1].fill_(5.0)
        prior.scale[1].fill_(0.5)
    labels = torch.tensor([0, 1] * 2000)
    s = prior.sample(len(labels), labels)
    assert s.shape == (4000, 2, 2)
    torch.testing.assert_close(s[labels == 0].mean(0), torch.full((2, 2), -5.0), atol=0.1, rtol=0)
    torch.testing.assert_close(s[labels == 1].std(0), torch.full((2, 2), 0.5), atol=0.05, rtol=0)
    torch.testing.assert_close(
        prior.sample(2, labels[:2], temperature=0.0).detach(), prior.loc[labels[:2]].detach()
    )
    s.sum().backward()  # reparameterised: gradients reach loc and scale
    assert prior.loc.grad is not None and prior.scale.grad is not None
    assert float(prior.loc.grad.abs().sum()) > 0 and float(prior.scale.grad.abs().sum()) > 0


def test_class_gaussian_moments() -> None:
    prior = ClassGaussian((4,), 3)
    z, labels = _class_data()
    prior.initialize(z, labels)
    mean, std = prior.moments(3, torch.tensor([2, 0, 2]))
    torch.testing.assert_close(mean, prior.loc[[2, 0, 2]])
    torch.testing.assert_close(std, prior.scale[[2, 0, 2]])
    assert torch.equal(prior.project(z), z)
    with pytest.raises(ShapeError, match="class labels"):
        prior.moments(3)


def test_class_gaussian_after_step_clamps_scale_in_place() -> None:
    prior = ClassGaussian((3,), 2)
    scale = prior.scale
    with torch.no_grad():
        prior.scale.copy_(torch.tensor([[-1.0, 0.5, 2.0], [0.0, -0.1, 1.0]]))
    prior.after_step()
    assert prior.scale is scale
    torch.testing.assert_close(prior.scale.detach(), torch.tensor([[0.0, 0.5, 2.0], [0.0, 0.0, 1.0]]))


def test_class_gaussian_log_prob_matches_hand_computed() -> None:
    prior = ClassGaussian((3,), 2, min_scale=1e-3).double()
    loc = torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    scale = torch.tensor([[0.5, 2.0, 0.0], [1.0, 0.1, 3.0]], dtype=torch.float64)
    with torch.no_grad():
        prior.loc.copy_(loc)
        prior.scale.copy_(scale)
    z = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    floored = scale.clamp_min(1e-3)  # the collapsed dimension uses min_scale
    expected = -0.5 * (
        ((z - loc[labels]) / floored[labels]) ** 2 + 2 * floored[labels].log() + math.log(2 * math.pi)
    ).sum(1)
    got = prior.log_prob(z, labels)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got).all()


def test_class_gaussian_state_dict_round_trip_keeps_init() -> None:
    prior = ClassGaussian((4,), 3)
    z, labels = _class_data()
    prior.initialize(z, labels)
    loaded = _round_trip(prior, ClassGaussian((4,), 3))
    assert bool(loaded.initialized)
    torch.testing.assert_close(loaded.loc, prior.loc)
    torch.testing.assert_close(loaded.scale, prior.scale)


def test_class_gaussian_errors() -> None:
    with pytest.raises(ConfigError, match="labelled dataset"):
        ClassGaussian((4,), None)
    with pytest.raises(ConfigError, match="min_scale"):
        ClassGaussian((4,), 3, min_scale=0.0)
    prior = ClassGaussian((4,), 3)
    z, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 1, 2])
    with pytest.raises(ConfigError, match=r"class 2 has 1 example.*train\.init_examples"):
        prior.initialize(z, labels)
    with pytest.raises(ShapeError, match="class labels"):
        prior.sample(3)
    with pytest.raises(ShapeError, match="3 classes"):
        prior.log_prob(z, torch.tensor([0, 1, 2, 3, 0, 0]))
    with pytest.raises(ShapeError, match="shape"):
        prior.log_prob(torch.randn(2, 5), torch.tensor([0, 1]))


def test_class_gaussian_builds_from_registry() -> None:
    registry.priors.register("class-gaussian", ClassGaussian)
    try:
        prior = registry.priors.build(
            "class-gaussian", {"min_scale": 1e-3}, injected={"shape": (4,), "num_classes": 10}
        )
        assert isinstance(prior, ClassGaussian) and prior.loc.shape == (10, 4)
        with pytest.raises(ConfigError, match="unknown parameter"):
            registry.priors.build(
                "class-gaussian", {"min_scal": 1e-3}, injected={"shape": (4,), "num_classes": 10}
            )
    finally:
        registry.priors.unregister("class-gaussian")


# -- restricted ---------------------------------------------------------------------------------
def _restricted(shape: tuple[int, ...] = (2, 2, 2), k: int = 3) -> tuple[RestrictedGaussian, Tensor]:
    """An initialised restricted prior whose latent stds are 0.1·(1..8) in a shuffled order."""
    stds = 0.1 * torch.tensor([3.0, 8.0, 1.0, 6.0, 2.0, 7.0, 5.0, 4.0])
    z = (torch.randn(4000, 8, generator=torch.Generator().manual_seed(0)) * stds).view(-1, *shape)
    prior = RestrictedGaussian(shape, num_selected=k)
    prior.initialize(z)
    return prior, stds


def test_restricted_selects_top_k_std() -> None:
    prior, _ = _restricted()
    assert bool(prior.initialized) and not prior.conditional
    assert prior.selected.tolist() == [1, 5, 3]  # stds 0.8, 0.7, 0.6, in that order
    expected_mask = torch.zeros(8, dtype=torch.bool)
    expected_mask[[1, 3, 5]] = True
    assert torch.equal(prior.mask, expected_mask.view(2, 2, 2))
    assert torch.equal(prior.scale, expected_mask.view(2, 2, 2).float())
    assert torch.equal(prior.loc, torch.zeros(2, 2, 2))


def test_restricted_samples_zero_off_selection() -> None:
    prior, _ = _restricted()
    s = prior.sample(3000, temperature=0.5)
    flat = s.flatten(1)
    assert s.shape == (3000, 2, 2, 2)
    assert (flat[:, ~prior.mask.flatten()] == 0).all()
    torch.testing.assert_close(flat[:, prior.selected].std(0), torch.full((3,), 0.5), atol=0.03, rtol=0)
    torch.testing.assert_close(prior.select(s), flat[:, prior.selected])
    assert prior.select(s).shape == (3000, 3)


def test_restricted_clamp() -> None:
    prior, _ = _restricted()
    z = (3.0 * torch.randn(50, 2, 2, 2)).requires_grad_(True)
    out = prior.clamp(z, 2.0)
    flat, zf = out.flatten(1), z.detach().flatten(1)
    off = ~prior.mask.flatten()
    assert (flat[:, off] == 0).all()
    torch.testing.assert_close(flat[:, ~off], zf[:, ~off].clamp(-2.0, 2.0))
    out.sum().backward()
    assert z.grad is not None
    inside = (~off) & (zf.abs() < 2.0)
    assert torch.equal(z.grad.flatten(1), inside.float())  # gradient only where unclipped
    # the bounds are detached even when they would be tracked
    big = prior.clamp(z, 200.0)
    torch.testing.assert_close(big.flatten(1)[:, ~off], z.detach().flatten(1)[:, ~off])


def test_restricted_moments_and_project() -> None:
    prior, _ = _restricted()
    mean, std = prior.moments(2)
    assert mean.shape == std.shape == (2, 2, 2, 2)
    assert (mean == 0).all() and torch.equal(std[0], prior.scale)
    z = torch.randn(5, 2, 2, 2, requires_grad=True)
    projected = prior.project(z)
    assert (projected.flatten(1)[:, ~prior.mask.flatten()] == 0).all()
    torch.testing.assert_close(prior.select(projected), prior.select(z))
    projected.sum().backward()
    assert torch.equal(z.grad, prior.mask.float().expand(5, 2, 2, 2))


def test_restricted_log_prob_matches_hand_computed() -> None:
    prior, _ = _restricted()
    prior = prior.double()
    z = torch.randn(5, 2, 2, 2, dtype=torch.float64)
    flat = z.flatten(1)
    sel = prior.mask.flatten()
    expected = Normal(0.0, 1.0).log_prob(flat[:, sel]).sum(1) + Normal(0.0, 1e-2).log_prob(flat[:, ~sel]).sum(
        1
    )
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_restricted_selection_survives_save_and_load() -> None:
    prior, _ = _restricted()
    fresh = RestrictedGaussian((2, 2, 2), num_selected=3)
    assert fresh.selected.tolist() == [0, 1, 2] and not bool(fresh.initialized)
    loaded = _round_trip(prior, fresh)
    assert bool(loaded.initialized)
    assert loaded.selected.tolist() == [1, 5, 3]
    assert torch.equal(loaded.mask, prior.mask) and torch.equal(loaded.scale, prior.scale)
    assert loaded.selected.dtype == torch.long and loaded.mask.dtype == torch.bool
    assert (loaded.sample(4).flatten(1)[:, ~loaded.mask.flatten()] == 0).all()


def test_restricted_errors() -> None:
    with pytest.raises(ConfigError, match="latent size 8"):
        RestrictedGaussian((2, 2, 2), num_selected=9)
    with pytest.raises(ConfigError, match="num_selected"):
        RestrictedGaussian((8,), num_selected=0)
    with pytest.raises(ConfigError, match="off_scale"):
        RestrictedGaussian((8,), num_selected=2, off_scale=0.0)
    prior = RestrictedGaussian((8,), num_selected=2)
    with pytest.raises(ConfigError, match="init_examples"):
        prior.initialize(torch.randn(1, 8))
    with pytest.raises(ShapeError, match="shape"):
        prior.clamp(torch.randn(3, 7), 1.0)
