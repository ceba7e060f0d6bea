"""The standard logistic prior used by NICE."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from flowkit.prior import Prior
from flowkit.transform import sum_except_batch


class StandardLogistic(Prior):
    """Standard logistic distribution per dimension, as in NICE.

    ``log p(z) = −Σ_i [softplus(z_i) + softplus(−z_i)]`` (Dinh et al. 2015, "NICE", §3.4: its
    heavier tails give better-behaved gradients than a Gaussian). Samples by the inverse CDF
    ``z = T·(log u − log(1 − u))``, ``u ~ U(0, 1)``.

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``num_classes`` (injected): accepted for the common signature; the prior is unconditional.

    Example::

        >>> import math, torch
        >>> from flowkit.plugins.priors.logistic import StandardLogistic
        >>> prior = StandardLogistic((2,))
        >>> log_p = prior.log_prob(torch.zeros(1, 2)).item()
        >>> math.isclose(log_p, 2 * math.log(0.25), rel_tol=1e-6)  # p(0) = 1/4 per dimension
        True
        >>> _ = torch.manual_seed(0)
        >>> prior.sample(3).shape
        torch.Size([3, 2])
    """

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        return -sum_except_batch(F.softplus(z) + F.softplus(-z))

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        tiny = torch.finfo(self.dtype).tiny
        u = torch.rand(n, *self.shape, device=self.device, dtype=self.dtype).clamp(tiny, 1 - 1e-7)
        return temperature * (torch.log(u) - torch.log1p(-u))
