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

    References:

    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.

    Arguments:

    * ``context_shape`` (injected): the per-example shape of the context; flowkit sets it from the data.

    Example::

        >>> import torch
        >>> from flowkit.plugins.embeddings.vector import IdentityEmbedding
        >>> embedding = IdentityEmbedding((2, 3))
        >>> c = torch.randn(8, 2, 3)
        >>> embedding.features, torch.equal(embedding(c), c.flatten(1))
        (6, True)
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

    References:

    * Radev, Mertens, Voss, Ardizzone & Köthe 2020, "BayesFlow: Learning Complex Stochastic Models with
      Invertible Neural Networks", arXiv:2003.06281; IEEE Transactions on Neural Networks and Learning Systems
      33(4), 2022.

    Arguments:

    * ``context_shape`` (injected): the per-example shape of the context; flowkit sets it from the data.
    * ``features`` (int ≥ 1, default 16): the output width of ``h``.
    * ``hidden`` (int ≥ 1, default 64): hidden units.
    * ``num_hidden`` (int ≥ 1, default 2): hidden ReLU layers.

    Example::

        >>> import torch
        >>> from flowkit.plugins.embeddings.vector import MLPEmbedding
        >>> embedding = MLPEmbedding((5,), features=4, hidden=16)
        >>> embedding(torch.randn(8, 5)).shape
        torch.Size([8, 4])
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
