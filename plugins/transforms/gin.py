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

import torch
from torch import Tensor

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.coupling import AffineCoupling, MaskKind, scaled_tanh
from flowkit.plugins.transforms.permutation import RandomPermutation
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.transform import Shape, Transform, require_rank, sum_except_batch


def zero_sum_log_scale(raw: Tensor, free: Tensor) -> Tensor:
    """Centre log-scales on the transformed entries: ``s = free ⊙ (ŝ − mean_{free}(ŝ))``.

    ``raw`` is ``(B, *event_shape)``; ``free`` (0/1, broadcastable to one example) marks the
    transformed entries. The mean is taken per example over those entries only, so
    ``Σ_j s_j = 0`` for every example (Sorrenson et al. 2020, "GIN", §3) and the entries where
    ``free == 0`` stay exactly 0.
    """
    count = free.expand(raw.shape[1:]).sum()
    masked = free * raw
    mean = sum_except_batch(masked) / count
    return free * (masked - mean.reshape(-1, *([1] * (raw.dim() - 1))))


class GINCoupling(AffineCoupling):
    """GIN coupling: affine coupling with zero-sum log-scales, so log|det J| = 0 (GIN §3).

    ``y_A = x_A``, ``y_B = x_B ⊙ exp(s(x_A)) + t(x_A)`` with
    ``s = ŝ − mean(ŝ)`` over the transformed entries ``B`` and ``ŝ = scale ⊙ tanh(raw)`` the
    bounded log-scale of ``affine-coupling``; hence ``Σ_j s_j = 0`` and
    ``log|det J| = Σ_j s_j = 0`` exactly (Sorrenson, Rother & Köthe 2020, "Disentanglement by
    Nonlinear ICA with General Incompressible-flow Networks (GIN)", §3; the affine coupling is
    Dinh et al. 2017, "Real NVP", eq. (6)-(9)). Masks, conditioners and ``conditional`` are as in
    ``affine-coupling``. When only one entry is transformed, ``s = 0`` and the block is additive.
    """

    volume_preserving = True

    def _couple(
        self, x: Tensor, params: tuple[Tensor, ...], free: Tensor, inverse: bool,
    ) -> tuple[Tensor, Tensor]:
        raw_log_scale, shift = params
        log_scale = zero_sum_log_scale(scaled_tanh(raw_log_scale, self.scale), free)
        shift = free * shift
        if inverse:
            return (x - shift) * torch.exp(-log_scale), self.zero_logdet(x)
        return x * torch.exp(log_scale) + shift, self.zero_logdet(x)


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
    """

    volume_preserving = True
    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 to split in two; keeps drawn images non-trivial
    min_size = 2  # a checkerboard needs at least 2 pixels
    size_multiple = 2  # test_params draw up to two scales
    test_params: ClassVar[dict[str, Any]] = {
        "num_blocks": [2, 3], "num_scales": [1, 2], "hidden": [4, 8], "num_hidden": [1],
        "res_blocks": [1], "permute": [True, False],
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
        require_rank("GIN", shape, self.input_ranks,
                     "Give vectors as (D,) or images as (C, H, W).")
        super().__init__(shape, (math.prod(shape),))
        context_spec("GIN", conditional, num_classes, context_features)  # checks the choice
        common: dict[str, Any] = {"conditional": conditional, "num_classes": num_classes,
                                  "context_features": context_features}
        if len(shape) == 1:
            common.update(conditioner="mlp", hidden=256 if hidden is None else hidden,
                          num_hidden=num_hidden)
            steps = _blocks(shape, "half", num_blocks, permute, seed=0, common=common)
        else:
            common.update(conditioner="conv", hidden=64 if hidden is None else hidden,
                          num_blocks=res_blocks)
            steps = _image_steps(shape, num_blocks, num_scales, permute, common)
            steps.append(Flatten(steps[-1].output_shape))
        self.flow = Sequential(steps)
        self.num_blocks = int(num_blocks)
        self.num_scales = int(num_scales) if len(shape) == 3 else 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_blocks={self.num_blocks}, num_scales={self.num_scales}"


def _blocks(
    shape: Shape, mask: MaskKind, count: int, permute: bool, seed: int, common: dict[str, Any],
) -> list[Transform]:
    """``count`` GIN couplings with alternating parity, permutations between them if asked."""
    steps: list[Transform] = []
    for k in range(count):
        if permute and k > 0:
            steps.append(RandomPermutation(shape, permutation_seed=seed + k))
        steps.append(GINCoupling(shape, mask=mask, parity=bool(k % 2), **common))
    return steps


def _image_steps(
    shape: Shape, num_blocks: int, num_scales: int, permute: bool, common: dict[str, Any],
) -> list[Transform]:
    """Checkerboard stage, then (squeeze → channel-mask stage) ``num_scales − 1`` times."""
    _, h, w = shape
    factor = 2 ** (num_scales - 1)
    if h % factor or w % factor:
        fits = 1
        while h % 2**fits == 0 and w % 2**fits == 0:
            fits += 1
        raise ShapeError(
            f"GIN with num_scales={num_scales} squeezes {num_scales - 1} time(s), so the image "
            f"height and width must be divisible by {factor}, but the input has shape {shape}. "
            f"Use num_scales <= {fits} for this shape, or crop/pad the images."
        )
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
