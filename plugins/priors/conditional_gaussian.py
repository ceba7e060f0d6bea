"""A Gaussian prior whose mean and scale are functions of a real-valued context."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from torch import Tensor

from flowkit.context import ContextSpec
from flowkit.errors import ConfigError
from flowkit.params import Range
from flowkit.plugins.transforms.conditioners import MLP
from flowkit.prior import Prior
from flowkit.transform import Shape, sum_except_batch

_LOG_2PI = math.log(2.0 * math.pi)


class ConditionalGaussian(Prior):
    """``p(z | h) = N(z; μ(h), diag σ(h)²)`` with ``(μ, log σ) = MLP(h)`` of the embedded context.

    ``log p(z | h) = −½ Σ_i [((z_i − μ_i)/σ_i)² + 2 log σ_i + log 2π]``; reparameterised samples
    ``z = μ(h) + T·σ(h) ⊙ ε``. The network (``num_hidden`` ReLU layers of ``hidden`` units) ends
    in a zero-initialised layer, so the prior starts as ``N(0, I)`` for every context, and
    ``log σ`` is soft-clamped to ``[−5, 5]`` (``5 tanh(·/5)``). A conditional base density, as in
    the conditional flows of Winkler et al. 2019, "Learning likelihoods with conditional
    normalizing flows", §3 (their conditional base distribution).

    It reads the model's embedded context ``h`` of shape ``(B, context_features)``; flowkit
    injects ``context_features`` when the data has a real-valued context.

    References:

    * Winkler, Worrall, Hoogeboom & Welling 2019, "Learning Likelihoods with Conditional Normalizing Flows",
      arXiv:1912.00042.

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``context_features`` (injected): the width of the embedded context ``h``; required; flowkit sets it.
    * ``hidden`` (int ≥ 1, default 64): hidden units of the MLP.
    * ``num_hidden`` (int ≥ 1, default 2): hidden ReLU layers of the MLP.

    Example::

        >>> import torch
        >>> from flowkit.plugins.priors.conditional_gaussian import ConditionalGaussian
        >>> from flowkit.plugins.priors.gaussian import StandardGaussian
        >>> prior = ConditionalGaussian((2,), context_features=3, hidden=16)
        >>> z, h = torch.randn(4, 2), torch.randn(4, 3)
        >>> torch.allclose(prior.log_prob(z, h), StandardGaussian((2,)).log_prob(z))  # starts at N(0, I)
        True
        >>> prior.sample(4, context=h).shape
        torch.Size([4, 2])
    """

    vector_conditional: ClassVar[bool] = True

    def __init__(
        self,
        shape: Shape,
        context_features: int | None = None,
        *,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
    ) -> None:
        super().__init__(shape)
        if context_features is None:
            raise ConfigError(
                "prior 'conditional-gaussian' needs a real-valued context (a dataset with a "
                "context, e.g. data=table with data.context_columns); use 'gaussian' for data "
                "without one"
            )
        self.spec = ContextSpec("vector", int(context_features))
        self.net = MLP(self.spec.width, 2 * self.dim, hidden, num_hidden)

    def _loc_log_scale(self, n: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        like = self._anchor.new_empty(n, 0)
        h = self.spec.features(context, like, "ConditionalGaussian prior")
        loc, raw = self.net(h).chunk(2, dim=1)
        log_scale = 5.0 * torch.tanh(raw / 5.0)
        return loc.reshape(n, *self.shape), log_scale.reshape(n, *self.shape)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        loc, log_scale = self._loc_log_scale(z.shape[0], context)
        u = (z - loc) * torch.exp(-log_scale)
        return -0.5 * sum_except_batch(u.pow(2) + 2.0 * log_scale + _LOG_2PI)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        loc, log_scale = self._loc_log_scale(n, context)
        eps = torch.randn(n, *self.shape, device=self.device, dtype=self.dtype)
        return loc + temperature * torch.exp(log_scale) * eps

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        if context is None:
            return None
        loc, log_scale = self._loc_log_scale(n, context)
        return loc, torch.exp(log_scale)
