"""Native rational-quadratic splines: the kernel's numerics and the spline flows built on it."""

from __future__ import annotations

import pytest
import torch

from flowkit import flows
from flowkit.errors import ConfigError
from flowkit.plugins.transforms.spline_flows import RQAutoregressive, RQCoupling
from flowkit.plugins.transforms.splines import (
    _knots,
    rational_quadratic_spline,
    spline_param_count,
)

K = 8


def draw(n: int, scale: float, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs from 4·N(0, 1) (about a fifth beyond ±5, in the tails) and spline parameters."""
    gen = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(n, generator=gen, dtype=dtype)
    params = scale * torch.randn(n, spline_param_count(K), generator=gen, dtype=dtype)
    return x, params


def round_trip(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y, log_det = rational_quadratic_spline(x, params)
    x_again, log_det_inv = rational_quadratic_spline(y, params, inverse=True)
    return (x_again - x).abs().max(), (log_det + log_det_inv).abs().max()


def test_zero_parameters_are_the_identity() -> None:
    x, params = draw(1000, 0.0, torch.float64)
    y, log_det = rational_quadratic_spline(x, params)
    torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
    assert log_det.abs().max() < 1e-14


@pytest.mark.parametrize(
    "scale, dtype, tolerance",
    [
        (0.3, torch.float32, 1e-5),  # trained-like perturbations of the identity
        (1.0, torch.float64, 1e-10),
        (3.0, torch.float64, 1e-8),  # extreme bins: slopes down to ~1e-6
    ],
)
def test_round_trip_over_the_spline_and_its_tails(scale, dtype, tolerance) -> None:
    x, params = draw(100_000, scale, dtype)
    err, log_det_err = round_trip(x, params)
    assert err <= tolerance, float(err)
    assert log_det_err <= 10 * tolerance, float(log_det_err)


def test_float32_round_trip_error_is_bounded_by_the_conditioning() -> None:
    """Where a bin is nearly flat, y holds x only to ulp(y)/g'(x): the round trip stays there."""
    x, params = draw(100_000, 1.0, torch.float32)
    y, log_det = rational_quadratic_spline(x, params)
    x_again, _ = rational_quadratic_spline(y, params, inverse=True)
    eps = torch.finfo(torch.float32).eps
    bound = 1e-5 + 8 * eps * (y.abs() + 1) / log_det.exp()
    assert bool(((x_again - x).abs() <= bound).all())


def test_log_derivative_matches_autograd_in_float64() -> None:
    x, params = draw(500, 2.0, torch.float64)
    for inverse in (False, True):
        v = x.clone().requires_grad_(True)
        out, log_det = rational_quadratic_spline(v, params, inverse=inverse)
        (grad,) = torch.autograd.grad(out.sum(), v)
        torch.testing.assert_close(grad.log(), log_det, atol=1e-9, rtol=0)


def test_monotone_and_continuous_at_the_bound() -> None:
    _, params = draw(1, 2.0, torch.float64)
    grid = torch.linspace(-7, 7, 20001, dtype=torch.float64)
    y, _ = rational_quadratic_spline(grid, params.expand(grid.shape[0], -1))
    assert bool((y.diff() > 0).all())
    for edge in (-5.0, 5.0):
        near = torch.tensor([edge - 1e-9, edge, edge + 1e-9], dtype=torch.float64)
        out, _ = rational_quadratic_spline(near, params.expand(3, -1))
        assert (out - near).abs().max() < 1e-8  # the spline meets the identity tails


def test_gradients_are_finite_at_knots_and_bounds() -> None:
    _, params = draw(6, 2.0, torch.float64)
    params = params.clone().requires_grad_(True)
    _, knots = _knots(params.detach()[:, :K], 5.0)
    x = torch.cat([knots[:, 3], torch.tensor([5.0, -5.0, 0.0], dtype=torch.float64)])[:6]
    x = x.clone().requires_grad_(True)
    for inverse in (False, True):
        out, log_det = rational_quadratic_spline(x, params, inverse=inverse)
        gx, gp = torch.autograd.grad((out + log_det).sum(), (x, params))
        assert bool(torch.isfinite(gx).all()) and bool(torch.isfinite(gp).all())


@pytest.mark.parametrize("layer", [RQCoupling, RQAutoregressive])
def test_bad_arguments(layer: type) -> None:
    name = layer.__name__
    with pytest.raises(ConfigError, match=rf"{name}: num_bins must be between 2 and 999 .*got 0"):
        layer((4,), num_bins=0)
    with pytest.raises(ConfigError, match=rf"{name}: num_bins must be between 2 and 999 .*got 1000"):
        layer((4,), num_bins=1000)
    with pytest.raises(ConfigError, match=rf"{name}: tail_bound must be greater than 0 .*got -1.0"):
        layer((4,), tail_bound=-1.0)
    with pytest.raises(
        ConfigError,
        match=rf"{name}: tail_bound must be a finite number greater "
        rf"than 0 .*got inf",
    ):
        layer((4,), tail_bound=float("inf"))
    with pytest.raises(ValueError, match="3K - 1"):
        rational_quadratic_spline(torch.zeros(3), torch.zeros(3, 4))


# -- the flows ------------------------------------------------------------------------------------
def _smallest_singular_values(flow, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """σ_min of the Jacobian ∂z/∂x of ``flow.encode`` at every row of ``x``."""
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda row, i=i: flow.encode(row[None], c[i : i + 1])[0][0], x[i]
            )
            for i in range(len(x))
        ]
    )
    return torch.linalg.svdvals(jac).min(dim=1).values


@pytest.mark.parametrize("coupling", [False, True], ids=["autoregressive", "coupling"])
def test_spline_flows_invert_on_trained_like_weights(coupling: bool) -> None:
    """The inverse is backward stable, so its error is the problem's conditioning and no more.

    With perturbed weights, three stacked splines can have slopes near their floor: ∂z/∂x then
    has σ_min down to 1e-12 at some inputs, and no algorithm recovers x there to better than
    ε/σ_min. So the test checks what a correct inverse guarantees: its output maps back to z to
    round-off everywhere (backward error ≤ 1e-10), x is exact to ≤ 1e-10 wherever the flow is not
    near-singular (σ_min > 1e-4), and everywhere within a small multiple of ε/σ_min.
    """
    torch.manual_seed(0)
    flow = flows.NSF(features=5, context=2, transforms=3, bins=6, hidden=16, coupling=coupling).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    c, x = torch.randn(64, 2, dtype=torch.float64), 4 * torch.randn(64, 5, dtype=torch.float64)
    with torch.no_grad():
        z, _ = flow.encode(x, c)
        x_back = flow.decode(z, c)
        torch.testing.assert_close(flow.encode(x_back, c)[0], z, atol=1e-10, rtol=0)
    sigma_min = _smallest_singular_values(flow, x, c)
    error = (x_back - x).abs().amax(dim=1)
    well_conditioned = sigma_min > 1e-4
    assert int(well_conditioned.sum()) >= 16  # the check below must see rows
    assert float(error[well_conditioned].max()) <= 1e-10
    eps = torch.finfo(torch.float64).eps
    assert bool((error <= 1e3 * eps / sigma_min).all()), (error * sigma_min / eps).max()
    samples, log_p = flow(c).rsample_and_log_prob()
    assert bool(torch.isfinite(samples).all()) and bool(torch.isfinite(log_p).all())
    well_conditioned = _smallest_singular_values(flow, samples.detach(), c) > 1e-4
    with torch.no_grad():
        torch.testing.assert_close(
            flow(c).log_prob(samples)[well_conditioned], log_p.detach()[well_conditioned], atol=1e-8, rtol=0
        )


def test_a_spline_flow_fits_a_bimodal_conditional_better_than_affine() -> None:
    """x | c is bimodal (±c): one affine MAF layer cannot split it, one spline layer can."""
    torch.manual_seed(0)
    c = torch.rand(4000, 1) + 1.0
    sign = torch.randint(0, 2, (4000, 1)) * 2.0 - 1.0
    x = torch.cat([sign * c + 0.1 * torch.randn(4000, 1), torch.randn(4000, 1)], dim=1)
    scores = {}
    for name, flow in (
        ("spline", flows.NSF(2, 1, transforms=2, bins=8, hidden=32)),
        ("affine", flows.MAF(2, 1, transforms=2, hidden=32)),
    ):
        opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
        for _ in range(300):
            idx = torch.randint(0, 4000, (256,))
            loss = -flow(c[idx]).log_prob(x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[name] = -float(flow(c).log_prob(x).mean())
    assert scores["spline"] < scores["affine"] - 0.3, scores


def test_one_bin_is_the_identity_and_is_refused() -> None:
    """With unit end slopes (to join the tails) a single bin is the identity: a useless layer."""
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    params = torch.tensor([0.3, -0.2], dtype=torch.float64).expand(101, 2)
    y, _ = rational_quadratic_spline(x, params)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    with pytest.raises(ConfigError, match="one bin"):
        flows.NSF(features=3, bins=1)
