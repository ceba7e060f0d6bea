"""Class-conditional diagonal Gaussian prior with data-initialised, learnable means and scales."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Range
from flowkit.prior import Prior
from flowkit.transform import Shape, sum_except_batch

_LOG_2PI = math.log(2.0 * math.pi)


class ClassGaussian(Prior):
    """One learnable diagonal Gaussian N(μ_c, diag σ_c²) per class, initialised from data (GRN).

    ``p(z | c) = Π_d N(z_d; μ_{c,d}, σ_{c,d}²)`` with ``μ, σ`` of shape ``(num_classes, *shape)``
    as plain learnable parameters (not ``log σ``), as in the MNIST optimal-transport setup of
    Schirrmeister et al. 2018, "Training Generative Reversible Networks" (arXiv:1806.01610; the
    authors' reference code):

    * :meth:`initialize` sets ``μ_c`` and ``σ_c`` to the per-class mean and unbiased standard
      deviation of the *untrained* network's latents (the trainer passes the first
      ``train.init_examples`` training examples); before that the prior is N(0, I);
    * :meth:`after_step` clamps ``σ ≥ 0`` after every optimiser step;
    * :meth:`sample` is reparameterised, ``z = μ_c + T · σ_c ⊙ ε``, so the optimal-transport
      objective's gradients reach ``μ`` and ``σ``.

    Under optimal-transport training most ``σ_{c,d}`` shrink towards 0 and a few stay large: the
    model "discovers" the dimensions it uses (see :meth:`class_mean_scale`). A collapsed dimension
    makes the exact density degenerate (``σ = 0``: infinite density on a hyperplane), so
    :meth:`log_prob` floors the scale at ``min_scale``:
    ``log p(z | c) = −½ Σ_d [((z_d − μ_{c,d}) / s_{c,d})² + 2 log s_{c,d} + log 2π]`` with
    ``s = max(σ, min_scale)``. Sampling uses the unfloored ``σ``.

    References:

    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.

    Arguments:

    * ``shape`` (injected): the latent's shape (the transform's output shape); flowkit sets it.
    * ``num_classes`` (injected): the number of classes, one Gaussian each; required (a labelled dataset);
      flowkit sets it.
    * ``min_scale`` (float > 0, default 0.0001): floor of ``σ`` in ``log_prob``.
    * ``learn_scale`` (bool, default True): train ``σ``; ``False`` keeps it at its initial value.

    Example::

        >>> import torch
        >>> from flowkit.plugins.priors.class_gaussian import ClassGaussian
        >>> prior = ClassGaussian((2,), num_classes=2)
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [9.0, 9.0], [10.0, 10.0], [11.0, 11.0]])
        >>> prior.initialize(z, labels)  # per-class mean and unbiased std of the latents
        >>> prior.loc.tolist(), prior.scale.tolist()
        ([[1.0, 1.0], [10.0, 10.0]], [[1.0, 1.0], [1.0, 1.0]])
        >>> prior.sample(2, context=torch.tensor([1, 1]), temperature=0.0).tolist()
        [[10.0, 10.0], [10.0, 10.0]]
    """

    conditional: ClassVar[bool] = True
    needs_data_init: ClassVar[bool] = True

    def __init__(
        self,
        shape: Shape,
        num_classes: int | None = None,
        *,
        min_scale: Annotated[float, Range(0, min_inclusive=False)] = 1e-4,
        learn_scale: bool = True,
    ) -> None:
        super().__init__(shape, num_classes)
        if num_classes is None or num_classes < 1:
            raise ConfigError(
                "the class-gaussian prior needs a labelled dataset (one Gaussian per class); "
                "choose a dataset with labels, or an unconditional prior such as 'diag-gaussian'"
            )
        self.min_scale = float(min_scale)
        self.loc = nn.Parameter(torch.zeros(num_classes, *self.shape))
        self.learn_scale = bool(learn_scale)
        self.scale = nn.Parameter(torch.ones(num_classes, *self.shape), requires_grad=self.learn_scale)

    def _labels(self, context: Tensor | None, n: int) -> Tensor:
        labels = self.check_context(context, n)
        assert labels is not None  # conditional: check_context raises on None
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.loc.shape[0]):
            raise ShapeError(
                f"ClassGaussian has {self.loc.shape[0]} classes (labels 0..{self.loc.shape[0] - 1})"
                f" but got labels in [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.check_latent(z)
        labels = self._labels(context, z.shape[0])
        scale = self.scale[labels].clamp_min(self.min_scale)
        u = (z - self.loc[labels]) / scale
        return -0.5 * sum_except_batch(u.pow(2) + 2.0 * scale.log() + _LOG_2PI)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        labels = self._labels(context, n)
        eps = torch.randn(n, *self.shape, device=self.device, dtype=self.dtype)
        return self.loc[labels] + temperature * self.scale[labels] * eps

    @torch.no_grad()
    def initialize(self, z: Tensor, context: Tensor | None = None) -> None:
        """Set ``μ_c, σ_c`` to the per-class mean and unbiased std of the latents ``z``."""
        self.check_latent(z)
        labels = self._labels(context, z.shape[0]).to(z.device)
        for c in range(self.loc.shape[0]):
            zc = z[labels == c]
            if zc.shape[0] < 2:
                raise ConfigError(
                    f"class-gaussian: class {c} has {zc.shape[0]} example(s) among the "
                    f"{z.shape[0]} used to initialise the prior, at least 2 are needed; raise "
                    f"train.init_examples (e.g. train.init_examples=10000)"
                )
            self.loc[c].copy_(zc.mean(0))
            self.scale[c].copy_(zc.std(0, unbiased=True))
        self.initialized.fill_(True)

    @torch.no_grad()
    def after_step(self) -> None:
        """Keep the scales non-negative (``σ ← max(σ, 0)`` in place), as the reference does."""
        self.scale.clamp_(min=0.0)

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-example ``(μ_c, σ_c)`` of the given labels, each ``(n, *shape)``."""
        labels = self._labels(context, n)
        return self.loc[labels], self.scale[labels]

    def class_mean_scale(self) -> Tensor:
        """Class-averaged scale ``(1/K) Σ_c σ_c``, shape ``shape`` (detached): large entries are
        the latent dimensions the model uses; traversals vary those (GRN reference, §6)."""
        return self.scale.detach().mean(0)

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, num_classes={self.num_classes}, min_scale={self.min_scale}, "
            f"learn_scale={self.learn_scale}"
        )
