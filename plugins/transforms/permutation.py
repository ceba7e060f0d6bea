"""Fixed permutations of the features of a vector or the channels of an image.

Coupling layers leave part of their input unchanged; permuting between them lets every dimension
be transformed (Dinh et al. 2015, "NICE", §3.3; Kingma & Dhariwal 2018, "Glow", §3.2 use a reversal
or a random shuffle of channels). A permutation matrix has ``|det| = 1``, so the log-determinant is
zero in both directions.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor

from flowkit.params import Range
from flowkit.reconstruction import reindex_rule
from flowkit.transform import Shape, Transform, require_rank

_HINT = "Give vectors as (D,) or images as (C, H, W)."


class RandomPermutation(Transform):
    """Fixed random permutation of dimension 1 (vector features or image channels); log-det 0.

    ``y[:, i] = x[:, π(i)]`` for a permutation ``π`` drawn once from ``permutation_seed``, so the
    same config always builds the same layer; ``π`` and ``π⁻¹`` are stored as buffers and saved
    with the model (Dinh et al. 2015, "NICE", §3.3; Kingma & Dhariwal 2018, "Glow", §3.2 "shuffle").

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).
    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``permutation_seed`` (int in [0, 18446744073709551615], default 0): seed of the permutation ``π``.
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.permutation import RandomPermutation
        >>> layer = RandomPermutation((5,), permutation_seed=0)
        >>> x = torch.arange(5.0).unsqueeze(0)
        >>> y, logdet = layer(x)
        >>> sorted(y[0].tolist()), logdet.item()
        ([0.0, 1.0, 2.0, 3.0, 4.0], 0.0)
        >>> torch.equal(RandomPermutation((5,), permutation_seed=0)(x)[0], y)  # same seed, same layer
        True
        >>> torch.equal(layer.inverse(y)[0], x)
        True
    """

    volume_preserving = True
    input_ranks = (1, 3)
    test_params: ClassVar[dict[str, Any]] = {"permutation_seed": [0, 1, 2]}
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute
    perm: Tensor  # buffers (declared for type checkers: nn.Module types them Tensor | Module)
    inv_perm: Tensor

    def __init__(
        self,
        event_shape: Shape,
        *,
        permutation_seed: Annotated[int, Range(0, 2**64 - 1, note="a torch.Generator seed")] = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        require_rank(type(self).__name__, self.event_shape, self.input_ranks, _HINT)
        generator = torch.Generator().manual_seed(permutation_seed)
        perm = torch.randperm(self.event_shape[0], generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = x[:, π]``, log-det 0."""
        self.check_input(x)
        return x.index_select(1, self.perm.to(x.device)), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = y[:, π⁻¹]``, log-det 0."""
        self.check_input(y, "inverse")
        return y.index_select(1, self.inv_perm.to(y.device)), self.zero_logdet(y)


class ReversePermutation(Transform):
    """Reverse the order of dimension 1 (vector features or image channels); log-det 0.

    ``y[:, i] = x[:, D − 1 − i]``; it is its own inverse. Between couplings it swaps which half is
    transformed (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1
    Convolutions", §3.2, the "reverse" permutation).

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.permutation import ReversePermutation
        >>> layer = ReversePermutation((4,))
        >>> y, logdet = layer(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> y.tolist(), logdet.item()
        ([[4.0, 3.0, 2.0, 1.0]], 0.0)
        >>> layer.inverse(y)[0].tolist()
        [[1.0, 2.0, 3.0, 4.0]]
    """

    volume_preserving = True
    input_ranks = (1, 3)
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute

    def __init__(self, event_shape: Shape, *, num_classes: int | None = None) -> None:
        super().__init__(event_shape)
        require_rank(type(self).__name__, self.event_shape, self.input_ranks, _HINT)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = flip(x, dim=1)``, log-det 0."""
        self.check_input(x)
        return torch.flip(x, dims=(1,)), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = flip(y, dim=1)``, log-det 0."""
        self.check_input(y, "inverse")
        return torch.flip(y, dims=(1,)), self.zero_logdet(y)
