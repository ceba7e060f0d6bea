"""GIN: volume-preserving affine couplings whose log-scales sum to zero (Sorrenson et al. 2020).

Sorrenson, Rother & Köthe 2020, "Disentanglement by Nonlinear ICA with General
Incompressible-flow Networks (GIN)", §3: a GIN coupling is a Real NVP affine coupling whose
log-scales are constrained to sum to zero over the transformed half, so every block — and the
whole network — has ``log|det J| = 0`` exactly ("incompressible flow"). The constraint keeps the
per-dimension rescaling of an affine coupling (volume can move between dimensions), unlike an
additive (NICE) coupling, which has no scaling at all.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.coupling import GINCoupling, MaskKind
from flowkit.plugins.transforms.permutation import RandomPermutation
from flowkit.plugins.transforms.realnvp import check_scales, coupling_args
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.transform import Shape, Transform, require_rank

__all__ = ["GIN", "GINCoupling"]


class GIN(Architecture):
    """GIN: volume-preserving affine couplings with zero-sum log-scales (Sorrenson et al. 2020).

    Every block is a GIN coupling ``y_B = x_B ⊙ exp(s(x_A)) + t(x_A)`` with ``Σ_j s_j = 0``, so
    ``log|det J| = 0`` for the whole network (Sorrenson, Rother & Köthe 2020, "Disentanglement by
    Nonlinear ICA with General Incompressible-flow Networks (GIN)", §3). The latent has shape
    ``(D,)`` with ``D`` the number of input scalars; a GIN is meant to be trained with a prior
    whose variances are learned (e.g. ``diag-gaussian`` or ``class-gaussian``), which then
    carries the volume change.

    Vectors ``(D,)``: ``num_blocks`` couplings on the "half" split with alternating parity and
    MLP conditioners (``num_hidden`` layers of ``hidden`` units, default 256), with a fixed random
    permutation of the features between blocks when ``permute`` (as in the paper's networks).

    Images ``(C, H, W)``: ``num_scales`` stages; the first has ``num_blocks`` checkerboard
    couplings, every later one starts with a squeeze ``(C, H, W) → (4C, H/2, W/2)`` followed by
    ``num_blocks`` channel-mask couplings (with random channel permutations between them when
    ``permute``). Conditioners are residual conv nets with ``hidden`` channels (default 64) and
    ``res_blocks`` blocks. No factor-out: every stage sees all dimensions. H and W must be
    divisible by ``2^(num_scales − 1)``.

    References:

    * Sorrenson, Rother & Köthe 2020, "Disentanglement by Nonlinear ICA with General Incompressible-flow
      Networks (GIN)", ICLR 2020.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_blocks`` (int ≥ 1, default 8): couplings per network (vectors) or per stage (images).
    * ``num_scales`` (int ≥ 1, default 2): stages of an image network (every one after the first starts with a
      squeeze); vectors ignore it.
    * ``hidden`` (int ≥ 1 | None, default None): hidden units (vectors) or channels (images) of the
      conditioners; ``None``: 256 for vectors, 64 for images.
    * ``num_hidden`` (int ≥ 1, default 2): hidden layers of the vector conditioners.
    * ``res_blocks`` (int ≥ 0, default 2): residual blocks of the image conditioners.
    * ``permute`` (bool, default True): fixed random permutations between the couplings.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.gin import GIN
        >>> _ = torch.manual_seed(0)
        >>> flow = GIN((4,), num_blocks=2, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 4)
        >>> z, logdet = flow(x)
        >>> logdet.abs().max().item() < 1e-6, torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        (True, True)
    """

    volume_preserving = True
    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 to split in two; keeps drawn images non-trivial
    min_size = 2  # a checkerboard needs at least 2 pixels
    size_multiple = 2  # test_params draw up to two scales
    test_params: ClassVar[dict[str, Any]] = {
        "num_blocks": [2, 3],
        "num_scales": [1, 2],
        "hidden": [4, 8],
        "num_hidden": [1],
        "res_blocks": [1],
        "permute": [True, False],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_blocks: Annotated[int, Range(1)] = 8,
        num_scales: Annotated[int, Range(1)] = 2,
        hidden: Annotated[int, Range(1, note="None: 256 for vectors, 64 for images")] | None = None,
        num_hidden: Annotated[int, Range(1)] = 2,
        res_blocks: Annotated[int, Range(0)] = 2,
        permute: bool = True,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("GIN", shape, self.input_ranks, "Give vectors as (D,) or images as (C, H, W).")
        super().__init__(shape, (math.prod(shape),))
        common = coupling_args(
            "GIN", shape, hidden, num_hidden, res_blocks, conditional, num_classes, context_features
        )
        self._effective = {"hidden": common["hidden"]}
        if len(shape) == 1:
            steps = _blocks(shape, "half", num_blocks, permute, seed=0, common=common)
        else:
            steps = _image_steps(shape, num_blocks, num_scales, permute, common)
            steps.append(Flatten(steps[-1].output_shape))
        self.flow = Sequential(steps)
        self.num_blocks = int(num_blocks)
        self.num_scales = int(num_scales) if len(shape) == 3 else 1

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for unset keys: ``hidden`` (256 for vectors, 64 for
        images when unset)."""
        return dict(self._effective)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_blocks={self.num_blocks}, num_scales={self.num_scales}"


def _blocks(
    shape: Shape,
    mask: MaskKind,
    count: int,
    permute: bool,
    seed: int,
    common: dict[str, Any],
) -> list[Transform]:
    """``count`` GIN couplings with alternating parity, permutations between them if asked."""
    steps: list[Transform] = []
    for k in range(count):
        if permute and k > 0:
            steps.append(RandomPermutation(shape, permutation_seed=seed + k))
        steps.append(GINCoupling(shape, mask=mask, parity=bool(k % 2), **common))
    return steps


def _image_steps(
    shape: Shape,
    num_blocks: int,
    num_scales: int,
    permute: bool,
    common: dict[str, Any],
) -> list[Transform]:
    """Checkerboard stage, then (squeeze → channel-mask stage) ``num_scales − 1`` times."""
    check_scales("GIN", shape, num_scales)
    _, h, w = shape
    if h * w < 2:
        raise ShapeError(
            f"GIN's first stage uses checkerboard masks, which need at least 2 pixels, but the "
            f"input has shape {shape}; give images of at least 1×2 pixels, or flatten them."
        )
    steps = _blocks(shape, "checkerboard", num_blocks, False, 0, common)
    current = shape
    for scale in range(1, num_scales):
        squeeze = Squeeze(current)
        current = squeeze.output_shape
        steps.append(squeeze)
        steps += _blocks(current, "channel", num_blocks, permute, 1000 * scale, common)
    return steps
