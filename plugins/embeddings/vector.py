"""Embeddings of real vectors: the identity and a multilayer perceptron."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

from torch import Tensor

from flowkit.embedding import Embedding
from flowkit.params import Range
from flowkit.plugins.transforms.conditioners import MLP
from flowkit.transform import Shape


class IdentityEmbedding(Embedding):
    """The context as it is (flattened, standardised): h = c. The default.

    The default embedding: for a context vector ``c ∈ ℝᵏ`` every conditioner reads ``h = c``
    (``features = k``), as in the conditional MAF of Papamakarios et al. 2017, "Masked
    Autoregressive Flow for Density Estimation", §3.4. Contexts of higher rank are flattened.

    Example::

        emb = IdentityEmbedding((3,))
        emb(torch.randn(8, 3)).shape  # (8, 3)
    """

    def __init__(self, context_shape: Shape) -> None:
        super().__init__(context_shape, math.prod(tuple(context_shape)))

    def forward(self, context: Tensor) -> Tensor:
        return context.reshape(context.shape[0], -1)


class MLPEmbedding(Embedding):
    """A learned summary of the context, h = MLP(flatten(c)), trained with the flow.

    ``num_hidden`` ReLU layers of ``hidden`` units, then a linear layer to ``features`` outputs
    (a summary network in the sense of Radev et al. 2020, "BayesFlow", §2.3, for fixed-size
    observations). Contexts of higher rank are flattened.

    Arguments: ``features ≥ 1`` (output width), ``hidden ≥ 1``, ``num_hidden ≥ 1``.
    """

    test_params: ClassVar[dict[str, int]] = {"features": 4, "hidden": 8, "num_hidden": 1}

    def __init__(
        self,
        context_shape: Shape,
        *,
        features: Annotated[int, Range(1)] = 16,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
    ) -> None:
        super().__init__(context_shape, features)
        self.net = MLP(math.prod(self.context_shape), features, hidden, num_hidden, zero_init=False)

    def forward(self, context: Tensor) -> Tensor:
        return self.net(context.reshape(context.shape[0], -1))
