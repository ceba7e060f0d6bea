"""MADE's context weights merged into its masked layers: fewer tensors, same function, and state
dicts from before the merge (separate ``context_hidden``/``context_out`` layers) still load."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from flowkit.plugins.transforms.autoregressive import MAF
from flowkit.plugins.transforms.made import (
    MADE,
    MaskedLinear,
    hidden_degrees,
    hidden_mask,
    input_degrees,
    output_mask,
)


class _SeparateContextMADE(nn.Module):
    """The layout before the merge: masked layers on ``x`` alone, context through two plain
    bias-free layers (``V`` into the first hidden layer, ``U`` into the output)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_hidden: int,
        outputs: int,
        context: int,
        order: list[int] | None = None,
    ) -> None:
        super().__init__()
        degrees = input_degrees(dim, order)
        self.register_buffer("input_degrees", degrees)
        layers, previous = [], degrees
        for _ in range(num_hidden):
            low = 1 if previous is degrees else int(previous.min())
            current = hidden_degrees(dim, hidden, low)
            layers.append(MaskedLinear(hidden_mask(current, previous)))
            previous = current
        self.hidden_layers = nn.ModuleList(layers)
        self.out = MaskedLinear(output_mask(degrees, previous).repeat(outputs, 1))
        self.context_hidden = nn.Linear(context, hidden, bias=False)
        self.context_out = nn.Linear(context, self.out.out_features, bias=False)
        self.dim, self.outputs = dim, outputs

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = x
        for i, layer in enumerate(self.hidden_layers):
            h = layer(h) + (self.context_hidden(c) if i == 0 else 0)
            h = torch.relu(h)
        return (self.out(h) + self.context_out(c)).reshape(x.shape[0], self.outputs, self.dim)


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("num_hidden", [1, 2, 3])
def test_a_made_has_two_tensors_per_layer_with_or_without_context(num_hidden: int) -> None:
    plain = MADE(5, 16, num_hidden, num_outputs=2)
    conditional = MADE(5, 16, num_hidden, num_outputs=2, context_features=3)
    assert len(list(plain.parameters())) == len(list(conditional.parameters())) == 2 * (num_hidden + 1)
    assert conditional.hidden_layers[0].weight.shape == (16, 5 + 3)
    assert conditional.out.weight.shape == (2 * 5, 16 + 3)
    assert torch.all(conditional.hidden_layers[0].mask[:, 5:] == 1)
    assert torch.all(conditional.out.mask[:, 16:] == 1)


def test_the_context_columns_start_at_their_own_fan_in() -> None:
    torch.manual_seed(0)
    made = MADE(4, 256, 2, num_outputs=2, context_features=100, zero_init=False)
    first = made.hidden_layers[0].weight.detach()
    assert float(first[:, :4].abs().max()) > 0.4  # U(±1/√4): the x block as a 4-input layer
    assert float(first[:, 4:].abs().max()) <= 0.1  # U(±1/√100)
    assert float(made.hidden_layers[0].bias.detach().abs().max()) > 0.4
    out = made.out.weight.detach()
    assert float(out[:, 256:].abs().max()) <= 0.1 < float(out[:, 256:].abs().max()) * 1.2
    zero = MADE(4, 8, 2, num_outputs=2, context_features=3)
    assert torch.all(zero.out.weight == 0) and torch.all(zero.out.bias == 0)


def test_the_context_reaches_every_output_and_gets_gradients() -> None:
    made = MADE(4, 12, 2, num_outputs=2, context_features=3, zero_init=False).double()
    _randomise(made, 1)
    x, c = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    ctx_jac = jacobian(lambda v: made(x, v), c).abs().sum(dim=(0, 3, 4))  # (outputs, D)
    assert torch.all(ctx_jac > 0)
    made(x, c).sum().backward()
    for layer in (made.hidden_layers[0], made.out):
        grad = layer.weight.grad
        assert torch.all(grad[layer.mask == 0] == 0)
        assert torch.all(grad[:, -3:].abs().sum(0) > 0)


@pytest.mark.parametrize("num_hidden", [1, 2, 3])
def test_a_state_dict_from_before_the_merge_gives_the_same_outputs(num_hidden: int) -> None:
    old = _SeparateContextMADE(5, 12, num_hidden, 3, 4, order=[4, 3, 2, 1, 0]).double()
    _randomise(old, num_hidden)
    wrapped_old = nn.ModuleDict({"made": old})  # a nested prefix, as inside a flow
    new = nn.ModuleDict(
        {"made": MADE(5, 12, num_hidden, num_outputs=3, order=[4, 3, 2, 1, 0], context_features=4).double()}
    )
    state = wrapped_old.state_dict()
    result = new.load_state_dict(state)  # strict: no missing or unexpected keys
    assert not result.missing_keys and not result.unexpected_keys
    assert "made.context_hidden.weight" in state, "the caller's dict is left as it was"
    x, c = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    torch.testing.assert_close(new["made"](x, c), old(x, c), rtol=0, atol=1e-12)


def test_a_conditional_maf_saved_before_the_merge_maps_data_the_same_way() -> None:
    torch.manual_seed(0)
    flow = MAF((3,), num_layers=2, hidden=8, context_features=2).double()
    _randomise(flow, 7)
    state = flow.state_dict()
    old_state = dict(state)
    for key in [k for k in state if k.endswith("made.hidden_layers.0.weight")]:
        prefix = key.removesuffix("hidden_layers.0.weight")
        for layer, name in (("hidden_layers.0.", "context_hidden"), ("out.", "context_out")):
            weight, mask = state[prefix + layer + "weight"], state[prefix + layer + "mask"]
            old_state[prefix + layer + "weight"] = weight[:, :-2].clone()
            old_state[prefix + layer + "mask"] = mask[:, :-2].clone()
            old_state[prefix + name + ".weight"] = weight[:, -2:].clone()
    assert len(old_state) == len(state) + 2 * 2
    torch.manual_seed(1)
    fresh = MAF((3,), num_layers=2, hidden=8, context_features=2).double()
    fresh.load_state_dict(old_state)
    x, c = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    for got, want in zip(fresh(x, c), flow(x, c), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
