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
    """

    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 to split in two
    size_multiple = 2  # for the default num_scales=2
    test_params: ClassVar[dict[str, Any]] = {
        "num_scales": [1, 2], "hidden": [4], "num_blocks": [1], "num_layers": [2, 3],
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
        context_spec("RealNVP", conditional, num_classes, context_features)  # checks the choice
        common: dict[str, Any] = {"conditional": conditional, "num_classes": num_classes,
                                  "context_features": context_features}
        self.flow: Transform
        if len(shape) == 1:
            self.flow = Sequential(
                AffineCoupling(shape, mask="half", parity=bool(k % 2), conditioner="mlp",
                               hidden=256 if hidden is None else hidden,
                               num_hidden=num_hidden, **common)
                for k in range(num_layers)
            )
        else:
            common.update(conditioner="conv", hidden=64 if hidden is None else hidden,
                          num_blocks=num_blocks)
            self.flow = MultiScale(_image_levels(shape, num_scales, common))



def _couplings(
    shape: Shape, mask: MaskKind, count: int, common: dict[str, Any],
) -> list[Transform]:
    """``count`` affine couplings on ``shape`` with ``mask`` and alternating parity."""
    return [AffineCoupling(shape, mask=mask, parity=bool(k % 2), **common) for k in range(count)]


def _image_levels(shape: Shape, num_scales: int, common: dict[str, Any]) -> list[Transform]:
    """The levels of the multi-scale image architecture (Dinh et al. 2017, §3.6)."""
    c, h, w = shape
    factor = 2 ** (num_scales - 1)
    if h % factor or w % factor:
        fits = 1
        while h % 2**fits == 0 and w % 2**fits == 0:
            fits += 1
        raise ShapeError(
            f"RealNVP with num_scales={num_scales} squeezes {num_scales - 1} time(s), so the "
            f"height and width must be divisible by {factor}, but the input has shape {shape}. "
            f"Use a smaller num_scales (at most {fits} for this shape), or crop/pad the images."
        )
    levels: list[Transform] = []
    for _ in range(num_scales - 1):
        squeeze = Squeeze((c, h, w))
        levels.append(Sequential([
            *_couplings((c, h, w), "checkerboard", 3, common),
            squeeze,
            *_couplings(squeeze.output_shape, "channel", 3, common),
        ]))
        c, h, w = squeeze.output_shape
        c -= c // 2  # MultiScale factors out the other half
    levels.append(Sequential(_couplings((c, h, w), "checkerboard", 4, common)))
    return levels
