"""MADE masks, and the MAF / IAF autoregressive flows: exactness, cost asymmetry, training."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

import flowkit
from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.elementwise import soft_clamp
from flowkit.plugins.transforms.autoregressive import IAF, MAF, MAF_MAP, AutoregressiveLayer
from flowkit.plugins.transforms.made import (
    MADE,
    MaskedLinear,
    hidden_degrees,
    hidden_mask,
    input_degrees,
    output_mask,
)
from flowkit.registry import transforms
from flowkit.testing import check_transform

SMALL: dict[str, Any] = {"num_layers": 3, "hidden": 8, "num_hidden": 2}


def _randomise(module: nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    """Overwrite every parameter with Gaussian noise (no zero-initialised layer stays zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _made_jacobian(made: MADE, x: Tensor, context: Tensor | None = None) -> Tensor:
    """``|∂out[o, d] / ∂x_j|`` summed over a batch: shape ``(num_outputs, D, D)``."""
    total = torch.zeros(made.num_outputs, made.num_inputs, made.num_inputs, dtype=x.dtype)
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def single(v: Tensor, ctx: Tensor | None = ctx) -> Tensor:
            return made(v.unsqueeze(0), ctx)[0]

        total += jacobian(single, x[i]).abs()
    return total


# -- MADE ------------------------------------------------------------------------------------------
def test_degrees_and_masks_follow_the_made_rules() -> None:
    assert input_degrees(4).tolist() == [1, 2, 3, 4]
    assert input_degrees(4, [3, 2, 1, 0]).tolist() == [4, 3, 2, 1]
    assert input_degrees(3, [1, 2, 0]).tolist() == [3, 1, 2]
    assert hidden_degrees(4, 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    drawn = hidden_degrees(5, 50, low=2, generator=torch.Generator().manual_seed(0))
    assert int(drawn.min()) >= 2 and int(drawn.max()) <= 4
    deg_in, deg_h = torch.tensor([1, 2, 3]), torch.tensor([1, 2])
    assert hidden_mask(deg_h, deg_in).tolist() == [[1, 0, 0], [1, 1, 0]]
    assert output_mask(deg_in, deg_h).tolist() == [[0, 0], [1, 0], [1, 1]]
    with pytest.raises(ConfigError, match="permutation"):
        input_degrees(3, [0, 0, 1])


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("order", ["identity", "reversed", "shuffled"])
@pytest.mark.parametrize(("num_hidden", "degree_seed"), [(1, None), (2, None), (3, 7)])
def test_made_jacobian_is_strictly_triangular_in_the_order(
    dim: int,
    order: str,
    num_hidden: int,
    degree_seed: int | None,
) -> None:
    perm = {
        "identity": list(range(dim)),
        "reversed": list(range(dim))[::-1],
        "shuffled": torch.randperm(dim, generator=torch.Generator().manual_seed(dim)).tolist(),
    }
    made = MADE(
        dim, 4 * dim, num_hidden, num_outputs=2, order=perm[order], degree_seed=degree_seed, zero_init=False
    ).double()
    _randomise(made)
    x = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = _made_jacobian(made, x)
    deg = made.input_degrees
    allowed = deg[None, :] < deg[:, None]  # [d, j]: output d may depend on x_j
    assert torch.all(jac[:, ~allowed] == 0), "an output depends on a later or equal input"
    if degree_seed is None:  # cycling degrees with ≥ D−1 units leave every allowed edge open
        assert torch.all(jac[:, allowed] > 0), "an allowed dependency is masked out"


def test_made_context_reaches_every_output_without_breaking_the_masks() -> None:
    made = MADE(4, 8, 2, num_outputs=2, context_features=3, zero_init=False).double()
    _randomise(made, seed=3)
    x = torch.randn(5, 4, dtype=torch.float64)
    ctx = torch.randn(5, 3, dtype=torch.float64)
    jac = _made_jacobian(made, x, ctx)
    deg = made.input_degrees
    assert torch.all(jac[:, ~(deg[None, :] < deg[:, None])] == 0)
    ctx_jac = jacobian(lambda c: made(x, c), ctx).abs().sum(dim=(0, 3, 4))  # (outputs, D)
    assert torch.all(ctx_jac > 0), "the first variable in the order must see the context too"
    with pytest.raises(ShapeError, match="context"):
        made(x)


def test_masked_linear_keeps_the_mask_as_a_buffer() -> None:
    layer = MaskedLinear(hidden_mask(torch.tensor([1, 2]), torch.tensor([1, 2, 3])))
    assert "mask" in dict(layer.named_buffers()) and "mask" in layer.state_dict()
    assert layer.double().mask.dtype == torch.float64
    layer(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    assert torch.all(layer.weight.grad[layer.mask == 0] == 0)
    with pytest.raises(ShapeError):
        MaskedLinear(torch.ones(3))


# -- conformance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MAF, IAF])
@pytest.mark.parametrize("dim", [2, 3, 4, 5, 6])
def test_conformance_on_vectors(cls: type, dim: int) -> None:
    check_transform(cls, (dim,), SMALL)


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_conformance_on_images_and_conditional(cls: type) -> None:
    check_transform(cls, (1, 2, 3), SMALL)
    check_transform(cls, (4,), {**SMALL, "conditional": True}, num_classes=3)
    check_transform(cls, (2, 2, 2), {**SMALL, "num_layers": 2, "conditional": True}, num_classes=3)


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_single_layer_conforms(direction: str) -> None:
    check_transform(
        AutoregressiveLayer,
        (5,),
        {"map": MAF_MAP, "direction": direction, "reverse_order": True, "hidden": 8},
    )


def test_image_input_is_flattened_and_fresh_flow_is_identity() -> None:
    flow = MAF((1, 2, 3), **SMALL)
    assert flow.output_shape == (6,)
    x = torch.randn(4, 1, 2, 3)
    y, logdet = flow(x)
    torch.testing.assert_close(y, x.reshape(4, 6))
    torch.testing.assert_close(logdet, torch.zeros(4))
    assert pickle.loads(pickle.dumps(flow)).output_shape == (6,)


# -- cost asymmetry and the MAF ↔ IAF duality -----------------------------------------------------
class _Spy:
    """Counts MADE forward passes through forward hooks (registered only in this test)."""

    def __init__(self, flow: nn.Module) -> None:
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in flow.modules() if isinstance(m, MADE)]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.calls += 1

    def count(self, fn: Any, *args: Any) -> int:
        self.calls = 0
        with torch.no_grad():
            fn(*args)
        return self.calls


@pytest.mark.parametrize(("cls", "parallel"), [(MAF, "forward"), (IAF, "inverse")])
@pytest.mark.parametrize("dim", [2, 5])
def test_parallel_direction_is_one_pass_and_the_other_is_d_passes(
    cls: type,
    parallel: str,
    dim: int,
) -> None:
    layers = 3
    flow = cls((dim,), num_layers=layers, hidden=8, num_hidden=1)
    spy = _Spy(flow)
    x = torch.randn(7, dim)
    passes = {"forward": spy.count(flow, x), "inverse": spy.count(flow.inverse, x)}
    sequential = "inverse" if parallel == "forward" else "forward"
    assert passes[parallel] == layers
    assert passes[sequential] == layers * dim


def test_iaf_with_maf_weights_swaps_forward_and_inverse() -> None:
    layers = 3  # odd: reversing the stack keeps every layer's order flag (k and K−1−k alike)
    maf = MAF((4,), num_layers=layers, hidden=8, conditional=True, num_classes=2).double()
    _randomise(maf, scale=0.3)
    same = IAF((4,), num_layers=layers, hidden=8, conditional=True, num_classes=2).double()
    same.load_state_dict(maf.state_dict())
    x = torch.randn(5, 4, dtype=torch.float64)
    c = torch.tensor([0, 1, 1, 0, 1])

    def assert_same(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> None:
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])

    for maf_layer, iaf_layer in zip(maf.flow.steps, same.flow.steps):  # layer by layer
        assert_same(maf_layer(x, c), iaf_layer.inverse(x, c))
        assert_same(maf_layer.inverse(x, c), iaf_layer(x, c))
    # whole flows: (f_K ∘ … ∘ f_1)⁻¹ = f_1⁻¹ ∘ … ∘ f_K⁻¹, so the IAF takes the layers reversed
    reversed_state = {}
    for key, value in maf.state_dict().items():
        _, _, k, rest = key.split(".", 3)  # flow.steps.<k>.<rest>
        reversed_state[f"flow.steps.{layers - 1 - int(k)}.{rest}"] = value
    iaf = IAF((4,), num_layers=layers, hidden=8, conditional=True, num_classes=2).double()
    iaf.load_state_dict(reversed_state)
    assert_same(maf(x, c), iaf.inverse(x, c))
    assert_same(maf.inverse(x, c), iaf(x, c))


def test_sequential_pass_matches_a_coordinate_by_coordinate_reference() -> None:
    layer = AutoregressiveLayer((4,), map=MAF_MAP, reverse_order=True, hidden=8).double()
    _randomise(layer, scale=0.3)
    u = torch.randn(3, 4, dtype=torch.float64)
    x, logdet = layer.inverse(u)
    ref = torch.zeros_like(u)

    def shift_log_scale(z: Tensor) -> tuple[Tensor, Tensor]:  # (μ, α), α = 5 tanh(α_raw / 5)
        mu, raw = layer.conditioner_params(z, None)
        return mu, soft_clamp(raw)

    for d in reversed(range(4)):  # reversed order: coordinate 3 first
        mu, alpha = shift_log_scale(ref)
        ref = ref.clone()
        ref[:, d] = u[:, d] * torch.exp(alpha[:, d]) + mu[:, d]
    torch.testing.assert_close(x, ref)
    torch.testing.assert_close(logdet, shift_log_scale(ref)[1].sum(dim=1))


# -- user errors ----------------------------------------------------------------------------------
def test_user_mistakes_raise_flowkit_errors() -> None:
    with pytest.raises(ShapeError, match="at least 2 scalars"):
        MAF((1,))
    with pytest.raises(ShapeError, match="vectors"):
        AutoregressiveLayer((1, 2, 2))
    with pytest.raises(ConfigError, match="num_layers"):
        IAF((3,), num_layers=0)
    with pytest.raises(ConfigError, match="num_classes"):
        MAF((3,), conditional=True)
    with pytest.raises(ConfigError, match="hidden"):
        MAF((3,), hidden=0)
    flow = MAF((3,), num_layers=1, hidden=4, conditional=True, num_classes=2)
    with pytest.raises(ShapeError, match="class labels"):
        flow(torch.randn(2, 3))
    with pytest.raises(ShapeError, match="expects inputs of shape"):
        flow(torch.randn(2, 4), torch.tensor([0, 1]))


# -- end-to-end training ------------------------------------------------------------------------
@pytest.fixture
def registered() -> Iterator[None]:
    """Register maf/iaf at runtime (the editable install may predate their entry points)."""
    transforms.register("maf", MAF)
    transforms.register("iaf", IAF)
    try:
        yield
    finally:
        transforms.unregister("maf")
        transforms.unregister("iaf")


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_trains_end_to_end(name: str, tmp_path: Path) -> None:
    cfg = flowkit.load_config(
        None,
        ["transform.hidden=16", "train.steps=5", "data.n_train=256", "data.n_test=128"],
        transform=name,
        data="moons",
    )
    summary = flowkit.train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["status"] == "completed" and summary["steps"] == 5
    assert summary["transform"] == name
    assert torch.isfinite(torch.tensor(summary["test_nll"]))
    run = flowkit.load_run(tmp_path / "run")
    assert run.model.sample(8).shape == (8, 2)
