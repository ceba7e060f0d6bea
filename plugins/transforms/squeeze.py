"""Space-to-depth squeeze: trade spatial resolution for channels (Real NVP §3.6)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor

from flowkit.errors import ShapeError
from flowkit.reconstruction import reindex_rule
from flowkit.transform import Shape, Transform, require_rank


class Squeeze(Transform):
    """Space-to-depth squeeze (C, H, W) → (4C, H/2, W/2): 2×2 blocks become channels; log-det 0.

    Each ``2 × 2`` spatial block becomes 4 channels (Dinh et al. 2017, "Density estimation using
    Real NVP", §3.6, Figure 3). Exact ordering::

        y[b, 4c + 2i + j, h, w] = x[b, c, 2h + i, 2w + j]    for i, j ∈ {0, 1}

    i.e. output channels ``4c .. 4c+3`` hold input channel ``c``'s top-left, top-right,
    bottom-left and bottom-right pixels of each block. A pure re-indexing, so volume preserving.

    References:

    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.

    Arguments:

    * ``event_shape`` (injected): the shape ``(C, H, W)`` of one image; flowkit sets it from the data.
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.squeeze import Squeeze
        >>> layer = Squeeze((1, 4, 4))
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y, logdet = layer(x)
        >>> y.shape, y[0, :, 0, 0].tolist(), logdet.item()  # top-left, top-right, bottom-left, bottom-right
        (torch.Size([1, 4, 2, 2]), [0.0, 1.0, 4.0, 5.0], 0.0)
        >>> torch.equal(layer.inverse(y)[0], x)
        True
    """

    volume_preserving = True
    input_ranks = (3,)
    size_multiple = 2
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute

    def __init__(self, event_shape: Shape, *, num_classes: int | None = None) -> None:
        require_rank(
            "Squeeze",
            tuple(event_shape),
            self.input_ranks,
            "Squeeze folds 2×2 pixel blocks into channels; give images as (C, H, W).",
        )
        c, h, w = (int(s) for s in event_shape)
        if h % 2 or w % 2:
            raise ShapeError(
                f"Squeeze needs an even height and width to fold 2×2 blocks, but the input has "
                f"shape {(c, h, w)}; crop or pad the images to even sizes, or use fewer "
                f"squeeze steps (num_scales)."
            )
        super().__init__((c, h, w), (4 * c, h // 2, w // 2))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) → (B, 4C, H/2, W/2)``, log-det 0."""
        self.check_input(x)
        y = rearrange(x, "b c (h i) (w j) -> b (c i j) h w", i=2, j=2)
        return y, self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, 4C, H/2, W/2) → (B, C, H, W)``, log-det 0."""
        self.check_input(y, "inverse")
        x = rearrange(y, "b (c i j) h w -> b c (h i) (w j)", i=2, j=2)
        return x, self.zero_logdet(y)
