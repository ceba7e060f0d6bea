"""i-RevNet: a fully invertible deep network of additive reversible blocks (Jacobsen et al. 2018).

Jacobsen, Smeulders & Oyallon 2018, "i-RevNet: Deep Invertible Networks", §3: the input is split
into two halves that flow through a cascade of reversible blocks ``(x1, x2) ↦ (x2, x1 + F(x2))``,
with invertible down-sampling (space-to-depth) between stages instead of the strided,
information-losing layers of a RevNet. This module implements the *bijective* variant (§3.1): no
injective channel padding, so the network maps ``R^D`` onto ``R^D`` and every block is additive —
the log-determinant is exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.transform import Shape, Transform, require_rank


class Bottleneck(nn.Module):
    """i-RevNet residual function F: conv3×3 → ReLU → conv3×3 → ReLU → conv3×3, no normalisation.

    ``F(h) = W₃ ∗ ReLU(W₂ ∗ ReLU(W₁ ∗ h))`` with 3×3 convolutions ``C → width → width → C``
    ('same' zero padding, biases) — the bottleneck of Jacobsen et al. 2018, "i-RevNet", §3.1,
    Figure 2, with its batch normalisations removed so that every example is processed on its own
    (the output then does not depend on the batch, and train and eval modes agree). The last
    convolution is zero-initialised, so a fresh block only swaps the two halves.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        assert self.conv3.bias is not None  # built with a bias (Conv2d types it Tensor | None)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, h: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, C, H, W)``."""
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(h)))))


class IRevNetBlock(Transform):
    """i-RevNet reversible block y1 = x2, y2 = x1 + F(x2); log-det 0 (Jacobsen et al. 2018, §3).

    The channels are cut into halves ``x1`` (first C/2) and ``x2`` (last C/2)::

        y1 = x2,   y2 = x1 + F(x2),   y = concat(y1, y2)
        inverse:   x2 = y1,   x1 = y2 − F(y1)

    with ``F`` the :class:`Bottleneck` (``width`` hidden channels). The Jacobian is block
    triangular with identity blocks, so ``log|det J| = 0`` (Jacobsen, Smeulders & Oyallon 2018,
    "i-RevNet: Deep Invertible Networks", §3.1, eq. (1)-(2) without the down-sampling ``S``, which
    :class:`IRevNet` applies as a separate squeeze). C must be even.
    """

    exact_inverse = True  # memory-free backprop may reconstruct its input (invertible_backprop)

    volume_preserving = True
    input_ranks = (3,)
    channel_multiple = 2
    min_channels = 2

    def __init__(self, event_shape: Shape, *, width: Annotated[int, Range(1)] = 32) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("IRevNetBlock", shape, self.input_ranks, "i-RevNet blocks act on images (C, H, W).")
        if shape[0] % 2:
            raise ShapeError(
                f"IRevNetBlock splits the channels into two equal halves, so their number must "
                f"be even, but the input has shape {shape}; squeeze first (C → 4C)."
            )
        super().__init__(shape)
        self.width = int(width)
        self.f = Bottleneck(shape[0] // 2, self.width)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x1, x2) ↦ (x2, x1 + F(x2))``, log-det 0."""
        self.check_input(x)
        x1, x2 = x.chunk(2, dim=1)
        return torch.cat([x2, x1 + self.f(x2)], dim=1), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y1, y2) ↦ (y2 − F(y1), y1)``, log-det 0."""
        self.check_input(y, "inverse")
        y1, y2 = y.chunk(2, dim=1)
        return torch.cat([y2 - self.f(y1), y1], dim=1), self.zero_logdet(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, width={self.width}"


def _stage_lists(
    depths: Sequence[int],
    widths: int | Sequence[int],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate ``depths`` and ``widths`` (an int is every stage's width): one entry per stage."""
    depths_t = tuple(int(d) for d in depths)
    widths_t = (int(widths),) * len(depths_t) if isinstance(widths, int) else tuple(int(w) for w in widths)
    if not depths_t:
        raise ConfigError("IRevNet: depths must list at least one stage, e.g. [2, 2].")
    if len(depths_t) != len(widths_t):
        raise ConfigError(
            f"IRevNet: depths has {len(depths_t)} entries but widths has {len(widths_t)}; give "
            f"one block count and one width per stage (e.g. depths = [2, 2], widths = [32, 64]), "
            f"or a single width for every stage (widths = 32)."
        )
    return depths_t, widths_t


class IRevNet(Architecture):
    """Bijective i-RevNet: (squeeze → reversible blocks y1 = x2, y2 = x1 + F(x2)) per stage.

    Jacobsen, Smeulders & Oyallon 2018, "i-RevNet: Deep Invertible Networks", §3.1, bijective
    variant (no injective channel padding). Images ``(C, H, W)``; for every stage ``s``:

    1. a space-to-depth squeeze ``(C, H, W) → (4C, H/2, W/2)``, the paper's invertible
       down-sampling (skipped at the first stage when ``downsample_first = false``, which then
       needs an even C);
    2. ``depths[s]`` reversible blocks ``y1 = x2, y2 = x1 + F(x2)`` on the two channel halves,
       ``F`` a normalisation-free bottleneck conv3×3 → ReLU → conv3×3 → ReLU → conv3×3 with
       ``widths[s]`` hidden channels (an int ``widths`` is used for every stage);

    then a flatten to ``(D,)``. Squeezing the whole tensor squeezes each half on its own (channel
    ``c`` goes to channels ``4c … 4c+3``), as in the paper. Every step is volume preserving, so
    ``log|det J| = 0`` exactly; train it with a prior whose scale is learned, or with a
    non-likelihood objective, as the other volume-preserving networks. H and W must be divisible
    by ``2^k`` with ``k`` the number of squeezes. The default (two stages) fits 8×8 digits and
    28×28 MNIST.

    References:

    * Jacobsen, Smeulders & Oyallon 2018, "i-RevNet: Deep Invertible Networks", ICLR 2018.

    Arguments:

    * ``event_shape`` (injected): the shape ``(C, H, W)`` of one image; flowkit sets it from the data.
    * ``depths`` (list[int ≥ 1] | None, default None): reversible blocks per stage; ``None``: ``[2, 2]``.
    * ``widths`` (int ≥ 1 | list[int ≥ 1] | None, default None): hidden channels of ``F`` per stage, or one
      for every stage; ``None``: ``[32, 64]``.
    * ``downsample_first`` (bool, default True): squeeze before the first stage too (``False`` needs an even
      C).
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.irevnet import IRevNet
        >>> _ = torch.manual_seed(0)
        >>> flow = IRevNet((1, 8, 8), depths=[1, 1], widths=8)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> z, logdet = flow(x)
        >>> z.shape, logdet.abs().max().item()
        (torch.Size([2, 64]), 0.0)
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        True
    """

    volume_preserving = True
    input_ranks = (3,)
    size_multiple = 4  # test_params draw up to two squeezes
    test_params: ClassVar[dict[str, Any]] = {
        "depths": [[1], [1, 1], [2]],
        "widths": [4, 8],
        "downsample_first": True,
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        depths: list[Annotated[int, Range(1)]] | None = None,
        widths: Annotated[int, Range(1)] | list[Annotated[int, Range(1)]] | None = None,
        downsample_first: bool = True,
        num_classes: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            "IRevNet", shape, self.input_ranks, "i-RevNet down-samples images; give them as (C, H, W)."
        )
        stage_depths, stage_widths = _stage_lists(
            [2, 2] if depths is None else depths, [32, 64] if widths is None else widths
        )
        _check_shape(shape, len(stage_depths), downsample_first)
        steps: list[Transform] = []
        current = shape
        for stage, (depth, width) in enumerate(zip(stage_depths, stage_widths)):
            if stage > 0 or downsample_first:
                steps.append(Squeeze(current))
                current = steps[-1].output_shape
            steps.extend(IRevNetBlock(current, width=width) for _ in range(depth))
        steps.append(Flatten(current))
        super().__init__(shape, steps[-1].output_shape)
        self.flow = Sequential(steps)
        self.depths = stage_depths
        self.widths = stage_widths
        self.downsample_first = bool(downsample_first)

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for unset keys: ``depths`` ([2, 2]) and ``widths``
        ([32, 64]), one entry per stage."""
        return {"depths": list(self.depths), "widths": list(self.widths)}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, depths={list(self.depths)}, widths={list(self.widths)}, "
            f"downsample_first={self.downsample_first}"
        )


def _check_shape(shape: Shape, stages: int, downsample_first: bool) -> None:
    """Raise :class:`ShapeError` unless the squeezes fit the image and the first split is even."""
    c, h, w = shape
    squeezes = stages if downsample_first else stages - 1
    factor = 2**squeezes
    if h % factor or w % factor:
        fits = 0
        while h % 2 ** (fits + 1) == 0 and w % 2 ** (fits + 1) == 0:
            fits += 1
        raise ShapeError(
            f"IRevNet with {stages} stage(s) (downsample_first={downsample_first}) squeezes "
            f"{squeezes} time(s), so the image height and width must be divisible by {factor}, "
            f"but the input has shape {shape}. Use at most {fits} squeeze(s) (fewer entries in "
            f"depths and widths), or crop/pad the images."
        )
    if not downsample_first and c % 2:
        raise ShapeError(
            f"IRevNet with downsample_first=false splits the input's {c} channels into two "
            f"halves, so C must be even, but the input has shape {shape}; set "
            f"downsample_first=true (the first squeeze makes 4C channels)."
        )
