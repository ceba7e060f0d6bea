"""The continuous normalizing flow (``cnf``): ODE solve, exact and Hutchinson traces, errors, NFE."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transform_test_utils import jacobian_logdet, perturb

from flowkit import registry
from flowkit.composition import Sequential
from flowkit.data.preprocess import Identity
from flowkit.errors import ConfigError, FlowkitError, ShapeError
from flowkit.model import Flow
from flowkit.objective import Batch
from flowkit.plugins.objectives.mle import MaximumLikelihood
from flowkit.plugins.priors.gaussian import StandardGaussian
from flowkit.plugins.transforms.cnf import CNF, ODESolverError
from flowkit.plugins.transforms.vector_fields import find_vector_field, solver_terms
from flowkit.testing import check_transform

TIGHT = {"solver": "dopri5", "atol": 1e-10, "rtol": 1e-10, "max_steps": 10_000}


def _cnf(shape: tuple[int, ...] = (3,), scale: float = 0.3, **kw) -> CNF:
    torch.manual_seed(0)
    t = CNF(shape, **{"hidden": 8, "num_hidden": 1, **kw})
    perturb(t, scale)
    return t


def test_fresh_cnf_is_the_identity() -> None:
    t = CNF((3,), hidden=8, num_hidden=1)
    x = torch.randn(4, 3)
    for mode in (t.train(), t.eval()):
        z, logdet = mode(x)
        torch.testing.assert_close(z, x, atol=1e-6, rtol=1e-6)  # dopri5's end-point interpolation
        assert torch.equal(logdet, torch.zeros(4))
    fixed = CNF((3,), hidden=8, num_hidden=1, solver="rk4")
    assert torch.equal(fixed(x)[0], x)


@pytest.mark.parametrize("shape", [(3,), (1, 2, 2)])
def test_round_trip_and_exact_logdet_match_autograd_in_float64(shape: tuple[int, ...]) -> None:
    t = _cnf(shape, **TIGHT).double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = t(x)
        back, logdet_inv = t.inverse(z)
    assert t.last_trace == "exact"
    assert z.dtype == logdet.dtype == torch.float64
    assert (z - x).abs().max() > 1e-2  # not the identity
    torch.testing.assert_close(back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros(2, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet, jacobian_logdet(t, x), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(logdet_inv, jacobian_logdet(t.inverse, z), atol=1e-7, rtol=1e-7)


def test_conformance_with_the_test_params() -> None:
    check_transform(
        CNF,
        (3,),
        CNF.test_params
        | {
            "hidden": 8,
            "num_hidden": 1,
            "solver": "rk4",
            "step_size": 0.125,
            "activation": "tanh",
            "trace": "hutchinson",
        },
    )


def test_hutchinson_estimate_is_unbiased() -> None:
    """The mean Hutchinson log-det over many probes (copies of one example, a fixed grid so
    every copy takes the same steps) is the exact log-det, within a few standard errors."""
    for probe in ("rademacher", "gaussian"):
        t = _cnf((4,), scale=0.5, solver="rk4", step_size=0.25, probe=probe).double()
        x = torch.randn(1, 4, dtype=torch.float64)
        with torch.no_grad():
            exact = t.eval()(x)[1]
            torch.manual_seed(1)
            estimates = t.train()(x.expand(4000, 4))[1]
        assert t.last_trace == "hutchinson"
        assert estimates.std() > 1e-3  # the estimates really are random
        stderr = float(estimates.std()) / math.sqrt(estimates.numel())
        assert abs(float(estimates.mean() - exact)) < 4 * stderr, (probe, stderr)


def test_trace_choice_in_training_and_evaluation() -> None:
    t = _cnf((4,), solver="rk4", step_size=0.5)
    x = torch.randn(3, 4)
    t.train()(x)
    assert t.last_trace == "hutchinson"
    t.eval()(x)
    assert t.last_trace == "exact" and t.eval_trace == "exact"
    t.exact_trace_max_dim = 3  # above the bound: Hutchinson in evaluation too
    t.eval()(x)
    assert t.last_trace == "hutchinson"
    t2 = _cnf((4,), solver="rk4", step_size=0.5, trace="exact")
    t2.train()(x)
    assert t2.last_trace == "exact"


def test_context_changes_the_flow_and_a_bad_context_is_a_shape_error() -> None:
    t = _cnf((3,), solver="rk4", step_size=0.25, context_features=2).eval()
    x = torch.randn(4, 3)
    c = torch.randn(4, 2)
    with torch.no_grad():
        z1, _ = t(x, c)
        z2, _ = t(x, c + 1.0)
        back, _ = t.inverse(z1, c)
    assert (z1 - z2).abs().max() > 1e-3
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    with pytest.raises(ShapeError):
        t(x)
    with pytest.raises(ShapeError):
        t(x, torch.randn(4, 3))
    labelled = _cnf((3,), solver="rk4", step_size=0.25, conditional=True, num_classes=3).eval()
    with torch.no_grad():
        a = labelled(x, torch.tensor([0, 1, 2, 0]))[0]
        b = labelled(x, torch.tensor([1, 2, 0, 1]))[0]
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "dopri6"}, r"unknown solver 'dopri6'\. Did you mean .*'dopri5'"),
        ({"atol": 0.0}, "atol must be greater than 0, got 0.0"),
        ({"rtol": -1e-5}, "rtol must be greater than 0, got -1e-05"),
        ({"time_horizon": 0.0}, "time_horizon must be greater than 0"),
        ({"step_size": float("nan")}, "step_size must be a finite number greater than 0"),
        ({"max_steps": 0}, "max_steps must be at least 1, got 0"),
        ({"hidden": 0}, "hidden must be at least 1, got 0"),
        ({"num_hidden": 0}, "num_hidden must be at least 1, got 0"),
        ({"exact_trace_max_dim": -1}, "exact_trace_max_dim must be at least 0, got -1"),
        ({"solver": "rk4", "step_size": 0.001, "max_steps": 100}, "more than transform.max_steps"),
        ({"activation": "relu"}, "transform.activation must be one of softplus, tanh, silu"),
    ],
)
def test_bad_config_is_a_config_error(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CNF((2,), **params)


def test_bad_config_through_the_registry_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="solver"):
        registry.transforms.build("cnf", {"solver": "rk5"}, injected={"event_shape": (2,)})
    with pytest.raises(ConfigError, match=r"\[transform\] cnf atol must be greater than 0, got 0\.0"):
        registry.transforms.build("cnf", {"atol": 0.0}, injected={"event_shape": (2,)})
    with pytest.raises(ShapeError, match="net='conv'"):
        CNF((2, 3, 3), net="mlp")


def test_hitting_max_steps_is_a_flowkit_error_naming_the_settings() -> None:
    t = _cnf((3,), scale=1.0, solver="dopri5", atol=1e-12, rtol=1e-12, max_steps=3).double()
    with pytest.raises(ODESolverError, match=r"transform\.max_steps = 3") as info:
        t.eval()(torch.randn(2, 3, dtype=torch.float64))
    assert isinstance(info.value, FlowkitError)
    assert "transform.atol/transform.rtol" in str(info.value)
    assert t.last_nfe > 0


def test_nfe_is_counted_and_logged_by_mle() -> None:
    t = _cnf((2,), solver="dopri5", atol=1e-5, rtol=1e-5)
    model = Flow(t, StandardGaussian((2,)), Identity((2,)))
    out = MaximumLikelihood().loss(model, Batch(torch.randn(8, 2)), 0)
    assert out.terms["nfe"] == t.last_nfe > 6  # dopri5: 6 evaluations a step at least
    t.eval()(torch.randn(4, 2))
    fixed = _cnf((2,), solver="rk4", step_size=0.25)
    fixed(torch.randn(3, 2))
    assert fixed.last_nfe == 16  # 4 steps × 4 stages (3/8-rule RK4)
    both = Sequential([copy.deepcopy(fixed), copy.deepcopy(fixed)])
    both(torch.randn(3, 2))
    assert solver_terms(both) == {"nfe": 32.0}
    assert solver_terms(Identity((2,))) == {}


def test_adjoint_gradients_match_backpropagation_through_the_solver() -> None:
    t = _cnf((2,), trace="exact", **TIGHT).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        t.adjoint = adjoint
        t.zero_grad()
        z, logdet = t(x)
        (z.square().sum() - logdet.sum()).backward()
        grads.append([p.grad.clone() for p in t.parameters()])
    for direct, adj in zip(*grads):
        torch.testing.assert_close(adj, direct, atol=1e-6, rtol=1e-5)


def test_velocity_is_the_vector_field_that_the_solver_integrates() -> None:
    t = _cnf((2,), solver="euler", step_size=2.0, time_horizon=2.0).eval()
    x = torch.randn(5, 2)
    with torch.no_grad():
        z, _ = t(x)  # one Euler step over the whole horizon
        torch.testing.assert_close(z, x + 2.0 * t.velocity(x, 0.0))
        back, _ = t.inverse(z)  # one step back, from t = 2
        torch.testing.assert_close(back, z - 2.0 * t.velocity(z, 2.0))
    assert t.velocity(x, torch.full((5,), 1.5)).shape == (5, 2)
    with pytest.raises(ShapeError):
        t.velocity(x, torch.zeros(4))
    assert find_vector_field(t) is t


def test_float64_and_images_follow_the_input() -> None:
    t = _cnf((2, 3, 3), solver="rk4", step_size=0.25).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    z, logdet = t(x)
    assert z.dtype == logdet.dtype == torch.float64 and z.shape == x.shape
