"""Conditioner networks for coupling layers (their context input: :mod:`flowkit.context`).

A coupling layer's conditioner computes the parameters of the elementwise map of the transformed
side from the conditioning side. It never needs to be inverted, so it can be any network (Dinh
et al. 2015, "NICE", §3.2; Dinh et al. 2017, "Real NVP", §3.3). The built-in networks
zero-initialise their last layer, so a fresh coupling layer is the identity (up to Glow's
constant scale). None uses batch normalisation: the output must depend on each example alone
for the coupling to be invertible example by example.

A coupling takes its conditioner by name — ``"mlp"`` (vectors), ``"conv"`` or its synonym
``"resnet"`` (Real NVP's residual network), ``"glow"`` (Glow's three convolutions), or any name
added with :func:`register_conditioner` — or, from Python, as a factory
``(in_channels, out_channels) -> nn.Module`` of the user's own (:class:`ConditionerFactory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Annotated, Any, Protocol, cast

import torch
from torch import Tensor, nn

from flowkit.errors import ConfigError, ShapeError
from flowkit.execution.onednn_conv import conv2d
from flowkit.execution.onednn_linear import linear
from flowkit.params import Range, checked


def channels_last(x: Tensor) -> Tensor:
    """``x`` with channels-last (NHWC) memory order if it is an image batch on the CPU.

    CPU convolutions (oneDNN) run several times faster on NHWC data than on NCHW, most of all
    with few input channels (a coupling network's input); their outputs stay NHWC, so only the
    network's input is converted (a small copy). The values are the same; other tensors, and
    tensors on other devices (where the best layout depends on the dtype and the library), are
    returned unchanged.
    """
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


#: A layer width or count of at least one.
Positive = Annotated[int, Range(1)]


#: What :meth:`MLP.narrow` / :meth:`ConvNet.narrow` kept: parameter name → (dimension, indices).
Narrowed = dict[str, tuple[int, list[int]]]


def _keep(module: nn.Module, name: str, dim: int, index: list[int]) -> None:
    """Replace the parameter ``module.<name>`` by its entries ``index`` along ``dim``."""
    old = getattr(module, name)
    where = torch.tensor(index, dtype=torch.long, device=old.device)
    setattr(
        module,
        name,
        nn.Parameter(old.detach().index_select(dim, where).clone(), requires_grad=old.requires_grad),
    )


def narrow_layers(
    first: nn.Module, last: nn.Module, inputs: list[int], outputs: list[int], first_name: str, last_name: str
) -> Narrowed:
    """Keep the ``inputs`` columns of ``first`` (dim 1) and the ``outputs`` rows of ``last``.

    Works for ``nn.Linear`` and ``nn.Conv2d`` (weights ``(out, in, …)``); the layers' size
    attributes are updated so their ``repr`` stays true. Returns what was kept, keyed by the
    parameters' names under the network, for loading checkpoints of the full-size network.
    """
    _keep(first, "weight", 1, inputs)
    _keep(last, "weight", 0, outputs)
    _keep(last, "bias", 0, outputs)
    for layer, attr, size in ((first, "in", len(inputs)), (last, "out", len(outputs))):
        for suffix in ("_features", "_channels"):
            if hasattr(layer, attr + suffix):
                setattr(layer, attr + suffix, size)
    return {
        f"{first_name}.weight": (1, inputs),
        f"{last_name}.weight": (0, outputs),
        f"{last_name}.bias": (0, outputs),
    }


@checked
class MLP(nn.Module):
    """Fully connected ReLU network ``in_features → hidden × num_hidden → out_features``.

    ``h_0 = x``, ``h_k = ReLU(W_k h_{k-1} + b_k)`` for ``k = 1..num_hidden``, output
    ``W_out h_{num_hidden} + b_out`` (the conditioner of Dinh et al. 2015, "NICE", §5.1, which used
    5 hidden layers of 1000 units). With ``zero_init`` the output layer starts at zero.

    The layers are ordinary ``nn.Linear`` modules (``body`` holds them with their ``nn.ReLU``),
    evaluated by :func:`flowkit.linear.linear`, which fuses each ReLU into its layer and runs
    float32 CPU batches on PyTorch's oneDNN kernels.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Positive,
        num_hidden: Positive,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_hidden):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_features)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_features)`` to ``(B, out_features)``."""
        h = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        # nn.Linear at even positions, then nn.ReLU (nn.Sequential types its items Module)
        for layer in cast("Iterator[nn.Linear]", islice(self.body, 0, None, 2)):
            h = linear(h, layer.weight, layer.bias, relu=True)
        out = linear(h, self.out.weight, self.out.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1]) if x.dim() != 2 else out

    def narrow(self, inputs: list[int], outputs: list[int]) -> Narrowed:
        """Keep only the input features ``inputs`` and the output units ``outputs``.

        The result computes exactly the kept outputs of the full network on inputs that are zero
        outside ``inputs``, with the same initial weights (a coupling layer drops the entries its
        mask zeroes; see :func:`narrow_layers`).
        """
        return narrow_layers(self.body[0], self.out, inputs, outputs, "body.0", "out")


class ResidualBlock(nn.Module):
    """Residual block ``h + conv(ReLU(conv(h)))`` with 'same' padding (He et al. 2016)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding="same")
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding="same")

    def forward(self, h: Tensor, relu: bool = False, overwrite_input: bool = False) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, C, H, W)`` (fused convolutions without autograd).

        ``relu`` applies a ReLU to the block's output (fused into the last convolution).
        ``overwrite_input`` lets the output reuse ``h``'s buffer when no gradient is needed: pass
        it only for an ``h`` the caller owns and does not read again.
        """
        r = conv2d(h, self.conv1, relu=True)
        return conv2d(r, self.conv2, residual=h, relu=relu, overwrite_residual=overwrite_input)


@checked
class ConvNet(nn.Module):
    """Small ResNet conditioner: conv in → ``num_blocks`` residual blocks → ReLU → conv out.

    ``h = conv_in(x)``; ``h ← h + conv(ReLU(conv(h)))`` ``num_blocks`` times; output
    ``conv_out(ReLU(h))``. Every convolution keeps the spatial size ('same' padding). This is the
    residual conditioner of Dinh et al. 2017, "Real NVP", §4.1 (which used 8 blocks and batch
    normalisation; normalisation is left out here so each example is processed independently).
    With ``zero_init`` the output convolution starts at zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: Positive,
        num_blocks: Annotated[int, Range(0)],
        kernel_size: Positive = 3,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden, kernel_size, padding="same")
        self.blocks = nn.Sequential(*(ResidualBlock(hidden, kernel_size) for _ in range(num_blocks)))
        self.conv_out = nn.Conv2d(hidden, out_channels, kernel_size, padding="same")
        if zero_init:
            nn.init.zeros_(self.conv_out.weight)
            assert self.conv_out.bias is not None  # built with a bias (Conv2d types it Tensor | None)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``."""
        h = conv2d(channels_last(x), self.conv_in, relu=not self.blocks)
        for k, block in enumerate(self.blocks):
            # h is this network's own (conv_in's output onwards), read for the last time here;
            # the ReLU before conv_out is fused into the last block
            h = block(h, relu=k == len(self.blocks) - 1, overwrite_input=True)
        return conv2d(h, self.conv_out)

    def narrow(self, inputs: list[int], outputs: list[int]) -> Narrowed:
        """Keep only the input channels ``inputs`` and the output channels ``outputs``.

        Same contract as :meth:`MLP.narrow`, for ``conv_in`` and ``conv_out``.
        """
        return narrow_layers(self.conv_in, self.conv_out, inputs, outputs, "conv_in", "conv_out")


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
        assert self.conv.bias is not None  # built with a bias (Conv2d types it Tensor | None)
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
        first, middle = cast(nn.Conv2d, self.body[0]), cast(nn.Conv2d, self.body[2])  # nn.Sequential items
        h = conv2d(channels_last(x), first, relu=True)
        return self.out(conv2d(h, middle, relu=True))


# -- choosing a conditioner ---------------------------------------------------------------------
class ConditionerFactory(Protocol):
    """A user's own conditioner: ``factory(in_channels, out_channels)`` returns the network.

    The network maps ``(B, in_channels)`` (vectors) or ``(B, in_channels, H, W)`` (images) to
    ``out_channels`` features or channels of the same size. ``in_channels`` counts the
    conditioning side and the context's features; ``out_channels`` is the map's number of
    parameters times the number of transformed features (channels). It should process examples
    independently (no batch normalisation); zero-initialising its last layer starts the coupling
    as the identity.
    """

    def __call__(self, in_channels: int, out_channels: int, /) -> nn.Module: ...


@dataclass(frozen=True)
class ConditionerKind:
    """A named conditioner: ``build(in, out, hidden=, num_hidden=, num_blocks=)``, the input
    ranks it takes (1: vectors, 3: images), and whether its networks have ``narrow(inputs,
    outputs)`` (:meth:`MLP.narrow`)."""

    build: Callable[..., nn.Module]
    ranks: tuple[int, ...]
    narrowable: bool = False


def _mlp(n_in: int, n_out: int, *, hidden: int, num_hidden: int, num_blocks: int) -> nn.Module:
    return MLP(n_in, n_out, hidden, num_hidden)


def _resnet(n_in: int, n_out: int, *, hidden: int, num_hidden: int, num_blocks: int) -> nn.Module:
    return ConvNet(n_in, n_out, hidden, num_blocks)


def _glow(n_in: int, n_out: int, *, hidden: int, num_hidden: int, num_blocks: int) -> nn.Module:
    return GlowConvNet(n_in, n_out, hidden)


CONDITIONERS: dict[str, ConditionerKind] = {
    "mlp": ConditionerKind(_mlp, (1,), narrowable=True),
    "conv": ConditionerKind(_resnet, (3,), narrowable=True),
    "resnet": ConditionerKind(_resnet, (3,), narrowable=True),
    "glow": ConditionerKind(_glow, (3,)),
}


def register_conditioner(name: str, build: Callable[..., nn.Module], ranks: tuple[int, ...] = (1, 3)) -> None:
    """Make ``build(in, out, *, hidden, num_hidden, num_blocks)`` a conditioner named ``name``.

    Every coupling then accepts ``conditioner=name`` (this process only; register it where your
    package is imported). ``ranks`` are the input ranks it takes.
    """
    CONDITIONERS[name] = ConditionerKind(build, tuple(ranks))


def conditioner_factory(
    kind: str | ConditionerFactory,
    rank: int,
    owner: str,
    *,
    hidden: int,
    num_hidden: int,
    num_blocks: int,
) -> ConditionerFactory:
    """``(in_channels, out_channels) -> nn.Module`` for a conditioner name or a user's factory.

    Raises :class:`ConfigError` for an unknown name, :class:`ShapeError` when the named network
    does not take inputs of this rank.
    """
    if not isinstance(kind, str):
        if not callable(kind):
            raise ConfigError(
                f"{owner}: conditioner must be a name ({', '.join(CONDITIONERS)}) "
                f"or a factory (in_channels, out_channels) -> nn.Module, got "
                f"{kind!r}."
            )
        return kind
    if kind not in CONDITIONERS:
        raise ConfigError(
            f"{owner}: unknown conditioner {kind!r}; choose one of "
            f"{', '.join(map(repr, CONDITIONERS))}, or pass a factory from Python."
        )
    spec = CONDITIONERS[kind]
    if rank not in spec.ranks:
        takes = "vectors (D,)" if spec.ranks == (1,) else "images (C, H, W)"
        raise ShapeError(
            f"{owner}: conditioner={kind!r} takes {takes}; choose another "
            f"conditioner for inputs of rank {rank}."
        )
    return _Named(spec, hidden, num_hidden, num_blocks)


def layer_args(
    hidden: int,
    num_hidden: int,
    conditional: bool | None,
    num_classes: int | None,
    context_features: int | None,
) -> dict[str, Any]:
    """The keyword arguments a stack passes alike to each of its conditioned layers: the size of
    the layer's network (``hidden`` units, ``num_hidden`` layers) and its context arguments."""
    return {
        "hidden": hidden,
        "num_hidden": num_hidden,
        "conditional": conditional,
        "num_classes": num_classes,
        "context_features": context_features,
    }


@dataclass(frozen=True)
class _Named:
    """A named conditioner with its sizes filled in (a picklable factory)."""

    kind: ConditionerKind
    hidden: int
    num_hidden: int
    num_blocks: int

    @property
    def narrowable(self) -> bool:
        """Whether the networks it builds can be narrowed to a split (``narrow``)."""
        return self.kind.narrowable

    def __call__(self, in_channels: int, out_channels: int) -> nn.Module:
        return self.kind.build(
            in_channels,
            out_channels,
            hidden=self.hidden,
            num_hidden=self.num_hidden,
            num_blocks=self.num_blocks,
        )
