"""A permutation-invariant embedding of sets of observations (Deep Sets)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from torch import Tensor

from flowkit.embedding import Embedding
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.conditioners import MLP
from flowkit.transform import Shape


class DeepSetEmbedding(Embedding):
    """Sets of N i.i.d. observations (N, d): h = ρ(mean_i φ(c_i)), permutation invariant.

    The context has shape ``(N, d)`` per example; ``φ`` (``num_hidden`` ReLU layers of
    ``hidden`` units → ``hidden`` outputs) embeds each observation, the mean pools them, and
    ``ρ`` (the same sizes → ``features``) maps the pooled vector. The result does not depend on
    the order of the observations, and sets of any size ``N ≥ 1`` are accepted (Zaheer et al.
    2017, "Deep Sets", Theorem 2; the summary network of BayesFlow for i.i.d. data, Radev et al.
    2020, §2.3).

    References:

    * Zaheer, Kottur, Ravanbakhsh, Póczos, Salakhutdinov & Smola 2017, "Deep Sets", NeurIPS 2017.
    * Radev, Mertens, Voss, Ardizzone & Köthe 2020, "BayesFlow: Learning Complex Stochastic Models with
      Invertible Neural Networks", arXiv:2003.06281; IEEE Transactions on Neural Networks and Learning Systems
      33(4), 2022.

    Arguments:

    * ``context_shape`` (injected): the per-example shape of the context; flowkit sets it from the data.
    * ``features`` (int ≥ 1, default 16): the output width of ``h``.
    * ``hidden`` (int ≥ 1, default 64): hidden units and width of ``φ``'s output.
    * ``num_hidden`` (int ≥ 1, default 2): hidden ReLU layers of ``φ`` and of ``ρ``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.embeddings.deepset import DeepSetEmbedding
        >>> embedding = DeepSetEmbedding((10, 2), features=4, hidden=16)
        >>> sets = torch.randn(3, 10, 2)
        >>> h = embedding(sets)
        >>> shuffled = sets[:, torch.randperm(10)]
        >>> h.shape, torch.allclose(embedding(shuffled), h, atol=1e-6)  # the order does not matter
        (torch.Size([3, 4]), True)
    """

    variable_leading = True
    test_params: ClassVar[dict[str, int]] = {"features": 4, "hidden": 8, "num_hidden": 1}

    def __init__(
        self,
        context_shape: Shape,
        *,
        features: Annotated[int, Range(1)] = 16,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
    ) -> None:
        shape = tuple(int(s) for s in context_shape)
        if len(shape) != 2:
            raise ShapeError(
                f"[embedding] deepset takes a set of observations per example, shape (N, d), but "
                f"the context has shape {shape}; give sets as (N, d), or use 'mlp' for vectors"
            )
        super().__init__(shape, features)
        self.phi = MLP(shape[1], hidden, hidden, num_hidden, zero_init=False)
        self.rho = MLP(hidden, features, hidden, num_hidden, zero_init=False)

    def forward(self, context: Tensor) -> Tensor:
        pooled = self.phi(context).mean(dim=1)  # (B, N, d) → (B, N, hidden) → (B, hidden)
        return self.rho(pooled)
