"""The :class:`Flow` model — ``prior ∘ transform`` with preprocessing — and :func:`build_model`.

For data ``x``, preprocessing ``g`` (e.g. logit) and transform ``f``::

    z = f(g(x)),   log p(x) = log p_Z(z) + log|det J_f(g(x))| + log|det J_g(x)|

so :meth:`Flow.log_prob` is the density of the data in its own space, and
:meth:`Flow.bits_per_dim` is comparable with published numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.data.base import DataMeta
from flowkit.data.preprocess import build_preprocess
from flowkit.errors import ConfigError, ShapeError
from flowkit.prior import Prior
from flowkit.transform import Shape, Transform

__all__ = ["DataMeta", "Flow", "build_model"]


class Flow(nn.Module):
    """A normalizing flow: preprocessing, an invertible transform and a prior.

    ``encode`` maps data to latents, ``decode`` maps latents back, ``log_prob`` is the exact
    log-density by change of variables, ``sample`` decodes prior samples. ``context`` is the class
    label tensor (shape ``(B,)``) for class-conditional priors or transforms, else ``None``.
    """

    def __init__(
        self,
        transform: Transform,
        prior: Prior,
        preprocess: Transform,
        levels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if preprocess.output_shape != transform.event_shape:
            raise ShapeError(
                f"the transform takes {transform.event_shape} but the data is "
                f"{preprocess.output_shape}"
            )
        if prior.shape != transform.output_shape:
            raise ShapeError(
                f"the prior has shape {prior.shape} but the transform outputs "
                f"{transform.output_shape}"
            )
        self.preprocess = preprocess
        self.transform = transform
        self.prior = prior
        self.levels = levels
        self.num_classes = num_classes

    # -- shapes and placement ------------------------------------------------------------------
    @property
    def event_shape(self) -> Shape:
        """Per-example data shape."""
        return self.preprocess.event_shape

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def exact_density(self) -> bool:
        """``False`` when the transform changes the dimension (e.g. a GRN that zero-pads MNIST to
        32×32): :meth:`log_prob` is then the latent density at the embedded point, not a density
        of the data, and bits/dim from it do not compare with published numbers."""
        return math.prod(self.transform.output_shape) == math.prod(self.transform.event_shape)

    @property
    def device(self) -> torch.device:
        return self.prior.device

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ShapeError(
                f"the model takes data of shape (batch, {', '.join(map(str, self.event_shape))}) "
                f"but got {tuple(x.shape)}"
            )

    # -- the model -----------------------------------------------------------------------------
    def encode(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x → (z, log|det ∂z/∂x|)``, preprocessing included."""
        self._check(x)
        w, ld_pre = self.preprocess(x, context)
        z, ld = self.transform(w, context)
        return z, ld + ld_pre

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z → x``: the exact inverse of :meth:`encode`."""
        w, _ = self.transform.inverse(z, context)
        x, _ = self.preprocess.inverse(w, context)
        return x

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact ``log p(x | context)`` per example (nats), shape ``(B,)``."""
        z, logdet = self.encode(x, context)
        return self.prior.log_prob(z, context) + logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(−log p(x)/D + log L) / log 2`` per example, ``L`` the number of quantization levels.

        For dequantized data this is the usual upper bound on the discrete negative
        log-likelihood in bits per dimension (Theis et al. 2016, "A note on the evaluation of
        generative models", §3.1). Without levels it is ``−log₂ p(x) / D``.
        """
        nll = -self.log_prob(x, context) / self.dim
        if self.levels:
            nll = nll + math.log(self.levels)
        return nll / math.log(2.0)

    def default_context(self, n: int) -> Tensor | None:
        """Labels ``0, 1, …, K−1, 0, …`` for class-conditional models, else ``None``."""
        if self.prior.conditional and self.num_classes:
            return torch.arange(n, device=self.device) % self.num_classes
        return None

    def sample(
        self, n: int, context: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """``n`` samples ``decode(z)``, ``z ~ p_Z``, clamped to the data's domain (``[0, 1]`` for
        images); class-conditional models cycle through the classes when ``context`` is None."""
        if context is None:
            context = self.default_context(n)
        z = self.prior.sample(n, context, temperature=temperature)
        x = self.decode(z, context)
        domain = getattr(self.preprocess, "domain", None)
        return x if domain is None else x.clamp(*domain)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation before training, from the untrained network's outputs.

        Runs one forward pass (transforms with lazy data-dependent init, e.g. actnorm, initialise
        there) and then hands the latents to the prior's init hook if it has one.
        """
        z, _ = self.encode(x, context)
        if not bool(self.prior.initialized):
            self.prior.initialize(z, context)


def _split(section: Mapping[str, Any], generic: tuple[str, ...] = ()) -> tuple[str, dict]:
    params = {k: v for k, v in section.items() if k != "name" and k not in generic}
    return section["name"], params


def build_model(config: Mapping[str, Any], meta: DataMeta) -> Flow:
    """Build the :class:`Flow` a resolved config describes for data described by ``meta``."""
    from flowkit import registry

    data_cfg = config["data"]
    preprocess = build_preprocess(
        data_cfg.get("preprocess", "auto"), meta.shape, data_cfg.get("alpha", 0.05),
        meta.default_preprocess,
    )
    t_name, t_params = _split(config["transform"])
    transform = registry.transforms.build(
        t_name, t_params,
        injected={"event_shape": preprocess.output_shape, "num_classes": meta.num_classes},
        expect=Transform,
    )
    p_name, p_params = _split(config["prior"])
    prior = registry.priors.build(
        p_name, p_params,
        injected={"shape": transform.output_shape, "num_classes": meta.num_classes},
        expect=Prior,
    )
    if prior.conditional and not meta.num_classes:
        raise ConfigError(
            f"prior '{p_name}' is class-conditional but dataset '{data_cfg['name']}' has no "
            f"labels; choose an unconditional prior such as 'gaussian'"
        )
    return Flow(transform, prior, preprocess, levels=meta.levels, num_classes=meta.num_classes)
