"""NICE: additive couplings with MLP conditioners, then a diagonal scaling (Dinh et al. 2015)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec
from flowkit.params import Range
from flowkit.plugins.transforms.conditioners import layer_args
from flowkit.plugins.transforms.coupling import AdditiveCoupling
from flowkit.reconstruction import generic_rule
from flowkit.transform import Shape, Transform, require_rank


class DiagonalScaling(Transform):
    """Learned diagonal scaling y = exp(s) ⊙ h with log|det J| = Σ_j s_j (NICE §3.3).

    The last layer of NICE (Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components
    Estimation", §3.3): it lets the otherwise volume-preserving model weight the dimensions.
    ``s`` is a per-feature parameter initialised to 0 (the identity).
    """

    input_ranks = (1,)
    inversion_rule = generic_rule  # memory-free backprop: inverse, then recomputation

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        require_rank("DiagonalScaling", self.event_shape, self.input_ranks, "Flatten the data first.")
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = exp(s) ⊙ x``, log-det ``Σ s``."""
        self.check_input(x)
        logdet = self.log_scale.sum().to(x.dtype).expand(x.shape[0])
        return x * torch.exp(self.log_scale), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = exp(−s) ⊙ y``, log-det ``−Σ s``."""
        self.check_input(y, "inverse")
        logdet = -self.log_scale.sum().to(y.dtype).expand(y.shape[0])
        return y * torch.exp(-self.log_scale), logdet


class NICE(Architecture):
    """NICE: additive couplings with MLP conditioners, then a diagonal scaling (Dinh et al. 2015).

    ``f = S ∘ g_K ∘ … ∘ g_1 ∘ flatten``: images are flattened to ``D = C·H·W`` features, each
    ``g_k`` is an additive coupling ``y_B = x_B + t_k(x_A)`` on the "alternate" (odd/even) split
    with the roles swapped at every layer, ``t_k`` an MLP of ``num_hidden`` ReLU layers of
    ``hidden`` units, and ``S`` the diagonal scaling ``y = exp(s) ⊙ h``; ``log|det J| = Σ s``
    (Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", §3 and
    §5.1: 4 couplings of 5 × 1000 units). The latent has shape ``(D,)``.

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_couplings`` (int ≥ 1, default 4): the number of additive couplings ``K``.
    * ``hidden`` (int ≥ 1, default 1000): hidden units of each ``t_k``.
    * ``num_hidden`` (int ≥ 1, default 5): hidden ReLU layers of each ``t_k``.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.nice import NICE
        >>> _ = torch.manual_seed(0)
        >>> flow = NICE((1, 2, 2), num_couplings=2, hidden=16, num_hidden=1)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 1, 2, 2)
        >>> z, logdet = flow(x)  # images are flattened
        >>> z.shape, torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        (torch.Size([8, 4]), True)
    """

    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 to split in two
    test_params: ClassVar[dict[str, Any]] = {
        "num_couplings": [2, 3],
        "hidden": [4, 8],
        "num_hidden": [1, 2],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_couplings: Annotated[int, Range(1)] = 4,
        hidden: Annotated[int, Range(1)] = 1000,
        num_hidden: Annotated[int, Range(1)] = 5,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("NICE", shape, self.input_ranks)
        dim = math.prod(shape)
        super().__init__(shape, (dim,))
        context_spec("NICE", conditional, num_classes, context_features)  # checks the choice
        steps: list[Transform] = []
        if len(shape) != 1:
            steps.append(Flatten(shape))
        args = layer_args(hidden, num_hidden, conditional, num_classes, context_features)
        steps += [
            AdditiveCoupling((dim,), mask="alternate", parity=bool(k % 2), conditioner="mlp", **args)
            for k in range(num_couplings)
        ]
        steps.append(DiagonalScaling((dim,)))
        self.flow = Sequential(steps)
