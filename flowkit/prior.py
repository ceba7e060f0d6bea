"""The :class:`Prior` interface: the base distribution ``p_Z`` of a flow.

A prior gives ``log p_Z(z | context)`` and *reparameterised* samples ``z = g(ε; θ)`` so that
gradients reach its learnable parameters θ (the optimal-transport objective needs that). The
context, when used, is the class label (a ``LongTensor`` of shape ``(B,)``), or for priors with
``vector_conditional = True`` the model's embedded real-valued context ``(B, k)``.

Priors whose parameters start from data (for example per-class means of the untrained network's
outputs) implement :meth:`Prior.initialize`; the trainer calls it once before training. The
``initialized`` flag is a registered buffer, so a reloaded model never re-initialises.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from flowkit.errors import ShapeError
from flowkit.params import CheckedParameters
from flowkit.transform import Shape


class Prior(CheckedParameters, nn.Module):
    """Base class of every prior (plugins subclass it).

    ``shape`` is the per-example latent shape (the transform's ``output_shape``);
    ``num_classes`` is set when the dataset has labels (class-conditional priors need it).
    """

    #: ``True`` when :meth:`log_prob` and :meth:`sample` use the class label.
    conditional: ClassVar[bool] = False
    #: ``True`` when they use a real-valued context: the model's embedded context ``(B, k)``
    #: (the prior then takes ``context_features``, injected by flowkit).
    vector_conditional: ClassVar[bool] = False
    #: ``True`` when :meth:`initialize` must see data before training.
    needs_data_init: ClassVar[bool] = False

    # buffers registered in __init__ (declared for type checkers: nn.Module types them Tensor | Module)
    _anchor: Tensor
    initialized: Tensor

    def __init__(self, shape: Shape, num_classes: int | None = None) -> None:
        super().__init__()
        self.shape: Shape = tuple(int(s) for s in shape)
        self.num_classes = num_classes
        # An empty buffer that tracks the module's device and dtype for sampling.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        self.register_buffer("initialized", torch.tensor(not self.needs_data_init))

    @property
    def dim(self) -> int:
        """Number of scalars in one latent example."""
        return math.prod(self.shape)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p_Z(z | context)`` per example, shape ``(B,)``."""
        raise NotImplementedError

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` reparameterised samples ``(n, *shape)``; ``temperature`` scales the noise."""
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, z: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation from latents ``z`` of the untrained network.

        The default does nothing. Overrides must end by setting ``self.initialized.fill_(True)``.
        """
        self.initialized.fill_(True)

    def after_step(self) -> None:
        """Called after every optimiser step (for example to keep a scale non-negative)."""

    def moments(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Per-example mean and standard deviation ``(n, *shape)`` of a Gaussian-type prior.

        Used for latent traversals (vary the dimensions with the largest σ around the mean).
        ``None`` (the default) when the prior has no such moments.
        """
        return None

    def project(self, z: Tensor) -> Tensor:
        """Map latents onto the prior's support before decoding (identity by default).

        The restricted prior overrides it to zero the dimensions it does not use, so
        reconstructions show what the used dimensions carry.
        """
        return z

    # -- helpers ------------------------------------------------------------------------------
    def check_latent(self, z: Tensor) -> None:
        """Raise :class:`ShapeError` unless ``z`` has shape ``(batch, *shape)``."""
        if tuple(z.shape[1:]) != self.shape:
            raise ShapeError(
                f"{type(self).__name__} expects latents of shape (batch, "
                f"{', '.join(map(str, self.shape))}) but got {tuple(z.shape)}"
            )

    def check_context(self, context: Tensor | None, n: int) -> Tensor | None:
        """Validate class labels for a conditional prior (``None`` allowed when unconditional)."""
        if not self.conditional:
            return None
        if context is None:
            raise ShapeError(
                f"{type(self).__name__} is class-conditional: pass the class labels as context "
                f"(a LongTensor of shape ({n},))"
            )
        if context.shape != (n,):
            raise ShapeError(
                f"{type(self).__name__} expects class labels of shape ({n},), got {tuple(context.shape)}"
            )
        return context.to(self.device).long()
