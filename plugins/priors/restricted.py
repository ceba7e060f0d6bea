"""Restricted Gaussian prior: N(0, I) on the k highest-variance latent dims, 0 on the rest (GRN)."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from torch import Tensor

from flowkit.errors import ConfigError
from flowkit.params import Range
from flowkit.prior import Prior
from flowkit.transform import Shape, sum_except_batch

_LOG_2PI = math.log(2.0 * math.pi)


class RestrictedGaussian(Prior):
    """Fixed N(0, I_k) on the k latent dims of largest initial std, the other dims pinned at 0 (GRN).

    The CelebA prior of Schirrmeister et al. 2018, "Training Generative Reversible Networks"
    (arXiv:1806.01610; the authors' reference code): :meth:`initialize` computes the std of every
    (flattened) latent dimension of the *untrained* network over the init examples and keeps the
    ``num_selected`` largest (buffer ``selected``, sorted by std, descending; boolean buffer
    ``mask``). The prior has ``μ = 0`` everywhere and ``σ = 1`` on the selected dims, ``σ = 0``
    elsewhere (buffers ``loc`` and ``scale``; nothing is learned). Before initialisation the first
    ``num_selected`` flattened dims are selected.

    * :meth:`sample`: ``z_sel ~ N(0, T² I_k)``, every other dim exactly 0;
    * :meth:`clamp`: ``clamp_k(z) = min(max(z, μ − kσ), μ + kσ)`` with detached bounds, which sets
      the non-selected dims to exactly 0 and passes gradient only through unclipped entries;
    * :meth:`select`: the ``(B, k)`` selected coordinates (what a latent critic sees);
    * :meth:`project`: the non-selected dims set to 0 (reconstructions through the restricted
      latent); :meth:`moments` gives ``(μ, σ)`` for latent traversals.

    The restricted prior has no density on the full latent space (it lives on a k-dim subspace),
    so :meth:`log_prob` uses a proper surrogate that tends to it as ``off_scale → 0``:
    ``log p(z) = Σ_{d∈sel} log N(z_d; 0, 1) + Σ_{d∉sel} log N(z_d; 0, off_scale²)``.

    References:

    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``num_classes`` (injected): accepted for the common signature; the prior is unconditional.
    * ``num_selected`` (int ≥ 1, default 64): ``k``, the latent dims kept (those of largest initial std).
    * ``off_scale`` (float > 0, default 0.01): the std of the surrogate density on the other dims.

    Example::

        >>> import torch
        >>> from flowkit.plugins.priors.restricted import RestrictedGaussian
        >>> prior = RestrictedGaussian((4,), num_selected=2)
        >>> z = torch.randn(100, 4) * torch.tensor([0.1, 3.0, 0.2, 2.0])
        >>> prior.initialize(z)  # keeps the two dims of largest std
        >>> prior.selected.tolist()
        [1, 3]
        >>> _ = torch.manual_seed(0)
        >>> (prior.sample(5)[:, [0, 2]] == 0).all().item()
        True
    """

    needs_data_init: ClassVar[bool] = True
    # buffers (declared for type checkers: nn.Module types them Tensor | Module)
    selected: Tensor
    mask: Tensor
    loc: Tensor
    scale: Tensor

    def __init__(
        self,
        shape: Shape,
        num_classes: int | None = None,
        *,
        num_selected: Annotated[int, Range(1)] = 64,
        off_scale: Annotated[float, Range(0, min_inclusive=False)] = 1e-2,
    ) -> None:
        super().__init__(shape, num_classes)
        if not 1 <= num_selected <= self.dim:
            raise ConfigError(
                f"restricted: num_selected must be between 1 and the latent size {self.dim} "
                f"(latent shape {self.shape}), got {num_selected}; lower prior.num_selected"
            )
        self.num_selected = int(num_selected)
        self.off_scale = float(off_scale)
        self.register_buffer("selected", torch.arange(self.num_selected))
        self.register_buffer("mask", torch.zeros(self.shape, dtype=torch.bool))
        self.register_buffer("loc", torch.zeros(self.shape))
        self.register_buffer("scale", torch.zeros(self.shape))
        self._set_selection(self.selected)

    @torch.no_grad()
    def _set_selection(self, selected: Tensor) -> None:
        self.selected.copy_(selected)
        mask = torch.zeros(self.dim, dtype=torch.bool, device=self.mask.device)
        mask[self.selected] = True
        self.mask.copy_(mask.view(self.shape))
        self.loc.zero_()
        self.scale.copy_(self.mask.to(self.scale.dtype))

    @torch.no_grad()
    def initialize(self, z: Tensor, context: Tensor | None = None) -> None:
        """Select the ``num_selected`` flattened latent dims with the largest std over ``z``."""
        self.check_latent(z)
        if z.shape[0] < 2:
            raise ConfigError(
                f"restricted: the prior needs at least 2 examples to estimate latent stds, got "
                f"{z.shape[0]}; raise train.init_examples"
            )
        std = z.flatten(1).std(0, unbiased=True)
        order = torch.sort(std, descending=True, stable=True).indices[: self.num_selected]
        self._set_selection(order.to(self.selected.device))
        self.initialized.fill_(True)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        scale = torch.where(self.mask, self.scale, self.scale.new_tensor(self.off_scale))
        u = (z - self.loc) / scale
        return -0.5 * sum_except_batch(u.pow(2) + 2.0 * scale.log() + _LOG_2PI)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        eps = torch.randn(n, *self.shape, device=self.device, dtype=self.dtype)
        return self.loc + temperature * self.scale * eps

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(μ, σ)`` expanded to ``(n, *shape)``: 0 and 1 on the selected dims, 0 and 0 elsewhere."""
        return self.loc.expand(n, *self.shape), self.scale.expand(n, *self.shape)

    def project(self, z: Tensor) -> Tensor:
        """Onto the prior's support: the non-selected dims set to 0, the selected ones unchanged."""
        self.check_latent(z)
        return z.masked_fill(~self.mask, 0.0)

    def clamp(self, z: Tensor, k: float) -> Tensor:
        """Clip every dim to ``[μ − kσ, μ + kσ]`` (bounds detached): non-selected dims become 0."""
        self.check_latent(z)
        low = (self.loc - k * self.scale).detach().to(z.dtype)
        high = (self.loc + k * self.scale).detach().to(z.dtype)
        return torch.clamp(z, low, high)

    def select(self, z: Tensor) -> Tensor:
        """The selected coordinates ``z.flatten(1)[:, selected]``, shape ``(B, num_selected)``."""
        self.check_latent(z)
        return z.flatten(1)[:, self.selected]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_selected={self.num_selected}, off_scale={self.off_scale}"
