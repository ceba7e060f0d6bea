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

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.
    * Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan 2021, "Normalizing Flows for Probabilistic
      Modeling and Inference", Journal of Machine Learning Research 22(57).

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``num_classes`` (injected): accepted for the common signature; the prior is unconditional.

    Example::

        >>> import math, torch
        >>> from flowkit.plugins.priors.gaussian import StandardGaussian
        >>> prior = StandardGaussian((2,))
        >>> math.isclose(prior.log_prob(torch.zeros(1, 2)).item(), -math.log(2 * math.pi), rel_tol=1e-6)
        True
        >>> _ = torch.manual_seed(0)
        >>> prior.sample(4, temperature=0.5).shape
        torch.Size([4, 2])
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

    References:

    * Kingma & Welling 2014, "Auto-Encoding Variational Bayes", ICLR 2014.

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``num_classes`` (injected): accepted for the common signature; the prior is unconditional.

    Example::

        >>> import torch
        >>> from flowkit.plugins.priors.gaussian import DiagonalGaussian, StandardGaussian
        >>> prior = DiagonalGaussian((3,))
        >>> z = torch.randn(5, 3)
        >>> torch.allclose(prior.log_prob(z), StandardGaussian((3,)).log_prob(z))  # starts at N(0, I)
        True
        >>> sorted(name for name, _ in prior.named_parameters())
        ['loc', 'log_scale']
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
