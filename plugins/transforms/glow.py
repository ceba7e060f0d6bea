"""Glow: actnorm, invertible 1×1 convolutions and affine couplings in a multi-scale flow.

Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions". One step of
flow is ``actnorm → invconv1x1 → affine coupling`` (§3, Fig. 2a); the model stacks ``K`` steps per
level over ``L`` levels, squeezing before each level and factoring out half of the channels after
every level but the last, where the factored half gets a learned Gaussian prior conditioned on
the kept half (Fig. 2b, and ``split2d`` in the authors' code). Here that prior is a flow step
(:class:`SplitPrior`), so the base distribution stays ``N(0, I)``. ``ActNorm`` and
``InvConv1x1`` live in their own modules and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.composition import Architecture, MultiScale, Sequential
from flowkit.context import append_context, context_spec, context_width
from flowkit.conv import conv2d
from flowkit.errors import ShapeError
from flowkit.params import Range, Seed
from flowkit.plugins.transforms.actnorm import ActNorm
from flowkit.plugins.transforms.conditioners import MLP, channels_last
from flowkit.plugins.transforms.invconv import InvConv1x1
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.reconstruction import RuleResult, add_grads, generic_rule, leaf, vjp
from flowkit.transform import Shape, Transform, require_rank, sum_except_batch

__all__ = ["ActNorm", "Glow", "GlowConvNet", "GlowCoupling", "InvConv1x1", "SplitPrior",
           "ZeroConv2d", "flow_step", "glow_coupling_rule"]

#: Added to the raw scale before the sigmoid, so a fresh coupling scales by sigmoid(2) ≈ 0.88.
SCALE_OFFSET = 2.0
#: Gain of the zero-initialised convolutions: ``out · exp(LOGSCALE_FACTOR · logs)``.
LOGSCALE_FACTOR = 3.0


class ZeroConv2d(nn.Module):
    """Zero-initialised 3×3 convolution with a learned per-channel gain (Glow's ``Conv2dZeros``).

    ``out = (conv(x) + bias) ⊙ exp(3·logs)`` with the weights, bias and ``logs`` all starting at
    zero, so the layer first outputs zeros and the flow step it feeds starts near the identity
    (Kingma & Dhariwal 2018, "Glow", §3.3, "Zero initialization"; the factor 3 is the authors'
    ``logscale_factor``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same")
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``."""
        return self.conv(channels_last(x)) * torch.exp(LOGSCALE_FACTOR * self.logs)


class GlowConvNet(nn.Module):
    """Glow's coupling network: conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3.

    ``hidden`` channels in both hidden layers, 'same' zero padding (Kingma & Dhariwal 2018,
    "Glow", §3.3 and §5: "the first and last convolutions are 3×3, the center convolution is 1×1";
    the last one is a :class:`ZeroConv2d`). The authors' code puts actnorm after the hidden
    convolutions; this network uses biases instead, so it has no data-dependent initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding="same"),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
        )
        self.out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (computed channels-last;
        without autograd each ReLU is fused into its convolution, :func:`flowkit.conv.conv2d`)."""
        h = conv2d(channels_last(x), self.body[0], relu=True)
        return self.out(conv2d(h, self.body[2], relu=True))


class _HalfConditioned(Transform):
    """Shared plumbing: a network ``net`` reads the first ``split`` channels (plus one-hot labels)
    and outputs two tensors of the remaining channels' shape; subclasses build ``net``."""

    net: nn.Module

    def _setup(self, owner: str, split: int, conditional: bool | None,
               num_classes: int | None, context_features: int | None) -> tuple[int, int]:
        """Record the split point and context; return the network's input and output channels."""
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.split = split
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        return split + context_width(self.context_spec), 2 * (self.event_shape[0] - split)

    def _params(self, h: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The network's two outputs (channels interleaved ``0::2`` and ``1::2``, as Glow)."""
        if self.context_spec is not None:
            h = append_context(h, self.context_spec.features(context, h, type(self).__name__))
        out = self.net(h)
        return out[:, 0::2], out[:, 1::2]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conditional={self.conditional}"


def glow_coupling_rule(
    block: GlowCoupling, y: Tensor, context: Tensor | None, grad_y: Tensor, grad_logdet: Tensor,
    need_input_grad: bool, params: list[Tensor],
) -> RuleResult:
    """Memory-free backprop of ``y_b = (x_b + t(x_a)) ⊙ s(x_a)``: the conditioner runs once.

    Kingma & Dhariwal 2018, "Glow", §3.3: ``x_a = y_a`` gives ``(t, log s)`` (graph kept), then
    ``x_b = y_b / s − t``; ``y_b`` is recomputed from the leaf ``x_b`` with the same
    ``(t, log s)``, so one backward gives every gradient. A rule of
    :mod:`flowkit.reconstruction`'s protocol, using only the block's public ``split`` and
    :meth:`GlowCoupling.conditioner_params`.
    """
    split = block.split
    y_a, y_b = y[:, :split], y[:, split:]
    with torch.enable_grad():
        x_a = leaf(y_a)
        shift, log_scale = block.conditioner_params(x_a, context)
        with torch.no_grad():
            x_b = y_b * torch.exp(-log_scale) - shift
        x_b_leaf = leaf(x_b)
        out_b = (x_b_leaf + shift) * torch.exp(log_scale)
        grads = vjp([out_b, sum_except_batch(log_scale)], [grad_y[:, split:], grad_logdet],
                    [x_a, x_b_leaf, *params])
    grad_x = None
    if need_input_grad:
        grad_a = add_grads(grad_y[:, :split], grads[0])
        grad_b = grads[1] if grads[1] is not None else torch.zeros_like(x_b)
        grad_x = torch.cat([grad_a, grad_b], dim=1)
    return torch.cat([y_a, x_b], dim=1), grad_x, grads[2:]


class GlowCoupling(_HalfConditioned):
    """Glow affine coupling y_b = (x_b + t(x_a)) ⊙ sigmoid(r(x_a) + 2) on channel halves (§3.3).

    The first ``⌊C/2⌋`` channels ``x_a`` pass unchanged and condition the rest ``x_b``
    (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", §3.3,
    Table 1; the sigmoid scale is the authors' code)::

        (t, r) = NN(x_a),   s = sigmoid(r + 2)
        y_a = x_a,   y_b = (x_b + t) ⊙ s,   log|det J| = Σ log s
        inverse:  x_b = y_b / s − t

    ``NN`` is :class:`GlowConvNet` for images (conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised
    conv3×3, ``hidden`` channels) and a two-hidden-layer ReLU MLP with a zero-initialised output
    for vectors ``(D,)``. Zero initialisation makes a fresh coupling ``y_b = sigmoid(2)·x_b`` —
    the identity up to a constant scale. The sigmoid keeps the scale in ``(0, 1)``, which
    stabilises training. With ``conditional=true`` one-hot class labels are fed to ``NN``.
    """

    input_ranks = (1, 3)
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {"hidden": [8, 16]}
    inversion_rule = glow_coupling_rule  # memory-free backprop: one conditioner pass

    def __init__(
        self,
        event_shape: Shape,
        *,
        hidden: Annotated[int, Range(1)] = 256,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        require_rank("GlowCoupling", self.event_shape, self.input_ranks,
                     "Flatten the data for vectors, or give images as (C, H, W).")
        if self.event_shape[0] < 2:
            kind = "features" if len(self.event_shape) == 1 else "channels"
            raise ShapeError(
                f"GlowCoupling splits the {kind} in two halves, so it needs at least 2, but the "
                f"input has shape {self.event_shape}; squeeze images first (Glow does), or use "
                f"vectors with D ≥ 2."
            )
        n_in, n_out = self._setup("GlowCoupling", self.event_shape[0] // 2, conditional,
                                  num_classes, context_features)
        self.net = GlowConvNet(n_in, n_out, hidden) if len(self.event_shape) == 3 else \
            MLP(n_in, n_out, hidden, num_hidden=2)

    def conditioner_params(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(t, log s)`` with ``log s = log sigmoid(r + 2)``, from the first ``split`` channels."""
        shift, raw = self._params(x_a, context)
        return shift, F.logsigmoid(raw + SCALE_OFFSET)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = (x_a, (x_b + t) ⊙ s)`` and ``Σ log s``."""
        self.check_input(x)
        x_a, x_b = x[:, :self.split], x[:, self.split:]
        shift, log_scale = self.conditioner_params(x_a, context)
        y_b = (x_b + shift) * torch.exp(log_scale)
        return torch.cat([x_a, y_b], dim=1), sum_except_batch(log_scale)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = (y_a, y_b / s − t)`` and ``−Σ log s``."""
        self.check_input(y, "inverse")
        y_a, y_b = y[:, :self.split], y[:, self.split:]
        shift, log_scale = self.conditioner_params(y_a, context)
        x_b = y_b * torch.exp(-log_scale) - shift
        return torch.cat([y_a, x_b], dim=1), -sum_except_batch(log_scale)


class SplitPrior(_HalfConditioned):
    """Glow's learned prior of a factored-out half, as a flow step ε = (z − μ(h)) ⊙ exp(−log σ(h)).

    Of the input ``(C, H, W)``, the first ``C − ⌊C/2⌋`` channels ``h`` are kept (they continue to
    the next level) and the last ``⌊C/2⌋`` channels ``z`` are the half that
    :class:`~flowkit.composition.MultiScale` factors out. Glow models ``z`` by a Gaussian whose
    mean and log-scale a zero-initialised 3×3 convolution computes from ``h``
    (Kingma & Dhariwal 2018, "Glow", §3, Fig. 2b; ``split2d`` in the authors' code). The same
    density is obtained with a ``N(0, I)`` base by normalising ``z``::

        (μ, log σ) = ZeroConv2d(h),   ε = (z − μ) ⊙ exp(−log σ),   h passes unchanged
        log|det J| = −Σ log σ,   so  log N(ε; 0, I) − Σ log σ = log N(z; μ, σ²)

    which is exactly Glow's conditional prior ``log p(z | h)``. With ``conditional=true`` the
    one-hot class labels are appended to ``h``. Images only.
    """

    input_ranks = (3,)
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {}
    inversion_rule = generic_rule  # memory-free backprop: inverse, then recomputation

    def __init__(
        self, event_shape: Shape, *, conditional: bool | None = None,
        num_classes: int | None = None, context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        require_rank("SplitPrior", self.event_shape, self.input_ranks,
                     "It conditions the factored-out channels of an image on the kept ones.")
        channels = self.event_shape[0]
        if channels < 2:
            raise ShapeError(
                f"SplitPrior factors out half of the channels, so it needs at least 2, but the "
                f"input has shape {self.event_shape}; squeeze the image first."
            )
        kept = channels - channels // 2
        self.net = ZeroConv2d(*self._setup("SplitPrior", kept, conditional, num_classes,
                                                  context_features))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(h, z) ↦ (h, (z − μ(h)) ⊙ exp(−log σ(h)))`` and ``−Σ log σ``."""
        self.check_input(x)
        h, z = x[:, :self.split], x[:, self.split:]
        mean, log_std = self._params(h, context)
        eps = (z - mean) * torch.exp(-log_std)
        return torch.cat([h, eps], dim=1), -sum_except_batch(log_std)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(h, ε) ↦ (h, μ(h) + σ(h) ⊙ ε)`` and ``+Σ log σ``."""
        self.check_input(y, "inverse")
        h, eps = y[:, :self.split], y[:, self.split:]
        mean, log_std = self._params(h, context)
        z = mean + eps * torch.exp(log_std)
        return torch.cat([h, z], dim=1), sum_except_batch(log_std)


def flow_step(
    shape: Shape, *, hidden: int, lu: bool, init_seed: int, conditional: bool | None,
    num_classes: int | None, context_features: int | None = None,
) -> list[Transform]:
    """One step of flow, ``actnorm → invconv1x1 → glow-coupling`` (Glow §3, Fig. 2a)."""
    return [
        ActNorm(shape),
        InvConv1x1(shape, lu=lu, init_seed=init_seed),
        GlowCoupling(shape, hidden=hidden, conditional=conditional, num_classes=num_classes,
                     context_features=context_features),
    ]


class Glow(Architecture):
    """Glow: L levels of squeeze → K × (actnorm → invconv1x1 → coupling) → split (Kingma 2018).

    The multi-scale architecture of Kingma & Dhariwal 2018, "Glow: Generative Flow with
    Invertible 1×1 Convolutions" (§3, Fig. 2b). For each of the ``num_levels`` levels: a squeeze
    ``(C, H, W) → (4C, H/2, W/2)``; ``num_steps`` steps of flow, each
    ``actnorm → invconv1x1 → glow-coupling`` (conditioners with ``hidden`` channels; ``lu``
    chooses the LU-decomposed 1×1 convolutions); then, except after the last level, a
    :class:`SplitPrior` normalises the second half of the channels with a mean and scale computed
    from the first half, and that half is factored out to the latent
    (:class:`~flowkit.composition.MultiScale`). The log-determinant sums every step's:
    ``H·W·Σ log s`` (actnorm), ``H·W·log|det W|`` (1×1 conv), ``Σ log sigmoid(r + 2)``
    (coupling), ``−Σ log σ`` (split prior). H and W must be divisible by ``2^num_levels``;
    by default ``num_levels`` is the paper's 3, or as many as the image size allows (2 for 28×28).

    The latent is flat, ``(D,)`` with ``D = C·H·W``, and its prior should be ``N(0, I)``: the
    learned conditional priors of the factored-out halves are part of the transform. The paper
    used K = 32 (48 for ImageNet), 512 hidden channels and inputs centred as ``x − 0.5``
    (``[data] preprocess = "center"``). The 1×1 convolutions start as random rotations drawn from
    ``init_seed + step index``. With ``conditional=true`` class labels feed every coupling and
    split prior. Images only.
    """

    input_ranks = (3,)
    # Conformance draws: sides divisible by 4 (num_levels ≤ 2) and at least 8, so that the last
    # level still has 2×2 pixels and actnorm's init from the 3-example warm-up batch sees enough
    # values per channel to give well-conditioned scales (float32 round trips on random latents).
    size_multiple = 4
    min_size = 8
    # One step per level: with random perturbed weights, deeper stacks have exploding inverses on
    # random latents (1/sigmoid scales and split-prior σ compound; Behrmann et al. 2021,
    # "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks"), which
    # makes float32 round trips fail by chance; tests/plugins/test_glow.py checks K = 2 directly.
    test_params: ClassVar[dict[str, Any]] = {
        "num_levels": [2, 1], "num_steps": [1], "hidden": [4], "lu": [True, False],
    }
    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {"data": {"preprocess": "center"}}

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_levels: Annotated[int, Range(1, note="None: up to 3, as the image allows")] | None = None,
        num_steps: Annotated[int, Range(1)] = 8,
        hidden: Annotated[int, Range(1)] = 256,
        lu: bool = True,
        init_seed: Seed = 0,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("Glow", shape, self.input_ranks,
                     "Glow is an image architecture; for vectors compose actnorm, invconv1x1 and "
                     "glow-coupling.")
        super().__init__(shape, (math.prod(shape),))
        if num_levels is None:  # the paper's 3 levels, or as many as the image size allows
            num_levels = min(3, max(1, _levels_that_fit(shape)))
        spec = context_spec("Glow", conditional, num_classes, context_features)
        _check_divisible(shape, num_levels)
        self.num_levels = num_levels
        self.num_steps = num_steps
        self.conditional = spec is not None
        common: dict[str, Any] = {"hidden": hidden, "lu": lu, "conditional": conditional,
                                  "num_classes": num_classes,
                                  "context_features": context_features}
        levels: list[Transform] = []
        c, h, w = shape
        for level in range(num_levels):
            squeeze = Squeeze((c, h, w))
            c, h, w = squeeze.output_shape
            steps: list[Transform] = [squeeze]
            for k in range(num_steps):
                steps += flow_step((c, h, w), init_seed=init_seed + level * num_steps + k,
                                   **common)
            if level < num_levels - 1:
                steps.append(SplitPrior((c, h, w), conditional=conditional,
                                        num_classes=num_classes,
                                        context_features=context_features))
                c -= c // 2  # MultiScale factors out the second half
            levels.append(Sequential(steps))
        self.flow = MultiScale(levels)


    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_levels={self.num_levels}, "
                f"num_steps={self.num_steps}, conditional={self.conditional}")


def _levels_that_fit(shape: Shape) -> int:
    """The largest L with H and W divisible by ``2^L``."""
    _, h, w = shape
    fits = 0
    while h % 2 ** (fits + 1) == 0 and w % 2 ** (fits + 1) == 0:
        fits += 1
    return fits


def _check_divisible(shape: Shape, num_levels: int) -> None:
    """Raise :class:`ShapeError` unless H and W are divisible by ``2^num_levels``."""
    _, h, w = shape
    factor = 2 ** num_levels
    if h % factor or w % factor:
        fits = _levels_that_fit(shape)
        fix = f"use num_levels at most {fits}" if fits else "pad the images to even sizes"
        raise ShapeError(
            f"Glow with num_levels={num_levels} squeezes {num_levels} time(s), so the height and "
            f"width must be divisible by 2^{num_levels} = {factor}, but the input has shape "
            f"{shape} ({h}×{w}); {fix}, or crop/pad the images (e.g. to a multiple of {factor})."
        )
