"""The Generative Reversible Network: additive reversible blocks between checkerboard subsamples.

Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks": one
RevNet is both encoder ``z = f(x)`` and decoder ``x = f⁻¹(z)``. Its blocks are the additive
reversible blocks of Gomez et al. 2017 ("The Reversible Residual Network"), with no
normalisation and no scaling, so the whole network is volume preserving (log-det 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import append_context, context_spec, context_width
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Odd, Range
from flowkit.plugins.transforms.subsample import GRNSubsample, ZeroPad
from flowkit.reconstruction import RuleResult, add_grads, leaf, vjp
from flowkit.transform import Shape, Transform, require_rank

__all__ = ["GRNSubsample", "RevNet", "RevNetBlock", "ZeroPad", "revnet_rule"]

InitKind = Literal["xavier", "default"]


#: A convolution's kernel size: odd, so that zero padding ``k // 2`` keeps the image size.
KernelSize = Annotated[int, Range(1), Odd(note="padding k//2 keeps the image size; use e.g. 1 or 3")]
#: A width or a block count of at least one.
Positive = Annotated[int, Range(1)]


def _residual_net(channels: int, hidden: int, kernel_size: int, init: str, extra: int = 0) -> nn.Sequential:
    """``conv(C+extra→h, k×k) → ReLU → conv(h→C, k×k)``, zero padding ``k//2``, with biases."""
    pad = kernel_size // 2
    net = nn.Sequential(
        nn.Conv2d(channels + extra, hidden, kernel_size, padding=pad),
        nn.ReLU(),
        nn.Conv2d(hidden, channels, kernel_size, padding=pad),
    )
    if init == "xavier":
        for layer in net:
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight, gain=1.0)
                assert layer.bias is not None  # built with a bias (Conv2d types it Tensor | None)
                nn.init.zeros_(layer.bias)
    return net


def revnet_rule(
    block: RevNetBlock,
    y: Tensor,
    context: Tensor | None,
    grad_y: Tensor,
    grad_logdet: Tensor,
    need_input_grad: bool,
    params: list[Tensor],
) -> RuleResult:
    """Memory-free backprop of ``y1 = b + F(a), y2 = a + G(y1)``: Algorithm 1 of Gomez et al. 2017.

    ``G(y1)`` (graph kept) gives ``a = y2 − G(y1)`` and ``∂L/∂y1 += Gᵀ ∂L/∂y2``; then ``F(a)``
    gives ``b = y1 − F(a)``, ``∂L/∂a = ∂L/∂y2 + Fᵀ ∂L/∂y1`` and ``∂L/∂b = ∂L/∂y1``. Each residual
    function runs once, as in the forward pass. A rule of :mod:`flowkit.reconstruction`'s
    protocol, using only the block's public :meth:`~RevNetBlock.as_image`,
    :meth:`~RevNetBlock.residual_f` and :meth:`~RevNetBlock.residual_g`.
    """
    y1, y2 = block.as_image(y).chunk(2, dim=1)
    g_y1, g_y2 = block.as_image(grad_y).chunk(2, dim=1)
    with torch.enable_grad():
        y1_leaf = leaf(y1)
        g_out = block.residual_g(y1_leaf, context)
        grads_g = vjp([g_out], [g_y2], [y1_leaf, *params])
        grad_y1 = add_grads(g_y1, grads_g[0])
        assert grad_y1 is not None
        a = y2 - g_out.detach()
        a_leaf = leaf(a, need_input_grad)
        f_out = block.residual_f(a_leaf, context)
        grads_f = vjp([f_out], [grad_y1], [a_leaf, *params] if need_input_grad else params)
        b = y1 - f_out.detach()
    x = torch.cat([a, b], dim=1).reshape(y.shape)
    grad_x = None
    if need_input_grad:
        grad_x = torch.cat([add_grads(g_y2, grads_f.pop(0)), grad_y1], dim=1).reshape(y.shape)
    return x, grad_x, [add_grads(p, q) for p, q in zip(grads_g[1:], grads_f)]


class RevNetBlock(Transform):
    """Additive reversible block y1 = b + F(a), y2 = a + G(y1) (RevNet/GRN); log-det 0.

    The block of Gomez et al. 2017, "The Reversible Residual Network" (§3, eq. (1)-(2)), as used
    by Schirrmeister et al. 2018, "Training Generative Reversible Networks". The input's channels
    are cut into halves ``a`` (first C/2) and ``b`` (last C/2)::

        y1 = b + F(a),   y2 = a + G(y1),   y = concat(y1, y2)
        inverse:  a = y2 − G(y1),   b = y1 − F(a)

    so the halves swap places (with ``F = G = 0`` the block outputs ``(b, a)``) and two blocks
    restore the stream order. ``F`` and ``G`` have separate weights and the same structure,
    ``conv(C/2 → hidden, k×k) → ReLU → conv(hidden → C/2, k×k)`` with zero padding ``k//2`` and
    biases; there is no normalisation. Triangular Jacobian with unit diagonal: ``log|det J| = 0``.
    ``init = "xavier"`` draws the conv weights Xavier-uniform (gain 1) and zeroes the biases, as the
    reference MNIST model; ``"default"`` keeps PyTorch's initialisation (the CelebA model).

    Vectors ``(D,)`` are treated as ``(D, 1, 1)`` images: F and G act as two-layer MLPs, and
    only the centre taps of the kernels matter, so ``kernel_size = 1`` is the natural choice.
    C (or D) must be even.

    Conditional (a real-valued context ``h``, ``context_features = k``, or class labels with
    ``conditional = true``): ``F`` and ``G`` read ``h`` as ``k`` extra constant input channels,
    ``y1 = b + F(a, h)``, ``y2 = a + G(y1, h)``; the inverse is unchanged in form, so the block
    stays exactly invertible and volume preserving for every context. Without
    ``conditional = true`` class labels are ignored, as before.

    References:

    * Gomez, Ren, Urtasun & Grosse 2017, "The Reversible Residual Network: Backpropagation Without Storing
      Activations", NeurIPS 2017.
    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``hidden`` (int ≥ 1, default 64): hidden channels of ``F`` and ``G``.
    * ``kernel_size`` (int ≥ 1, odd, default 3): odd kernel size of their convolutions.
    * ``init`` ('xavier' | 'default', default 'default'): ``'xavier'``: Xavier-uniform conv weights and zero
      biases; ``'default'``: PyTorch's.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.revnet import RevNetBlock
        >>> _ = torch.manual_seed(0)
        >>> block = RevNetBlock((4, 3, 3), hidden=8)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> y, logdet = block(x)
        >>> logdet.abs().max().item(), torch.allclose(block.inverse(y)[0], x, atol=1e-5)
        (0.0, True)
    """

    volume_preserving = True
    input_ranks = (1, 3)
    channel_multiple = 2
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [4, 8],
        "kernel_size": [3, 1],
        "init": ["default", "xavier"],
    }
    inversion_rule = revnet_rule  # memory-free backprop: each residual function runs once

    def __init__(
        self,
        event_shape: Shape,
        *,
        hidden: Positive = 64,
        kernel_size: KernelSize = 3,
        init: InitKind = "default",
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank("RevNetBlock", shape, self.input_ranks, "Give images as (C, H, W) or vectors as (D,).")
        if shape[0] % 2:
            kind = "channels" if len(shape) == 3 else "features"
            raise ShapeError(
                f"RevNetBlock splits the {kind} into two equal halves, so their number must be "
                f"even, but the input has shape {shape} ({shape[0]} {kind}). Put a subsample "
                f"(grn-subsample, squeeze) before it to get 4C channels, or use the 'revnet' "
                f"architecture, which does."
            )
        if init not in ("xavier", "default"):
            raise ConfigError(f"RevNetBlock: init must be 'xavier' or 'default', got {init!r}.")
        spec = context_spec("RevNetBlock", conditional, num_classes, context_features)
        super().__init__(shape)
        self.context_spec = spec
        self.hidden = int(hidden)
        self.kernel_size = int(kernel_size)
        self.init = init
        half = shape[0] // 2
        extra = context_width(spec)
        self.f = _residual_net(half, self.hidden, self.kernel_size, init, extra)
        self.g = _residual_net(half, self.hidden, self.kernel_size, init, extra)

    def as_image(self, x: Tensor) -> Tensor:
        """Vectors ``(B, D)`` as ``(B, D, 1, 1)``; images unchanged (the halves are channels)."""
        return x.reshape(x.shape[0], -1, 1, 1) if len(self.event_shape) == 1 else x

    def residual_f(self, a: Tensor, context: Tensor | None = None) -> Tensor:
        """``F(a)`` (``F(a, h)`` when conditional) on the image-shaped half ``a``."""
        return self.f(self._with_context(a, context))

    def residual_g(self, y1: Tensor, context: Tensor | None = None) -> Tensor:
        """``G(y1)`` (``G(y1, h)`` when conditional) on the image-shaped half ``y1``."""
        return self.g(self._with_context(y1, context))

    def _with_context(self, h: Tensor, context: Tensor | None) -> Tensor:
        if self.context_spec is None:
            return h
        return append_context(h, self.context_spec.features(context, h, "RevNetBlock"))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(a, b) ↦ (y1, y2) = (b + F(a), a + G(y1))``, log-det 0."""
        self.check_input(x)
        a, b = self.as_image(x).chunk(2, dim=1)
        y1 = b + self.residual_f(a, context)
        y2 = a + self.residual_g(y1, context)
        return torch.cat([y1, y2], dim=1).reshape(x.shape), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y1, y2) ↦ (a, b) = (y2 − G(y1), y1 − F(a))``, log-det 0."""
        self.check_input(y, "inverse")
        y1, y2 = self.as_image(y).chunk(2, dim=1)
        a = y2 - self.residual_g(y1, context)
        b = y1 - self.residual_f(a, context)
        return torch.cat([a, b], dim=1).reshape(y.shape), self.zero_logdet(y)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden={self.hidden}, kernel_size={self.kernel_size}, "
            f"init={self.init!r}"
        )


def _per_stage(name: str, value: int | Sequence[int], stages: int) -> tuple[int, ...]:
    """One value per stage: an int is repeated, a list must have one entry per stage."""
    if isinstance(value, int):
        return (value,) * stages
    values = tuple(int(v) for v in value)
    if len(values) != stages:
        raise ConfigError(
            f"RevNet: {name} has {len(values)} entries but widths defines {stages} stage(s); "
            f"give one entry per stage, or a single number for all of them."
        )
    return values


def _max_stages(h: int, w: int) -> int:
    """How many times ``h × w`` can be halved exactly."""
    n = 0
    while h % 2 ** (n + 1) == 0 and w % 2 ** (n + 1) == 0:
        n += 1
    return n


class RevNet(Architecture):
    """Generative Reversible Network: [pad] → (subsample → RevNet blocks) per stage → flatten.

    The architecture of Schirrmeister et al. 2018, "Training Generative Reversible Networks"
    (reference code, MNIST and CelebA models). Images ``(C, H, W)``; for every stage ``s``:

    1. ``grn-subsample``: ``(C, H, W) → (4C, H/2, W/2)`` by checkerboard phases (chunk-first,
       except at the first stage when ``chunk_first_at_first = false``);
    2. ``blocks_per_stage[s]`` additive ``revnet-block``s, ``y1 = b + F(a), y2 = a + G(y1)``, with
       ``widths[s]`` hidden channels and ``kernel_sizes[s]`` × ``kernel_sizes[s]`` kernels;

    then a flatten to ``(D,)`` with index ``c·h·w + i·w + j``. Every step is volume preserving,
    so ``log|det J| = 0`` and ``z = f(x)`` is both the encoder and, inverted, the decoder.
    ``pad_to > 0`` first zero-pads the image to ``pad_to × pad_to`` (centred; the inverse crops):
    the latent then has ``D = C·pad_to²`` entries, more than the data, and densities are over the
    embedded data (the border of real data is always 0). H and W after padding must be divisible
    by ``2^len(widths)``.

    Presets of the reference: MNIST ``pad_to = 32, widths = [25, 50, 100, 200], init = "xavier"``
    (1024-d latent, 2.11 M parameters); CelebA 3×64×64 ``chunk_first_at_first = false,
    widths = [25, 50, 100, 200, 400, 400], blocks_per_stage = [2, 2, 2, 2, 2, 1],
    kernel_sizes = [3, 3, 3, 3, 3, 1]`` (12288-d latent, 60.4 M parameters). The default, three
    stages of widths 16, 32, 64, fits 8×8 images (8 → 4 → 2 → 1).

    References:

    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.
    * Gomez, Ren, Urtasun & Grosse 2017, "The Reversible Residual Network: Backpropagation Without Storing
      Activations", NeurIPS 2017.

    Arguments:

    * ``event_shape`` (injected): the shape ``(C, H, W)`` of one image; flowkit sets it from the data.
    * ``widths`` (tuple[int ≥ 1, ...], default (16, 32, 64)): hidden channels of the blocks, one per stage;
      the number of stages is ``len(widths)``.
    * ``blocks_per_stage`` (int ≥ 1 | list[int ≥ 1], default 2): revnet blocks per stage, or one count for
      every stage.
    * ``kernel_sizes`` (int ≥ 1, odd | list[int ≥ 1, odd], default 3): odd kernel size of the blocks per
      stage, or one for every stage.
    * ``pad_to`` (int ≥ 0, default 0): zero-pad the image to ``pad_to × pad_to`` first; 0: no padding.
    * ``chunk_first_at_first`` (bool, default True): the first subsample splits the channels into halves
      first.
    * ``init`` ('xavier' | 'default', default 'default'): ``'xavier'``: Xavier-uniform conv weights and zero
      biases; ``'default'``: PyTorch's.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.revnet import RevNet
        >>> _ = torch.manual_seed(0)
        >>> flow = RevNet((1, 8, 8), widths=(4, 8), blocks_per_stage=1)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> z, logdet = flow(x)
        >>> z.shape, logdet.abs().max().item()
        (torch.Size([2, 64]), 0.0)
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        True
    """

    volume_preserving = True
    input_ranks = (3,)
    size_multiple = 4  # test_params draw up to two stages
    #: chosen with --transform revnet: pixels in [0, 1] without the logit, as the reference
    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {"data": {"preprocess": "none"}}
    test_params: ClassVar[dict[str, Any]] = {
        "widths": [[4], [4, 4]],
        "blocks_per_stage": [1, 2],
        "kernel_sizes": [3, 1],
        "pad_to": 0,
        "chunk_first_at_first": [True, False],
        "init": ["default", "xavier"],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        widths: tuple[Positive, ...] = (16, 32, 64),
        blocks_per_stage: Positive | list[Positive] = 2,
        kernel_sizes: KernelSize | list[KernelSize] = 3,
        pad_to: Annotated[int, Range(0, note="0: no padding")] = 0,
        chunk_first_at_first: bool = True,
        init: InitKind = "default",
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            "RevNet",
            shape,
            self.input_ranks,
            "The GRN architecture subsamples images; give them as (C, H, W).",
        )
        widths = tuple(int(w) for w in widths)
        if not widths:
            raise ConfigError("RevNet: widths must list at least one stage width, e.g. [16, 32].")
        blocks = _per_stage("blocks_per_stage", blocks_per_stage, len(widths))
        kernels = _per_stage("kernel_sizes", kernel_sizes, len(widths))
        context_spec("RevNet", conditional, num_classes, context_features)  # checks the choice
        context: dict[str, Any] = {
            "conditional": conditional,
            "num_classes": num_classes,
            "context_features": context_features,
        }

        steps: list[Transform] = []
        if pad_to and (shape[1], shape[2]) != (pad_to, pad_to):
            steps.append(ZeroPad(shape, size=pad_to))
        current = steps[-1].output_shape if steps else shape
        _check_divisible(shape, current, len(widths), pad_to)
        for stage, (width, count, kernel) in enumerate(zip(widths, blocks, kernels)):
            chunk = chunk_first_at_first if stage == 0 else True
            steps.append(GRNSubsample(current, chunk_first=chunk))
            current = steps[-1].output_shape
            steps.extend(
                RevNetBlock(current, hidden=width, kernel_size=kernel, init=init, **context)
                for _ in range(count)
            )
        steps.append(Flatten(current))
        super().__init__(shape, steps[-1].output_shape)
        self.flow = Sequential(steps)
        self.widths = widths
        self.pad_to = int(pad_to)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, widths={list(self.widths)}, pad_to={self.pad_to}"


def _check_divisible(shape: Shape, padded: Shape, stages: int, pad_to: int) -> None:
    """Raise :class:`ShapeError` unless ``stages`` subsamples fit the (padded) image exactly."""
    _, h, w = padded
    factor = 2**stages
    if h % factor == 0 and w % factor == 0:
        return
    size = f"{h}×{w}" + (f" after padding to pad_to={pad_to}" if pad_to else "")
    fits = _max_stages(h, w)
    side = factor * math.ceil(max(shape[1], shape[2]) / factor)
    raise ShapeError(
        f"RevNet with {stages} stage(s) (one per entry of widths) halves the image {stages} "
        f"time(s), so its height and width must be divisible by 2^{stages} = {factor}, but the "
        f"input {tuple(shape)} is {size}. Set pad_to = {side} (zero-pads to {side}×{side}), or "
        f"use at most {fits} stage(s) (fewer entries in widths)."
    )
