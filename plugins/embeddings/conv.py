"""A convolutional embedding for image contexts."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from flowkit.embedding import Embedding
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.transform import Shape


class ConvEmbedding(Embedding):
    """Image contexts (C, H, W): a strided CNN, global average pooling and a linear layer.

    ``h = W · mean_{pixels}(CNN(c)) + b``.
    ``num_layers`` 3×3 convolutions with ReLU, each halving the height and width (stride 2),
    ``hidden`` channels, then global average pooling and a linear layer to ``features`` outputs:
    the conditioning network of conditional INNs for images (Ardizzone et al. 2019, "Guided image
    generation with conditional invertible neural networks", §3.2), here small by default.

    References:

    * Ardizzone, Lüth, Kruse, Rother & Köthe 2019, "Guided Image Generation with Conditional Invertible Neural
      Networks", arXiv:1907.02392.

    Arguments:

    * ``context_shape`` (injected): the per-example shape of the context; flowkit sets it from the data.
    * ``features`` (int ≥ 1, default 32): the output width of ``h``.
    * ``hidden`` (int ≥ 1, default 32): channels of every convolution.
    * ``num_layers`` (int ≥ 1, default 3): stride-2 convolutions, each halving height and width.

    Example::

        >>> import torch
        >>> from flowkit.plugins.embeddings.conv import ConvEmbedding
        >>> embedding = ConvEmbedding((1, 16, 16), features=8, hidden=4, num_layers=2)
        >>> embedding(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 8])
    """

    test_params: ClassVar[dict[str, int]] = {"features": 4, "hidden": 4, "num_layers": 1}

    def __init__(
        self,
        context_shape: Shape,
        *,
        features: Annotated[int, Range(1)] = 32,
        hidden: Annotated[int, Range(1)] = 32,
        num_layers: Annotated[int, Range(1)] = 3,
    ) -> None:
        shape = tuple(int(s) for s in context_shape)
        if len(shape) != 3:
            raise ShapeError(
                f"[embedding] conv takes image contexts (C, H, W), but the context has shape "
                f"{shape}; use embedding 'mlp' or 'identity' for vectors, 'deepset' for sets"
            )
        super().__init__(shape, features)
        layers: list[nn.Module] = []
        channels = shape[0]
        for _ in range(num_layers):
            layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1), nn.ReLU()]
            channels = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, features)

    def forward(self, context: Tensor) -> Tensor:
        h = self.body(context)
        return self.out(torch.mean(h, dim=(2, 3)))
