"""Planar, radial and Sylvester flows: constraints, inverses, log-dets, gradients, training."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

from flowkit.composition import Inverse
from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.transforms import sylvester as sylvester_module
from flowkit.plugins.transforms.planar import MARGIN as PLANAR_MARGIN
from flowkit.plugins.transforms.planar import PlanarFlow, PlanarLayer
from flowkit.plugins.transforms.radial import ALPHA_MIN, RadialFlow, RadialLayer
from flowkit.plugins.transforms.radial import MARGIN as RADIAL_MARGIN
from flowkit.plugins.transforms.root_finding import (
    TOL_ULPS,
    RootFindingWarning,
    solve_tanh_equation,
    tanh_derivative,
)
from flowkit.plugins.transforms.sylvester import DIAG_BOUND, SylvesterFlow, SylvesterLayer
from flowkit.registry import datasets, transforms
from flowkit.testing import check_transform
from flowkit.transform import Transform
from tests.plugins.transform_test_utils import jacobian_logdet, perturb

VARIANTS = ("orthogonal", "householder", "triangular")
DTYPES = (torch.float32, torch.float64)

# (class, event_shape, keyword arguments): single layers and small stacks
CASES: list[tuple[type[Transform], tuple[int, ...], dict[str, Any]]] = [
    (PlanarLayer, (3,), {}),
    (PlanarLayer, (1,), {}),
    (PlanarFlow, (5,), {"num_layers": 3}),
    (RadialLayer, (3,), {}),
    (RadialLayer, (1,), {}),
    (RadialFlow, (5,), {"num_layers": 3}),
    (SylvesterLayer, (4,), {"variant": "orthogonal", "num_columns": 2}),
    (SylvesterLayer, (4,), {"variant": "householder", "num_householder": 3}),
    (SylvesterLayer, (4,), {"variant": "triangular", "reverse": True, "num_columns": 3}),
    (SylvesterLayer, (1,), {"variant": "householder", "num_householder": 1}),
    (SylvesterFlow, (5,), {"num_layers": 3, "variant": "orthogonal", "num_columns": 3}),
    (SylvesterFlow, (5,), {"num_layers": 3, "variant": "householder", "num_householder": 2}),
    (SylvesterFlow, (5,), {"num_layers": 3, "variant": "triangular"}),
]
IDS = [f"{cls.__name__}-{shape[0]}-{'-'.join(map(str, kw.values()))}" for cls, shape, kw in CASES]

# the registered stacks at their defaults (8 layers), for the accuracy measurements
STACKS: list[tuple[str, dict[str, Any]]] = [
    ("planar", {}),
    ("radial", {}),
    *[("sylvester", {"variant": v}) for v in VARIANTS],
]


def build(
    cls: type[Transform], shape: tuple[int, ...], kwargs: dict[str, Any], noise: float = 0.3, seed: int = 0
) -> Transform:
    torch.manual_seed(seed)
    module = cls(shape, **kwargs)
    perturb(module, noise, seed=seed + 1)
    return module


def gaussian(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# -- the conformance suite on layers and variants the registered defaults do not reach ---------
@pytest.mark.parametrize(("cls", "shape", "kwargs"), CASES, ids=IDS)
def test_conformance_of_layers_and_variants(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    check_transform(cls, shape, kwargs, seed=3, input_scale=2.0, perturbation=0.3)


# -- direction convention: inverse is the paper's generative map --------------------------------
def test_inverse_is_the_generative_map() -> None:
    z = gaussian(6, 3, seed=1).double()
    planar = build(PlanarLayer, (3,), {}).double()
    u_hat, wu = planar.u_hat()
    alpha = z @ planar.w + planar.b
    expected = z + torch.tanh(alpha)[:, None] * u_hat
    x, logdet = planar.inverse(z)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(logdet, torch.log(1 + tanh_derivative(alpha) * (u_hat @ planar.w)))
    torch.testing.assert_close(wu, planar.w @ u_hat)

    radial = build(RadialLayer, (3,), {}).double()
    a, b = radial.alpha_beta()
    r = (z - radial.z0).norm(dim=1, keepdim=True)
    torch.testing.assert_close(radial.inverse(z)[0], z + b / (a + r) * (z - radial.z0))
    h, dh = 1 / (a + r), -1 / (a + r) ** 2  # eq. 14
    eq14 = 2 * torch.log(1 + b * h) + torch.log(1 + b * h + b * dh * r)
    torch.testing.assert_close(radial.inverse(z)[1], eq14.squeeze(1))

    for variant in VARIANTS:
        syl = build(SylvesterLayer, (3,), {"variant": variant}).double()
        q, rr, rt = syl.factors()
        torch.testing.assert_close(syl.inverse(z)[0], z + torch.tanh(z @ q @ rt.T + syl.bias) @ rr.T @ q.T)


# -- inverse accuracy (the numbers in docs/planar-radial-sylvester.md) --------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_inverse_accuracy_of_default_stacks(dtype: torch.dtype) -> None:
    """8 layers, parameters = init + N(0, 0.3²) noise, x ~ N(0, 2²), z ~ N(0, 1)."""
    bound = 5e-6 if dtype == torch.float32 else 1e-12
    for name, params in STACKS:
        for dim in (2, 10):
            torch.manual_seed(dim)
            flow = transforms.build(name, {"num_layers": 8, **params}, injected={"event_shape": (dim,)}).to(
                dtype
            )
            perturb(flow, 0.3, seed=dim)
            x = gaussian(500, dim, seed=1, scale=2.0).to(dtype)
            z = gaussian(500, dim, seed=2).to(dtype)
            with torch.no_grad():
                data_rt = float((flow.inverse(flow(x)[0])[0] - x).abs().max() / x.abs().max())
                latent_rt = float((flow(flow.inverse(z)[0])[0] - z).abs().max() / z.abs().max())
                ld_sum = flow(x)[1] + flow.inverse(flow(x)[0])[1]
            print(f"{name} {params} D={dim} {dtype}: x→z→x {data_rt:.1e}, z→x→z {latent_rt:.1e}")
            assert data_rt < bound and latent_rt < bound, (name, params, dim)
            assert float(ld_sum.abs().max()) < 100 * bound


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_scalar_solver_reaches_its_tolerance(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 20000
    f64 = torch.float64
    a = (
        torch.exp(torch.empty(n, dtype=f64).uniform_(-8, 8, generator=gen))
        * torch.randn(n, generator=gen, dtype=f64).sign()
    )
    d = (torch.rand(n, generator=gen, dtype=f64) * 2 - 1) * 3
    # keep a·d > −1 (the constraint; with room for rounding), down to a·d = −1 + 1e-4
    d = torch.where(a * d < -1, -(1 - 1e-4 - 1e-3 * torch.rand(n, generator=gen, dtype=f64)) / a, d)
    s = torch.randn(n, generator=gen, dtype=f64) * 5
    t = torch.randn(n, generator=gen, dtype=f64) * 10
    a, d, s, t = (v.to(dtype) for v in (a, d, s, t))
    assert bool((a.double() * d.double() > -1).all())
    v = solve_tanh_equation(t, a, d, s)
    # reference: bisection in float64 to the last bit
    lo, hi = (t - a.abs()).double(), (t + a.abs()).double()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        g = mid + a.double() * torch.tanh(d.double() * mid + s.double()) - t.double()
        lo, hi = torch.where(g < 0, mid, lo), torch.where(g < 0, hi, mid)
    exact = 0.5 * (lo + hi)
    eps = torch.finfo(dtype).eps
    slope = 1 + a.double() * d.double() * tanh_derivative(d.double() * exact + s.double())
    # forward error ≤ (solver tolerance + rounding of g in dtype / slope), elementwise
    scale = 1 + exact.abs() + a.double().abs() + t.double().abs()
    allowed = TOL_ULPS * eps * (1 + exact.abs()) + 16 * eps * scale / slope
    assert bool(((v.double() - exact).abs() <= allowed).all())


def test_scalar_solver_is_elementwise_and_warns_on_nan() -> None:
    t = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    a = torch.tensor([2.0, -0.9, 40.0], dtype=torch.float64)
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    together = solve_tanh_equation(t, a, one, zero)
    alone = torch.stack([solve_tanh_equation(t[i : i + 1], a[i : i + 1], one, zero)[0] for i in range(3)])
    assert torch.equal(together, alone)
    with pytest.warns(RootFindingWarning, match="did not converge"):
        out = solve_tanh_equation(
            torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 1.0]), torch.tensor(1.0), torch.tensor(0.0)
        )
    assert math.isfinite(float(out[1]))


# -- invertibility for arbitrary raw parameters --------------------------------------------------
EXTREMES = (-1e3, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e3)


def grid(dtype: torch.dtype, extent: float = 4.0, n: int = 41) -> Tensor:
    side = torch.linspace(-extent, extent, n, dtype=dtype)
    return torch.cartesian_prod(side, side)


def assert_round_trip(layer: Transform, x: Tensor, rtol: float) -> None:
    with torch.no_grad():
        z, ld = layer(x)
        back, ld_back = layer.inverse(z)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all()
    assert float((back - x).abs().max()) <= rtol * (1 + float(x.abs().max()))
    assert float((ld + ld_back).abs().max()) <= 1e3 * rtol


def test_planar_constraint_holds_for_extreme_raw_parameters() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor(EXTREMES, dtype=torch.float64)
    layer = PlanarLayer((2,)).double()
    alphas = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    for _ in range(40):
        pick = values[torch.randint(len(values), (5,), generator=gen)]
        with torch.no_grad():
            layer.w.copy_(pick[:2])
            layer.u.copy_(pick[2:4])
            layer.b.fill_(float(pick[4]) / 100)
        if float(layer.w.detach().norm()) == 0:
            continue
        u_hat, wu = (value.detach() for value in layer.u_hat())
        assert float(wu) >= -1 + PLANAR_MARGIN * 0.99
        # the scalar equation α + (wᵀû)·tanh(α) is strictly increasing: f is injective
        assert bool((torch.diff(alphas + wu * torch.tanh(alphas)) > 0).all())
        # float64 round trips on a grid, relative to the scale of the map
        x = layer.inverse(grid(torch.float64))[0].detach()
        assert_round_trip(layer, x, 1e-8 * (1 + float(u_hat.abs().max())))
        for dtype in DTYPES:  # finite log-dets both ways, in both precisions
            layer32 = PlanarLayer((2,)).to(dtype)
            layer32.load_state_dict(layer.state_dict())
            with torch.no_grad():
                assert torch.isfinite(layer32.inverse(grid(dtype))[1]).all()
                assert torch.isfinite(layer32(grid(dtype))[1]).all()


def assert_inverts_with_finite_logdets(layer: Transform, rtol: float) -> None:
    """Round trips both ways on the float64 grid, and finite log-dets in every dtype."""
    x = grid(torch.float64)
    assert_round_trip(layer, layer.inverse(x)[0].detach(), rtol)
    assert_round_trip(layer, x, rtol)
    for dtype in DTYPES:
        with torch.no_grad():
            assert torch.isfinite(layer.to(dtype).inverse(grid(dtype))[1]).all()
            assert torch.isfinite(layer(grid(dtype))[1]).all()
        layer.double()


def test_radial_constraint_holds_for_extreme_raw_parameters() -> None:
    layer = RadialLayer((2,)).double()
    radii = torch.linspace(0, 100, 100001, dtype=torch.float64)
    for alpha_raw in EXTREMES:
        for beta_raw in EXTREMES:
            with torch.no_grad():
                layer.alpha_raw.fill_(alpha_raw)
                layer.beta_raw.fill_(beta_raw)
                layer.z0.fill_(0.5)
            alpha, beta = (p.detach() for p in layer.alpha_beta())
            assert float(alpha) >= ALPHA_MIN and float(alpha + beta) >= RADIAL_MARGIN * float(alpha) * 0.99
            # along every ray the radius maps by r ↦ r·(1 + β/(α + r)), strictly increasing
            assert bool((torch.diff(radii * (1 + beta / (alpha + radii))) > 0).all())
            # (β ≫ α expands a small ball around z₀ by up to β/α: rounding grows with |β|)
            assert_inverts_with_finite_logdets(layer, 1e-12 * (1 + float(alpha) + float(beta.abs())))


@pytest.mark.parametrize("variant", VARIANTS)
def test_sylvester_constraint_holds_for_extreme_raw_parameters(variant: str) -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor(EXTREMES, dtype=torch.float64)
    layer = SylvesterLayer((2,), variant=variant).double()
    for _ in range(15):
        with torch.no_grad():
            for raw in (layer.r_raw, layer.r_tilde_raw):
                raw.copy_(values[torch.randint(len(values), raw.shape, generator=gen)])
                raw.triu_(1).clamp_(-3, 3).add_(torch.diag(values[torch.randint(7, (2,), generator=gen)]))
        _, r, r_tilde = layer.factors()
        products = torch.diagonal(r) * torch.diagonal(r_tilde)
        assert bool((products >= -(DIAG_BOUND**2)).all())  # > −1: every scalar equation increasing
        assert_inverts_with_finite_logdets(layer, 1e-10)


# -- Q has orthonormal columns ------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sylvester_q_is_orthonormal(variant: str, dtype: torch.dtype) -> None:
    for dim, m in ((6, 6), (6, 3), (1, 1)):
        layer = build(
            SylvesterLayer, (dim,), {"variant": variant, "num_columns": m, "num_householder": 5}, noise=2.0
        ).to(dtype)
        q = layer.q().detach()
        assert q.shape == (dim, m)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(q.T @ q, torch.eye(m, dtype=dtype), atol=tol, rtol=0)
    triangular = [SylvesterLayer((4,), variant="triangular", reverse=rev).q() for rev in (False, True)]
    assert torch.equal(triangular[0], torch.eye(4)) and torch.equal(triangular[1], torch.eye(4).flip(1))
    flow = SylvesterFlow((4,), num_layers=3, variant="triangular")
    assert [bool(layer.q()[0, 0] == 0) for layer in flow.flow] == [False, True, False]


# -- log-dets against autograd, gradients against finite differences ----------------------------
@pytest.mark.parametrize(("cls", "shape", "kwargs"), CASES, ids=IDS)
def test_logdet_matches_autograd_both_directions(
    cls: type[Transform],
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
) -> None:
    module = build(cls, shape, kwargs, noise=0.5).double()
    x = gaussian(3, *shape, seed=5, scale=2.0).double()
    z = gaussian(3, *shape, seed=6).double()
    torch.testing.assert_close(module(x)[1], jacobian_logdet(module, x), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(
        module.inverse(z)[1], jacobian_logdet(Inverse(module), z), atol=1e-10, rtol=1e-9
    )


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (PlanarLayer, {}),
        (RadialLayer, {}),
        (SylvesterLayer, {"variant": "orthogonal", "num_columns": 2}),
        (SylvesterLayer, {"variant": "householder", "num_householder": 2}),
    ],
)
def test_iterative_forward_has_exact_parameter_gradients(
    cls: type[Transform], kwargs: dict[str, Any]
) -> None:
    module = build(cls, (3,), kwargs, noise=0.5).double()
    x = gaussian(4, 3, seed=7, scale=2.0).double()
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    xin = x.clone().requires_grad_(True)

    def run(inp: Tensor, *ps: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(module, dict(zip(names, ps)), (inp,))

    assert torch.autograd.gradcheck(run, (xin, *params), atol=1e-6, rtol=1e-5)


def test_sylvester_back_substitution_fallback_agrees_with_newton(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = build(SylvesterFlow, (5,), {"num_layers": 3, "num_columns": 4}, noise=1.0).double()
    x = gaussian(7, 5, seed=8, scale=2.0).double()
    newton = flow(x)
    monkeypatch.setattr(sylvester_module, "NEWTON_STEPS", 0)  # back-substitution only
    fallback = flow(x)
    torch.testing.assert_close(fallback[0], newton[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(fallback[1], newton[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(fallback[1], jacobian_logdet(flow, x), atol=1e-10, rtol=1e-9)
    monkeypatch.setattr(sylvester_module, "NEWTON_STEPS", 1)  # a mix of both, row by row
    torch.testing.assert_close(flow(x)[0], newton[0], atol=1e-12, rtol=0)
    with pytest.warns(RootFindingWarning):
        flow(torch.full((1, 5), float("nan"), dtype=torch.float64))


# -- user errors ---------------------------------------------------------------------------------
def test_bad_parameters_raise_flowkit_errors() -> None:
    for name in ("planar", "radial", "sylvester"):
        with pytest.raises(ConfigError, match="num_layers"):
            transforms.build(name, {"num_layers": 0}, injected={"event_shape": (2,)})
        with pytest.raises(ShapeError, match="vectors"):
            transforms.build(name, {}, injected={"event_shape": (1, 4, 4)})
    with pytest.raises(ConfigError, match="num_columns"):
        SylvesterFlow((3,), num_columns=4)
    with pytest.raises(ConfigError, match="variant"):
        SylvesterFlow((3,), variant="givens")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="variant"):
        transforms.build("sylvester", {"variant": "givens"}, injected={"event_shape": (3,)})
    with pytest.raises(ConfigError, match="num_householder"):
        SylvesterFlow((3,), variant="householder", num_householder=0)
    with pytest.raises(ShapeError, match=r"\(batch, 3\)"):
        PlanarFlow((3,))(torch.zeros(2, 4))


# -- maximum likelihood on moons lowers the NLL --------------------------------------------------
def test_maximum_likelihood_on_moons_lowers_the_nll() -> None:
    data = datasets.build("moons", {"n_train": 2000, "n_test": 1000}, injected={"seed": 0})

    def nll(flow: Transform, x: Tensor) -> Tensor:
        z, logdet = flow(x)
        return (0.5 * z.square().sum(dim=1) + math.log(2 * math.pi) - logdet).mean()

    for name, params in [("planar", {}), ("radial", {}), ("sylvester", {"variant": "householder"})]:
        torch.manual_seed(0)
        flow = transforms.build(name, {"num_layers": 6, **params}, injected={"event_shape": (2,)})
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            before = float(nll(flow, data.test))
        for _ in range(80):
            loss = nll(flow, data.train[torch.randint(len(data.train), (128,), generator=gen)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = float(nll(flow, data.test))
        print(f"{name}: test NLL {before:.3f} -> {after:.3f}")
        assert after < before - 0.2, (name, before, after)
