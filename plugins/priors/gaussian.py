"""Gaussian priors: the fixed standard normal and a learnable diagonal Gaussian."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowkit.prior import Prior
from flowkit.transform import Shape, sum_except_batch

_LOG_2PI = math.log(2.0 * math.pi)


class StandardGaussian(Prior):
    """Standard normal N(0, I), the usual flow prior.

    ``log p(z) = −½ Σ_i (z_i² + log 2π)``. Samples ``z = T·ε`` with ``ε ~ N(0, I)`` and
    temperature ``T`` (Kingma & Dhariwal 2018, "Glow", §5: lower T trades diversity for quality).
    """

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        # the constant added once per example, not to every scalar: one pass over z fewer
        return -0.5 * (sum_except_batch(z.square()) + math.prod(z.shape[1:]) * _LOG_2PI)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        eps = torch.randn(n, *self.shape, device=self.device, dtype=self.dtype)
        return eps if temperature == 1.0 else eps.mul_(temperature)

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(n, *self.shape, device=self.device, dtype=self.dtype)
        return zeros, torch.ones_like(zeros)


class DiagonalGaussian(Prior):
    """Learnable diagonal Gaussian N(μ, diag σ²) with σ = exp(log σ).

    ``log p(z) = −½ Σ_i [((z_i − μ_i)/σ_i)² + 2 log σ_i + log 2π]``; reparameterised samples
    ``z = μ + T·σ ⊙ ε`` so gradients reach μ and σ (Kingma & Welling 2014, §2.4). Starts at N(0, I).
    """

    def __init__(self, shape: Shape, num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.loc = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.zeros(self.shape))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return -0.5 * sum_except_batch(u.pow(2) + 2.0 * self.log_scale + _LOG_2PI)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        eps = torch.randn(n, *self.shape, device=self.device, dtype=self.dtype)
        return self.loc + temperature * torch.exp(self.log_scale) * eps

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc = self.loc.expand(n, *self.shape)
        return loc, torch.exp(self.log_scale).expand(n, *self.shape)
