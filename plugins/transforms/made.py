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
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from flowkit.errors import ConfigError, ShapeError
from flowkit.execution.onednn_linear import linear
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
            f"MADE: order must be a permutation of 0..{num_inputs - 1} (one entry per input), got {perm}."
        )
    degrees = torch.empty(num_inputs, dtype=torch.long)
    degrees[torch.tensor(perm, dtype=torch.long)] = torch.arange(1, num_inputs + 1)
    return degrees


def hidden_degrees(
    num_inputs: int,
    width: int,
    low: int = 1,
    generator: torch.Generator | None = None,
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

    mask: Tensor  # a buffer (declared for type checkers: nn.Module types it Tensor | Module)

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        if mask.dim() != 2:
            raise ShapeError(
                f"MaskedLinear needs a 2-d mask (out_features, in_features), got shape {tuple(mask.shape)}."
            )
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype).clone())

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """Map ``(B, in_features)`` to ``(B, out_features)`` with the masked weight.

        ``relu=True`` returns ``ReLU((W ⊙ M) x + b)``, fused into the GEMM where
        :func:`flowkit.linear.linear` can.
        """
        return linear(x, self.weight * self.mask, self.bias, relu=relu)


def _init_columns(layer: nn.Linear, start: int, stop: int) -> None:
    """Re-draw ``weight[:, start:stop]`` as a fresh ``nn.Linear`` of that fan-in would draw it.

    ``U(−1/√fan_in, 1/√fan_in)`` with ``fan_in = stop − start`` (PyTorch's default
    ``kaiming_uniform_(a=√5)``), so a block of inputs merged into a wider layer keeps the scale it
    had as a layer of its own.
    """
    bound = 1.0 / max(stop - start, 1) ** 0.5
    with torch.no_grad():
        layer.weight[:, start:stop].uniform_(-bound, bound)


def _with_context_columns(mask: Tensor, context_features: int) -> Tensor:
    """``[M, 1]``: the mask with ``context_features`` unmasked columns appended."""
    if not context_features:
        return mask
    return torch.cat([mask, mask.new_ones(mask.shape[0], context_features)], dim=1)


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
    in the order, which sees no hidden unit, depend on the context too. ``V`` and ``U`` are
    stored as extra, always-open mask columns of the first and the output layer, which then read
    ``[x, c]`` and ``[h_L, c]``: ``[W_1 V] ⊙ [M_1 1]`` is one weight tensor, one GEMM, where
    separate context layers would be two more parameter tensors (for the optimiser and gradient
    clipping) and two more GEMMs and additions per pass. A MADE therefore has
    ``2 · (num_hidden + 1)`` parameter tensors with or without a context. Their initial values
    are drawn block by block as separate layers would be (``U(±1/√fan_in)`` of the ``x`` and of
    the ``c`` columns); with ``zero_init`` the output layer, ``U`` included, starts at zero, so
    every output starts at zero. State dicts written before the merge (with
    ``context_hidden.weight`` and ``context_out.weight``) load into the merged layout and give
    the same outputs.
    """

    input_degrees: Tensor  # a buffer (declared for type checkers: nn.Module types it Tensor | Module)

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
        extra = self.context_features
        layers: list[MaskedLinear] = []
        previous = degrees_in
        for _ in range(num_hidden):
            first = previous is degrees_in
            low = 1 if first else int(previous.min())
            current = hidden_degrees(self.num_inputs, hidden, low, generator)
            mask = hidden_mask(current, previous)
            layers.append(MaskedLinear(_with_context_columns(mask, extra) if first else mask))
            previous = current
        self.hidden_layers = nn.ModuleList(layers)
        self.activation = nn.ReLU()
        out_mask = output_mask(degrees_in, previous).repeat(self.num_outputs, 1)
        self.out = MaskedLinear(_with_context_columns(out_mask, extra))
        if extra:  # the x (or h) block and the context block at their own fan-ins
            first_layer = layers[0]  # typed MaskedLinear (self.hidden_layers[0] is the same module)
            _init_columns(first_layer, 0, self.num_inputs)
            _init_columns(first_layer, self.num_inputs, self.num_inputs + extra)
            _init_columns(self.out, 0, hidden)
            _init_columns(self.out, hidden, hidden + extra)
            with torch.no_grad():  # the biases at the x (h) block's fan-in, as before the merge
                first_layer.bias.uniform_(-(self.num_inputs**-0.5), self.num_inputs**-0.5)
                self.out.bias.uniform_(-(hidden**-0.5), hidden**-0.5)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Map ``(B, D)`` (and a ``(B, context_features)`` context) to ``(B, num_outputs, D)``."""
        if x.dim() != 2 or x.shape[1] != self.num_inputs:
            raise ShapeError(
                f"MADE expects inputs of shape (batch, {self.num_inputs}), got {tuple(x.shape)}."
            )
        if not self.context_features:
            h = x
            for layer in self.hidden_layers:
                h = layer(h, relu=True)
            out = self.out(h)
        else:
            if context is None or tuple(context.shape) != (x.shape[0], self.context_features):
                got = None if context is None else tuple(context.shape)
                raise ShapeError(
                    f"MADE was built with context_features={self.context_features} "
                    f"and needs a context of shape ({x.shape[0]}, "
                    f"{self.context_features}), got {got}."
                )
            context = context.to(x.dtype)
            h = torch.cat([x, context], dim=1)
            for layer in self.hidden_layers:
                h = layer(h, relu=True)
            out = self.out(torch.cat([h, context], dim=1))
        return out.reshape(x.shape[0], self.num_outputs, self.num_inputs)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load a state dict, merging the separate context weights of flowkit ≤ 0.1 first.

        Before the merge a conditional MADE kept ``V`` in ``context_hidden.weight``
        ``(hidden, c)`` and ``U`` in ``context_out.weight`` ``(outputs, c)``; they become the
        context columns of ``hidden_layers.0`` and ``out`` (weight, and mask columns of ones), so
        the loaded MADE computes exactly the function the old one did.
        """
        for old, layer in (("context_hidden.weight", "hidden_layers.0."), ("context_out.weight", "out.")):
            block = state_dict.pop(prefix + old, None)
            if block is None:
                continue
            weight_key, mask_key = prefix + layer + "weight", prefix + layer + "mask"
            weight = state_dict.get(weight_key)
            if weight is None:  # leave the missing key for load_state_dict to report
                continue
            state_dict[weight_key] = torch.cat([weight, block.to(weight.dtype)], dim=1)
            mask = state_dict.get(mask_key)
            if mask is not None and mask.shape[1] == weight.shape[1]:
                state_dict[mask_key] = _with_context_columns(mask, block.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"num_inputs={self.num_inputs}, num_outputs={self.num_outputs}, "
            f"context_features={self.context_features}"
        )
