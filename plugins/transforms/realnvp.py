"""Real NVP: affine couplings in a multi-scale architecture (Dinh et al. 2017)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from flowkit.composition import Architecture, MultiScale, Sequential
from flowkit.context import context_spec
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.coupling import AffineCoupling, MaskKind
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.transform import Shape, Transform, require_rank

#: The conditioner width when ``hidden`` is unset: MLP units for vectors, channels for images.
DEFAULT_HIDDEN = {1: 256, 3: 64}


def coupling_args(
    owner: str,
    shape: Shape,
    hidden: int | None,
    num_hidden: int,
    num_blocks: int,
    conditional: bool | None,
    num_classes: int | None,
    context_features: int | None,
) -> dict[str, Any]:
    """The keyword arguments every coupling of a Real NVP-style architecture shares.

    An MLP conditioner (``num_hidden`` layers) for vectors, a residual conv net (``num_blocks``
    blocks) for images, ``hidden`` wide (:data:`DEFAULT_HIDDEN` when unset), and the context
    arguments, checked once here.
    """
    context_spec(owner, conditional, num_classes, context_features)  # checks the choice
    width = DEFAULT_HIDDEN[len(shape)] if hidden is None else hidden
    net: dict[str, Any] = (
        {"conditioner": "mlp", "num_hidden": num_hidden}
        if len(shape) == 1
        else {"conditioner": "conv", "num_blocks": num_blocks}
    )
    return {
        **net,
        "hidden": width,
        "conditional": conditional,
        "num_classes": num_classes,
        "context_features": context_features,
    }


def check_scales(owner: str, shape: Shape, num_scales: int) -> None:
    """Raise :class:`ShapeError` unless H and W survive ``num_scales − 1`` squeezes."""
    _, h, w = shape
    factor = 2 ** (num_scales - 1)
    if h % factor or w % factor:
        fits = 1
        while h % 2**fits == 0 and w % 2**fits == 0:
            fits += 1
        raise ShapeError(
            f"{owner} with num_scales={num_scales} squeezes {num_scales - 1} time(s), so the "
            f"image height and width must be divisible by {factor}, but the input has shape "
            f"{shape}. Use num_scales <= {fits} for this shape, or crop/pad the images."
        )


class RealNVP(Architecture):
    """Real NVP: affine couplings, multi-scale with squeeze and factor-out (Dinh et al. 2017).

    Every step is an affine coupling ``y_B = x_B ⊙ exp(s(x_A)) + t(x_A)``, ``log|det J| = Σ s``
    (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", eq. (6)-(9)).

    Images ``(C, H, W)`` (§3.6, §4.1): ``num_scales`` levels; every level but the last is 3
    checkerboard couplings → squeeze ``(C, H, W) → (4C, H/2, W/2)`` → 3 channel-mask couplings,
    after which half of the channels are factored out to the latent; the last level is 4
    checkerboard couplings. Masks alternate parity. Conditioners are residual conv nets with
    ``hidden`` channels (default 64) and ``num_blocks`` blocks (default 4; the paper used 8). H and
    W must be divisible by ``2^(num_scales − 1)``.

    Vectors ``(D,)``: ``num_layers`` couplings on the "half" split with alternating parity and MLP
    conditioners of ``num_hidden`` layers of ``hidden`` units (default 256).

    The latent has shape ``(D,)`` with ``D`` the number of input scalars.

    References:

    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_scales`` (int ≥ 1, default 2): levels of the image architecture; vectors ignore it.
    * ``num_layers`` (int ≥ 1, default 8): couplings of the vector architecture; images ignore it.
    * ``hidden`` (int ≥ 1 | None, default None): hidden units (vectors) or channels (images) of the
      conditioners; ``None``: 256 for vectors, 64 for images.
    * ``num_blocks`` (int ≥ 0, default 4): residual blocks of the image conditioners.
    * ``num_hidden`` (int ≥ 1, default 2): hidden layers of the vector conditioners.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.realnvp import RealNVP
        >>> _ = torch.manual_seed(0)
        >>> flow = RealNVP((1, 4, 4), num_scales=2, hidden=8, num_blocks=1)
        >>> _ = [torch.nn.init.normal_(p, std=0.05) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(2, 1, 4, 4)
        >>> z, logdet = flow(x)
        >>> z.shape, torch.allclose(flow.inverse(z)[0], x, atol=1e-4)
        (torch.Size([2, 16]), True)
    """

    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 to split in two
    size_multiple = 2  # for the default num_scales=2
    test_params: ClassVar[dict[str, Any]] = {
        "num_scales": [1, 2],
        "hidden": [4],
        "num_blocks": [1],
        "num_layers": [2, 3],
        "num_hidden": [1],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_scales: Annotated[int, Range(1)] = 2,
        num_layers: Annotated[int, Range(1)] = 8,
        hidden: Annotated[int, Range(1, note="None: 256 for vectors, 64 for images")] | None = None,
        num_blocks: Annotated[int, Range(0)] = 4,
        num_hidden: Annotated[int, Range(1)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("RealNVP", shape, self.input_ranks)
        super().__init__(shape, (math.prod(shape),))
        common = coupling_args(
            "RealNVP", shape, hidden, num_hidden, num_blocks, conditional, num_classes, context_features
        )
        self._effective = {"hidden": common["hidden"]}
        self.flow: Transform
        if len(shape) == 1:
            self.flow = Sequential(_couplings(shape, "half", num_layers, common))
        else:
            self.flow = MultiScale(_image_levels(shape, num_scales, common))

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for unset keys: ``hidden`` (256 for vectors, 64 for
        images when unset)."""
        return dict(self._effective)


def _couplings(
    shape: Shape,
    mask: MaskKind,
    count: int,
    common: dict[str, Any],
) -> list[Transform]:
    """``count`` affine couplings on ``shape`` with ``mask`` and alternating parity."""
    return [AffineCoupling(shape, mask=mask, parity=bool(k % 2), **common) for k in range(count)]


def _image_levels(shape: Shape, num_scales: int, common: dict[str, Any]) -> list[Transform]:
    """The levels of the multi-scale image architecture (Dinh et al. 2017, §3.6)."""
    check_scales("RealNVP", shape, num_scales)
    c, h, w = shape
    levels: list[Transform] = []
    for _ in range(num_scales - 1):
        squeeze = Squeeze((c, h, w))
        levels.append(
            Sequential(
                [
                    *_couplings((c, h, w), "checkerboard", 3, common),
                    squeeze,
                    *_couplings(squeeze.output_shape, "channel", 3, common),
                ]
            )
        )
        c, h, w = squeeze.output_shape
        c -= c // 2  # MultiScale factors out the other half
    levels.append(Sequential(_couplings((c, h, w), "checkerboard", 4, common)))
    return levels
