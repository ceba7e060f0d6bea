"""Activation normalisation with data-dependent initialisation (Glow §3.1)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from flowkit.params import Range
from flowkit.reconstruction import generic_rule
from flowkit.transform import Shape, Transform, require_rank


class ActNorm(Transform):
    """Activation normalisation y = s ⊙ (x + b), initialised from the first batch (Glow §3.1).

    A per-channel affine map (per-feature for vectors ``(D,)``), stored as a bias ``b`` and a
    log-scale ``log s`` (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1
    Convolutions", §3.1, Table 1)::

        y = exp(log s) ⊙ (x + b)            x = exp(−log s) ⊙ y − b
        log|det J| = H·W·Σ_c log s_c        (images (C, H, W); Σ_d log s_d for vectors)

    Data-dependent initialisation: the first ``forward`` in training mode sets, per channel,
    ``b = −mean`` and ``s = 1 / (std + eps)`` over the batch (and the pixels), so that batch comes
    out with zero mean and unit variance. With a single value per channel (one vector) the
    standard deviation is undefined and ``s`` stays 1. The ``initialized`` flag is a registered
    buffer: it is saved in the ``state_dict``, so a reloaded model never re-initialises on new
    data. ``inverse`` never initialises; before initialisation the parameters hold their identity
    values (``b = 0``, ``log s = 0``), so it is the identity. Evaluation-mode forwards do not
    initialise either.

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``eps`` (float > 0, default 1e-06): added to the batch's standard deviation in the initialisation,
      ``s = 1 / (std + eps)``.
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.actnorm import ActNorm
        >>> _ = torch.manual_seed(0)
        >>> layer = ActNorm((3,))
        >>> x = 2.0 + 3.0 * torch.randn(500, 3)
        >>> y, logdet = layer(x)  # the first training batch sets b and s
        >>> y.mean(0).abs().max().item() < 1e-5, torch.allclose(y.std(0), torch.ones(3), atol=1e-2)
        (True, True)
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
        True
    """

    input_ranks = (1, 3)
    test_params: ClassVar[dict[str, Any]] = {}
    inversion_rule = generic_rule  # memory-free backprop: inverse, then recomputation
    initialized: Tensor  # a buffer (declared for type checkers: nn.Module types it Tensor | Module)

    def __init__(
        self,
        event_shape: Shape,
        *,
        eps: Annotated[float, Range(0, min_inclusive=False, note="it keeps 1/(std + eps) finite")] = 1e-6,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        require_rank(
            "ActNorm",
            self.event_shape,
            self.input_ranks,
            "Flatten the data for vectors, or give images as (C, H, W).",
        )
        self.eps = float(eps)
        param_shape = (self.event_shape[0],) + (1,) * (len(self.event_shape) - 1)
        self.bias = nn.Parameter(torch.zeros(param_shape))
        self.log_scale = nn.Parameter(torch.zeros(param_shape))
        self.register_buffer("initialized", torch.tensor(False))
        self._positions = math.prod(self.event_shape[1:])  # H·W for images, 1 for vectors
        # A Python mirror of the buffer once it is true: the forward pass then reads no tensor
        # (no device sync, and no graph break under torch.compile); re-read after loading a state.
        self._seen_initialized = False
        self.register_load_state_dict_pre_hook(_forget_initialized)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b = −mean`` and ``log s = −log(std + eps)`` per channel from the batch ``x``."""
        self.check_input(x)
        dims = [0, *range(2, x.dim())]  # everything but the channel (feature) dimension
        mean = x.mean(dim=dims, keepdim=True).reshape(self.bias.shape)
        self.bias.copy_(-mean)
        if x.numel() // self.event_shape[0] > 1:
            std = x.std(dim=dims, correction=0, keepdim=True).reshape(self.log_scale.shape)
            self.log_scale.copy_(-torch.log(std + self.eps))
        else:
            self.log_scale.zero_()
        self.initialized.fill_(True)
        self._seen_initialized = True

    def is_initialized(self) -> bool:
        """Whether ``b`` and ``s`` hold their data-dependent values (the ``initialized`` buffer)."""
        if not self._seen_initialized:
            self._seen_initialized = bool(self.initialized)
        return self._seen_initialized

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        return self.zero_logdet(x) + sign * self._positions * self.log_scale.sum()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = s ⊙ (x + b)``; the first training-mode call initialises ``b`` and ``s``."""
        self.check_input(x)
        if self.training and not self.is_initialized():
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale), self._logdet(x, 1.0)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = y / s − b`` (never initialises)."""
        self.check_input(y, "inverse")
        return y * torch.exp(-self.log_scale) - self.bias, self._logdet(y, -1.0)


def _forget_initialized(module: nn.Module, *args: object) -> None:
    """Load-state-dict pre-hook: the loaded ``initialized`` buffer is read again on the next call."""
    module._seen_initialized = False  # type: ignore[assignment]
