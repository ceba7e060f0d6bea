"""MADE: a fully connected network made autoregressive by masking its weights.

Every input ``x_d`` gets a degree ``m(d) ∈ {1..D}`` (its position in the autoregressive order),
every hidden unit ``k`` a degree ``m(k) ∈ {1..D−1}``. A hidden unit may see an input, or a unit of
the layer below, of degree at most its own, and an output of degree ``m(d)`` only hidden units of
strictly smaller degree (Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for
Distribution Estimation", §4, eq. (12)-(13))::

    M_hidden[k, j] = 1[m_l(k) ≥ m_{l−1}(j)]        M_out[d, k] = 1[m(d) > m_L(k)]

so output ``d`` depends on ``x_j`` only if ``m(j) < m(d)``: the Jacobian ``∂out/∂x`` is strictly
lower-triangular in the autoregressive order, and one pass gives every conditional's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from flowkit.errors import ConfigError, ShapeError
from flowkit.linear import linear
from flowkit.params import Range, checked


def input_degrees(num_inputs: int, order: Sequence[int] | None = None) -> Tensor:
    """Degrees ``1..D`` of the inputs: ``m(order[i]) = i + 1`` (identity order by default).

    ``order[i]`` is the index of the ``i``-th variable in the autoregressive order, so
    ``order = [D−1, …, 0]`` reverses it (Germain et al. 2015, "MADE", §4.2 order-agnostic
    training; Papamakarios et al. 2017, "MAF", §3.1 reverse the order between layers).
    """
    if order is None:
        return torch.arange(1, num_inputs + 1)
    perm = [int(i) for i in order]
    if sorted(perm) != list(range(num_inputs)):
        raise ConfigError(
            f"MADE: order must be a permutation of 0..{num_inputs - 1} (one entry per input), "
            f"got {perm}."
        )
    degrees = torch.empty(num_inputs, dtype=torch.long)
    degrees[torch.tensor(perm, dtype=torch.long)] = torch.arange(1, num_inputs + 1)
    return degrees


def hidden_degrees(
    num_inputs: int, width: int, low: int = 1, generator: torch.Generator | None = None,
) -> Tensor:
    """Degrees of ``width`` hidden units in ``[low, D−1]``: cycling, or random with ``generator``.

    Without a generator the degrees cycle ``low, low+1, …, D−1, low, …`` so every degree is used
    as evenly as possible (deterministic, the same on every build); with one they are drawn
    uniformly, as in Germain et al. 2015, "MADE", §4 ("m^l(k) sampled uniformly from
    [min_{k'} m^{l−1}(k'), D−1]"). With ``D = 1`` every unit gets degree 1 (and no output sees it).
    """
    high = max(num_inputs - 1, 1)
    low = min(max(int(low), 1), high)
    if generator is None:
        return torch.arange(width) % (high - low + 1) + low
    return torch.randint(low, high + 1, (width,), generator=generator)


def hidden_mask(out_degrees: Tensor, in_degrees: Tensor) -> Tensor:
    """``M[k, j] = 1[m_out(k) ≥ m_in(j)]``: the input/hidden-to-hidden mask (MADE eq. (12))."""
    return (out_degrees[:, None] >= in_degrees[None, :]).to(torch.get_default_dtype())


def output_mask(out_degrees: Tensor, in_degrees: Tensor) -> Tensor:
    """``M[d, k] = 1[m(d) > m_h(k)]``: the hidden-to-output mask (MADE eq. (13))."""
    return (out_degrees[:, None] > in_degrees[None, :]).to(torch.get_default_dtype())


class MaskedLinear(nn.Linear):
    """Linear layer with a fixed binary connectivity mask: ``y = (W ⊙ M) x + b``.

    ``M`` has the weight's shape ``(out_features, in_features)`` and is a registered buffer, so it
    follows ``.to(dtype/device)`` and is saved in the ``state_dict`` (Germain et al. 2015, "MADE",
    §4, eq. (10)-(11)). Masked weights get zero gradient.
    """

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        if mask.dim() != 2:
            raise ShapeError(f"MaskedLinear needs a 2-d mask (out_features, in_features), got "
                             f"shape {tuple(mask.shape)}.")
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype).clone())

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_features)`` to ``(B, out_features)`` with the masked weight."""
        return linear(x, self.weight * self.mask, self.bias)


@checked
class MADE(nn.Module):
    """Masked autoencoder: D inputs → num_outputs autoregressive outputs per input (Germain 2015).

    ``h_1 = ReLU((W_1 ⊙ M_1) x + V c + b_1)``, ``h_l = ReLU((W_l ⊙ M_l) h_{l−1} + b_l)`` for
    ``l = 2..num_hidden``, ``out = (W_o ⊙ M_o) h_L + U c + b_o`` with the masks of
    :func:`hidden_mask`/:func:`output_mask` (the output mask repeated for each of the
    ``num_outputs`` blocks). Output ``(B, num_outputs, D)``: entry ``[:, o, d]`` depends on
    ``x_j`` only for ``m(j) < m(d)`` (Germain, Gregor, Murray & Larochelle 2015, "MADE", §4).

    ``c`` is an optional context vector of ``context_features`` entries (e.g. one-hot labels),
    connected without masks to every first-layer hidden unit (``V``) and to every output
    (``U``): conditioning on it keeps the autoregressive property in ``x`` (Germain et al. 2015,
    §4.3; Papamakarios et al. 2017, "MAF", §3.4). The direct ``U`` term lets the first variable
    in the order, which sees no hidden unit, depend on the context too. With ``zero_init`` the
    output layer and ``U`` start at zero, so every output starts at zero.
    """

    def __init__(
        self,
        num_inputs: Annotated[int, Range(1)],
        hidden: Annotated[int, Range(1)],
        num_hidden: Annotated[int, Range(1)],
        num_outputs: Annotated[int, Range(1)] = 1,
        *,
        order: Sequence[int] | None = None,
        context_features: Annotated[int, Range(0)] = 0,
        degree_seed: int | None = None,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.num_inputs = int(num_inputs)
        self.num_outputs = int(num_outputs)
        self.context_features = int(context_features)
        generator = None if degree_seed is None else torch.Generator().manual_seed(degree_seed)
        degrees_in = input_degrees(self.num_inputs, order)
        self.register_buffer("input_degrees", degrees_in)
        layers: list[nn.Module] = []
        previous = degrees_in
        for _ in range(num_hidden):
            low = 1 if previous is degrees_in else int(previous.min())
            current = hidden_degrees(self.num_inputs, hidden, low, generator)
            layers.append(MaskedLinear(hidden_mask(current, previous)))
            previous = current
        self.hidden_layers = nn.ModuleList(layers)
        self.activation = nn.ReLU()
        self.out = MaskedLinear(output_mask(degrees_in, previous).repeat(self.num_outputs, 1))
        self.context_hidden: nn.Linear | None = None
        self.context_out: nn.Linear | None = None
        if self.context_features:
            self.context_hidden = nn.Linear(self.context_features, hidden, bias=False)
            self.context_out = nn.Linear(self.context_features, self.out.out_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            if self.context_out is not None:
                nn.init.zeros_(self.context_out.weight)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Map ``(B, D)`` (and a ``(B, context_features)`` context) to ``(B, num_outputs, D)``."""
        if x.dim() != 2 or x.shape[1] != self.num_inputs:
            raise ShapeError(f"MADE expects inputs of shape (batch, {self.num_inputs}), got "
                             f"{tuple(x.shape)}.")
        if self.context_features and (
            context is None or tuple(context.shape) != (x.shape[0], self.context_features)
        ):
            got = None if context is None else tuple(context.shape)
            raise ShapeError(f"MADE was built with context_features={self.context_features} and "
                             f"needs a context of shape ({x.shape[0]}, {self.context_features}), "
                             f"got {got}.")
        h = x
        for i, layer in enumerate(self.hidden_layers):
            h = layer(h)
            if i == 0 and self.context_hidden is not None:
                h = h + self.context_hidden(context)
            h = self.activation(h)
        out = self.out(h)
        if self.context_out is not None:
            out = out + self.context_out(context)
        return out.reshape(x.shape[0], self.num_outputs, self.num_inputs)

    def extra_repr(self) -> str:
        return (f"num_inputs={self.num_inputs}, num_outputs={self.num_outputs}, "
                f"context_features={self.context_features}")
