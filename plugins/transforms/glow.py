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

from flowkit.composition import Architecture, MultiScale, Sequential
from flowkit.context import context_spec
from flowkit.elementwise import Inverted
from flowkit.errors import ShapeError
from flowkit.params import Range, Seed
from flowkit.plugins.elementwise import SCALE_OFFSET, Affine
from flowkit.plugins.transforms.actnorm import ActNorm
from flowkit.plugins.transforms.conditioners import LOGSCALE_FACTOR, GlowConvNet, ZeroConv2d
from flowkit.plugins.transforms.coupling import Coupling, coupling_rule
from flowkit.plugins.transforms.invconv import InvConv1x1
from flowkit.plugins.transforms.squeeze import Squeeze
from flowkit.transform import Shape, Transform, require_rank

__all__ = [
    "LOGSCALE_FACTOR",
    "SCALE_OFFSET",
    "ActNorm",
    "Glow",
    "GlowConvNet",
    "GlowCoupling",
    "InvConv1x1",
    "SplitPrior",
    "ZeroConv2d",
    "flow_step",
    "glow_coupling_rule",
]

#: The former name of the coupling rule Glow's couplings and split priors declare.
glow_coupling_rule = coupling_rule


def _need_two_channels(owner: str, shape: Shape, fix: str) -> None:
    """Raise :class:`ShapeError` unless there are two features (channels) to split."""
    if shape[0] < 2:
        kind = "features" if len(shape) == 1 else "channels"
        raise ShapeError(
            f"{owner} splits the {kind} in two halves, so it needs at least 2, but "
            f"the input has shape {shape}; {fix}."
        )


class GlowCoupling(Coupling):
    """Glow affine coupling y_b = (x_b + t(x_a)) ⊙ sigmoid(r(x_a) + 2) on channel halves (§3.3).

    The first ``⌊C/2⌋`` channels ``x_a`` pass unchanged and condition the rest ``x_b``
    (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", §3.3,
    Table 1; the sigmoid scale is the authors' code)::

        (t, r) = NN(x_a),   log s = −soft_cap(−log sigmoid(r + 2))   (= log sigmoid(r + 2) if ≥ −4)
        y_a = x_a,   y_b = (x_b + t) ⊙ s,   log|det J| = Σ log s
        inverse:  x_b = y_b / s − t,   1/s < e⁶ ≈ 403

    A :class:`~flowkit.plugins.transforms.coupling.Coupling` with the ``affine`` map (``sigmoid``
    scale, shift first) and ``(t, r)`` interleaved in ``NN``'s output channels. ``NN`` is
    :class:`GlowConvNet` for images (conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3,
    ``hidden`` channels) and a two-hidden-layer ReLU MLP with a zero-initialised output for
    vectors ``(D,)``. Zero initialisation makes a fresh coupling ``y_b = sigmoid(2)·x_b`` — the
    identity up to a constant scale. The sigmoid keeps the scale in ``(0, 1)``, which stabilises
    training. With ``conditional=true`` one-hot class labels are fed to ``NN``.

    The floor (:func:`~flowkit.plugins.elementwise.soft_cap`, knee 4, cap 6) leaves the authors'
    ``s = sigmoid(r + 2)`` unchanged for ``s ≥ e⁻⁴ ≈ 0.018`` and keeps ``s > e⁻⁶ ≈ 0.0025``.
    Unfloored, the inverse's ``1/s ≈ e^{−r−2}`` grows exponentially with the input through
    ``r``, layer after layer, and inverting N(0, I) latents gave mostly non-finite samples
    (``docs/glow.md``, "Samples that explode").

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``hidden`` (int ≥ 1, default 256): hidden channels (images) or units (vectors) of ``NN``.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.glow import GlowCoupling
        >>> _ = torch.manual_seed(0)
        >>> layer = GlowCoupling((4, 2, 2), hidden=8)
        >>> x = torch.randn(3, 4, 2, 2)
        >>> y, logdet = layer(x)  # a fresh layer: y_a = x_a, y_b = sigmoid(2)·x_b
        >>> scale = torch.sigmoid(torch.tensor(2.0))
        >>> torch.equal(y[:, :2], x[:, :2]), torch.allclose(y[:, 2:], scale * x[:, 2:])
        (True, True)
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-6)
        True
    """

    min_channels = 2
    min_size = 1
    test_params: ClassVar[dict[str, Any]] = {"hidden": [8, 16]}
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass
    output_layout = "interleaved"
    full_size_init = False

    def __init__(
        self,
        event_shape: Shape,
        *,
        hidden: Annotated[int, Range(1)] = 256,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            "GlowCoupling",
            shape,
            self.input_ranks,
            "Flatten the data for vectors, or give images as (C, H, W).",
        )
        _need_two_channels(
            "GlowCoupling", shape, "squeeze images first (Glow does), or use vectors with D ≥ 2"
        )
        super().__init__(
            shape,
            map=Affine(scale="sigmoid", shift_first=True),
            mask=list(range(shape[0] // 2)),
            conditioner="glow" if len(shape) == 3 else "mlp",
            hidden=hidden,
            num_hidden=2,
            conditional=conditional,
            num_classes=num_classes,
            context_features=context_features,
        )
        self.split = shape[0] // 2


class SplitPrior(Coupling):
    """Glow's learned prior of a factored-out half, as a flow step ε = (z − μ(h)) ⊙ exp(−log σ(h)).

    Of the input ``(C, H, W)``, the first ``C − ⌊C/2⌋`` channels ``h`` are kept (they continue to
    the next level) and the last ``⌊C/2⌋`` channels ``z`` are the half that
    :class:`~flowkit.composition.MultiScale` factors out. Glow models ``z`` by a Gaussian whose
    mean and log-scale a zero-initialised 3×3 convolution computes from ``h``
    (Kingma & Dhariwal 2018, "Glow", §3, Fig. 2b; ``split2d`` in the authors' code). The same
    density is obtained with a ``N(0, I)`` base by normalising ``z``::

        (μ, r) = ZeroConv2d(h),   log σ = soft_cap(r),   ε = (z − μ) ⊙ exp(−log σ),   h unchanged
        log|det J| = −Σ log σ,   so  log N(ε; 0, I) − Σ log σ = log N(z; μ, σ²)
        inverse (sampling):  z = μ + σ ⊙ ε,   σ < e⁶ ≈ 403

    which is exactly Glow's conditional prior ``log p(z | h)``: a
    :class:`~flowkit.plugins.transforms.coupling.Coupling` on the ``channel`` split whose map is
    the inverse of the ``affine`` map (``capped-exp`` scale), ``(μ, r)`` interleaved. With
    ``conditional=true`` the one-hot class labels are appended to ``h``. Images only.

    The cap (:func:`~flowkit.plugins.elementwise.soft_cap`) keeps the authors' ``log σ = r`` for
    ``r ≤ 4`` (σ up to ``e⁴ ≈ 55``) and bends it smoothly below 6. Uncapped, ``σ = exp(r)`` with
    ``r`` growing with ``h`` overflowed when sampling from a large ``h`` (``docs/glow.md``,
    "Samples that explode"). Small ``σ`` (the density direction) is not bounded.
    """

    input_ranks = (3,)
    min_channels = 2
    min_size = 1
    test_params: ClassVar[dict[str, Any]] = {}
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass
    output_layout = "interleaved"
    full_size_init = False

    def __init__(
        self,
        event_shape: Shape,
        *,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            "SplitPrior",
            shape,
            self.input_ranks,
            "It conditions the factored-out channels of an image on the kept ones.",
        )
        _need_two_channels("SplitPrior", shape, "squeeze the image first")
        super().__init__(
            shape,
            map=Inverted(Affine(scale="capped-exp")),
            mask="channel",
            conditioner=ZeroConv2d,
            conditional=conditional,
            num_classes=num_classes,
            context_features=context_features,
        )
        self.split = shape[0] - shape[0] // 2


def flow_step(
    shape: Shape,
    *,
    hidden: int,
    lu: bool,
    init_seed: int,
    conditional: bool | None,
    num_classes: int | None,
    context_features: int | None = None,
) -> list[Transform]:
    """One step of flow, ``actnorm → invconv1x1 → glow-coupling`` (Glow §3, Fig. 2a)."""
    return [
        ActNorm(shape),
        InvConv1x1(shape, lu=lu, init_seed=init_seed),
        GlowCoupling(
            shape,
            hidden=hidden,
            conditional=conditional,
            num_classes=num_classes,
            context_features=context_features,
        ),
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

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape ``(C, H, W)`` of one image; flowkit sets it from the data.
    * ``num_levels`` (int ≥ 1 | None, default None): the number of levels ``L``; ``None``: 3, or as many as
      the image size allows.
    * ``num_steps`` (int ≥ 1, default 8): steps of flow ``K`` per level.
    * ``hidden`` (int ≥ 1, default 256): hidden channels of the coupling networks.
    * ``lu`` (bool, default True): LU-decomposed 1×1 convolutions.
    * ``init_seed`` (int in [0, 4294967295], default 0): the 1×1 convolutions start as rotations drawn from
      ``init_seed + step index``.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.glow import Glow
        >>> _ = torch.manual_seed(0)
        >>> flow = Glow((1, 8, 8), num_levels=2, num_steps=2, hidden=8)
        >>> x = torch.randn(4, 1, 8, 8)
        >>> z, logdet = flow(x)  # the first training batch initialises the actnorms
        >>> z.shape, logdet.shape
        (torch.Size([4, 64]), torch.Size([4]))
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-4)
        True
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
        "num_levels": [2, 1],
        "num_steps": [1],
        "hidden": [4],
        "lu": [True, False],
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
        require_rank(
            "Glow",
            shape,
            self.input_ranks,
            "Glow is an image architecture; for vectors compose actnorm, invconv1x1 and glow-coupling.",
        )
        super().__init__(shape, (math.prod(shape),))
        if num_levels is None:  # the paper's 3 levels, or as many as the image size allows
            num_levels = min(3, max(1, _levels_that_fit(shape)))
        spec = context_spec("Glow", conditional, num_classes, context_features)
        _check_divisible(shape, num_levels)
        self.num_levels = num_levels
        self.num_steps = num_steps
        self._effective = {"num_levels": num_levels}
        self.conditional = spec is not None
        common: dict[str, Any] = {
            "hidden": hidden,
            "lu": lu,
            "conditional": conditional,
            "num_classes": num_classes,
            "context_features": context_features,
        }
        levels: list[Transform] = []
        c, h, w = shape
        for level in range(num_levels):
            squeeze = Squeeze((c, h, w))
            c, h, w = squeeze.output_shape
            steps: list[Transform] = [squeeze]
            for k in range(num_steps):
                steps += flow_step((c, h, w), init_seed=init_seed + level * num_steps + k, **common)
            if level < num_levels - 1:
                steps.append(
                    SplitPrior(
                        (c, h, w),
                        conditional=conditional,
                        num_classes=num_classes,
                        context_features=context_features,
                    )
                )
                c -= c // 2  # MultiScale factors out the second half
            levels.append(Sequential(steps))
        self.flow = MultiScale(levels)

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for unset keys: ``num_levels`` (None: up to 3)."""
        return dict(self._effective)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_levels={self.num_levels}, "
            f"num_steps={self.num_steps}, conditional={self.conditional}"
        )


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
    factor = 2**num_levels
    if h % factor or w % factor:
        fits = _levels_that_fit(shape)
        fix = f"use num_levels at most {fits}" if fits else "pad the images to even sizes"
        raise ShapeError(
            f"Glow with num_levels={num_levels} squeezes {num_levels} time(s), so the height and "
            f"width must be divisible by 2^{num_levels} = {factor}, but the input has shape "
            f"{shape} ({h}×{w}); {fix}, or crop/pad the images (e.g. to a multiple of {factor})."
        )
