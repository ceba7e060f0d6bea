"""Pure re-indexing steps of the Generative Reversible Network: checkerboard subsample, zero padding.

Both are pieces of the ``revnet`` architecture (Schirrmeister et al. 2018, "Training Generative
Reversible Networks"); :class:`GRNSubsample` is also registered on its own as ``grn-subsample``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from flowkit.errors import ConfigError, ShapeError
from flowkit.reconstruction import reindex_rule
from flowkit.transform import Shape, Transform, require_rank

#: The 2×2 phases ``(i, j)`` (row offset, column offset), numbered ``2i + j``, in the order the
#: reference stacks them: (even, even), (odd, odd), (even, odd), (odd, even).
PHASE_ORDER: tuple[int, ...] = (0, 3, 1, 2)
#: ``PHASE_ORDER`` inverted: where phase ``2i + j`` sits among the output blocks.
_PHASE_POSITION: tuple[int, ...] = tuple(PHASE_ORDER.index(p) for p in range(4))


def _split_phases(x: Tensor) -> Tensor:
    """``(B, C, H, W) → (B, 4C, H/2, W/2)``: channel ``p·C + c`` = channel ``c`` at phase ``p``."""
    phases = rearrange(x, "b c (h i) (w j) -> b (i j) c h w", i=2, j=2)
    return rearrange(phases[:, list(PHASE_ORDER)], "b p c h w -> b (p c) h w")


def _merge_phases(y: Tensor) -> Tensor:
    """Inverse of :func:`_split_phases`: scatter every channel block back to its pixel phase."""
    blocks = rearrange(y, "b (p c) h w -> b p c h w", p=4)
    return rearrange(blocks[:, list(_PHASE_POSITION)], "b (i j) c h w -> b c (h i) (w j)", i=2, j=2)


class GRNSubsample(Transform):
    """Checkerboard subsample (C, H, W) → (4C, H/2, W/2) of the GRN reference; log-det 0.

    The stride-2 splitter of Schirrmeister et al. 2018, "Training Generative Reversible Networks"
    (reference code ``SubsampleSplitter(stride=2, checkerboard=True, chunk_chans_first=True)``).
    The four 2×2 pixel phases become four channel blocks, in the order (even row, even column),
    (odd, odd), (even, odd), (odd, even); every block keeps the input channels in order::

        y[p·C + c, h, w] = x[c, 2h + i_p, 2w + j_p],   (i_p, j_p) = (0,0), (1,1), (0,1), (1,0)

    With ``chunk_first`` (the default) the channels are first cut into two halves, each half is
    subsampled on its own and the results are concatenated, ``[sub(x[:C₁]); sub(x[C₁:])]`` with
    ``C₁ = ⌈C/2⌉`` (the halves of ``torch.chunk``; for odd C the first half has one channel more).
    It is a no-op for C = 1. After a first split the two channel halves hold the two colours of a
    pixel checkerboard; chunk-first splits afterwards keep each stream within its own colour, so
    with the revnet's two coupling streams both see a spatially uniform (quincunx) sampling of
    the image. A pure permutation of the entries: volume preserving, exact inverse.

    References:

    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.

    Arguments:

    * ``event_shape`` (injected): the shape ``(C, H, W)`` of one image; flowkit sets it from the data.
    * ``chunk_first`` (bool, default True): subsample each half of the channels on its own (the reference's
      ``chunk_chans_first``).
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.subsample import GRNSubsample
        >>> layer = GRNSubsample((1, 4, 4))
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y, logdet = layer(x)
        >>> y[0, :, 0, 0].tolist(), logdet.item()  # phases (0,0), (1,1), (0,1), (1,0) of the first block
        ([0.0, 5.0, 1.0, 4.0], 0.0)
        >>> torch.equal(layer.inverse(y)[0], x)
        True
    """

    volume_preserving = True
    input_ranks = (3,)
    size_multiple = 2
    test_params: ClassVar[dict[str, Any]] = {"chunk_first": [True, False]}
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute

    def __init__(
        self,
        event_shape: Shape,
        *,
        chunk_first: bool = True,
        num_classes: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            "GRNSubsample",
            shape,
            self.input_ranks,
            "The subsample folds 2×2 pixel phases into channels; give images as (C, H, W).",
        )
        c, h, w = shape
        if h % 2 or w % 2:
            raise ShapeError(
                f"GRNSubsample needs an even height and width to fold 2×2 pixel phases, but the "
                f"input has shape {shape}; crop or pad the images to even sizes (revnet: "
                f"pad_to), or use fewer subsampling stages."
            )
        super().__init__(shape, (4 * c, h // 2, w // 2))
        self.chunk_first = bool(chunk_first)
        #: channel counts of the parts subsampled separately (one part without chunk-first)
        self.parts: tuple[int, ...] = (c - c // 2, c // 2) if chunk_first and c > 1 else (c,)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) → (B, 4C, H/2, W/2)``, log-det 0."""
        self.check_input(x)
        parts = torch.split(x, list(self.parts), dim=1)
        return torch.cat([_split_phases(p) for p in parts], dim=1), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, 4C, H/2, W/2) → (B, C, H, W)``, log-det 0."""
        self.check_input(y, "inverse")
        parts = torch.split(y, [4 * c for c in self.parts], dim=1)
        return torch.cat([_merge_phases(p) for p in parts], dim=1), self.zero_logdet(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_first={self.chunk_first}"


class ZeroPad(Transform):
    """Zero-pad images (C, H, W) to (C, size, size), centred; the inverse crops (log-det 0).

    The first step of the GRN MNIST architecture (Schirrmeister et al. 2018, "Training Generative
    Reversible Networks"; reference code: 28×28 padded by 2 pixels per side to 32×32). The border
    is ``⌊(size − H)/2⌋`` rows on top (the rest at the bottom), likewise for columns.

    Padding is *not* a bijection of ``R^D``: it embeds the data in a ``D' = C·size²``-dimensional
    space where the border is always zero. The embedding is an isometry (``JᵀJ = I``), so its
    volume factor ``√det(JᵀJ)`` is 1 and both directions return log-det 0; a density computed
    through it is a density over the embedded data, on the subspace where the border is zero.
    The inverse drops whatever the border holds, so ``inverse`` is exact on the image of
    ``forward`` only. The conformance suite, which assumes ``prod(output_shape) ==
    prod(event_shape)``, does not apply; this transform is not registered on its own.
    """

    volume_preserving = True
    input_ranks = (3,)
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute

    def __init__(self, event_shape: Shape, *, size: int) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("ZeroPad", shape, self.input_ranks, "Give images as (C, H, W).")
        c, h, w = shape
        if size < max(h, w):
            raise ConfigError(
                f"ZeroPad: the padded size ({size}) must be at least the image height and width, "
                f"but the input is {h}×{w} (shape {shape}); set the pad size to {max(h, w)} or "
                f"more, or 0 for no padding."
            )
        super().__init__(shape, (c, size, size))
        self.size = int(size)
        self.top = (size - h) // 2
        self.left = (size - w) // 2

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) → (B, C, size, size)`` with a zero border; log-det 0 (isometric)."""
        self.check_input(x)
        _, h, w = self.event_shape
        pad = (self.left, self.size - w - self.left, self.top, self.size - h - self.top)
        return F.pad(x, pad), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, C, size, size) → (B, C, H, W)``: crop the border away; log-det 0."""
        self.check_input(y, "inverse")
        _, h, w = self.event_shape
        return y[:, :, self.top : self.top + h, self.left : self.left + w], self.zero_logdet(y)

    @property
    def border_dim(self) -> int:
        """Number of padded (always-zero) scalars per example, ``D' − D``."""
        return math.prod(self.output_shape) - math.prod(self.event_shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top={self.top}, left={self.left}"
