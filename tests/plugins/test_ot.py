"""The minibatch optimal-transport objective (``ot``) and its matching kernels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

import flowkit
from flowkit import registry
from flowkit.data.preprocess import Identity
from flowkit.errors import ConfigError, ShapeError
from flowkit.model import Flow
from flowkit.objective import Batch, WeightedSum
from flowkit.plugins.objectives import matching
from flowkit.plugins.objectives.mle import MaximumLikelihood
from flowkit.plugins.objectives.ot import OptimalTransport
from flowkit.plugins.priors.class_gaussian import ClassGaussian
from flowkit.plugins.priors.gaussian import StandardGaussian
from flowkit.plugins.priors.restricted import RestrictedGaussian
from flowkit.plugins.transforms.realnvp import RealNVP

# encodings and prior samples whose optimal matching is z_0↔s_1, z_1↔s_2, z_2↔s_0
Z = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
S = torch.tensor([[0.5, 13.0], [0.0, 1.0], [10.0, 2.0]], dtype=torch.float64)
PERM = [1, 2, 0]


def _flow(
    shape: tuple[int, ...] = (4,),
    prior: str = "class",
    num_classes: int = 3,
    dtype: torch.dtype = torch.float32,
) -> Flow:
    torch.manual_seed(0)
    transform = RealNVP(shape, num_layers=2, hidden=8, num_hidden=1, num_blocks=1)
    latent = transform.output_shape
    p = ClassGaussian(latent, num_classes) if prior == "class" else StandardGaussian(latent)
    return Flow(transform, p, Identity(shape), num_classes=num_classes).to(dtype)


def _identity_flow(prior: ClassGaussian) -> Flow:
    """A flow whose transform is the identity, so encodings are the data themselves."""
    return Flow(Identity(prior.shape), prior, Identity(prior.shape), num_classes=prior.num_classes)


@pytest.mark.parametrize("solver", ["emd", "lsa"])
def test_known_matching_plan_loss_and_gradient(solver: str) -> None:
    z = Z.clone().requires_grad_(True)
    loss, plan = OptimalTransport(solver=solver).transport_cost(z, S)
    assert plan is not None
    expected_plan = torch.zeros(3, 3, dtype=torch.float64)
    expected_plan[torch.arange(3), torch.tensor(PERM)] = 1.0 / 3
    torch.testing.assert_close(plan, expected_plan)
    matched = (Z - S[PERM]).norm(dim=1)
    torch.testing.assert_close(loss, matched.mean())
    assert math.isclose(float(loss.detach()), (1.0 + 2.0 + math.sqrt(9.25)) / 3, rel_tol=1e-9)
    loss.backward()
    assert z.grad is not None
    unit = (Z - S[PERM]) / matched[:, None] / 3
    torch.testing.assert_close(z.grad, unit)


def test_squared_cost_gradient() -> None:
    z = Z.clone().requires_grad_(True)
    loss, _ = OptimalTransport(solver="lsa", cost="sqeuclidean").transport_cost(z, S)
    torch.testing.assert_close(loss, (Z - S[PERM]).pow(2).sum(1).mean())
    loss.backward()
    torch.testing.assert_close(z.grad, 2.0 * (Z - S[PERM]) / 3)


def test_euclidean_cost_is_clamped_for_coinciding_points() -> None:
    a = torch.zeros(2, 3, requires_grad=True)
    cost = matching.pairwise_cost(a, torch.zeros(2, 3))
    torch.testing.assert_close(cost, torch.full((2, 2), 1e-3))
    cost.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_emd_plan_drops_round_off_and_handles_one_point() -> None:
    plan = matching.emd_plan(torch.rand(6, 6, dtype=torch.float64))
    assert ((plan == 0) | torch.isclose(plan, torch.tensor(1 / 6, dtype=torch.float64))).all()
    torch.testing.assert_close(plan.sum(0), torch.full((6,), 1 / 6, dtype=torch.float64))
    assert float(matching.emd_plan(torch.ones(1, 1))) == 1.0


@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean"])
def test_solvers_agree(cost: str) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(24, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(24, 2, generator=gen, dtype=torch.float64) + 0.5
    values = {
        solver: float(
            OptimalTransport(
                solver=solver, cost=cost, sinkhorn_blur=1e-3, sinkhorn_scaling=0.95
            ).transport_cost(a, b)[0]
        )
        for solver in ("emd", "lsa", "sinkhorn")
    }
    assert math.isclose(values["emd"], values["lsa"], rel_tol=1e-9)
    assert math.isclose(values["sinkhorn"], values["emd"], rel_tol=0.03), values


def test_matching_is_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    prior = ClassGaussian((2,), 3)
    with torch.no_grad():
        prior.loc.copy_(100.0 * torch.arange(3.0)[:, None].expand(3, 2))
        prior.scale.fill_(0.1)
    prior.initialized.fill_(True)
    model = _identity_flow(prior)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 0, 0])
    x = prior.sample(10, labels).detach() + 0.05
    # the reference's plain matching (debias = "none"): one n × n problem per class
    objective = OptimalTransport(solver="lsa", smoothness_weight=0.0, debias="none")
    seen: list[tuple[Tensor, Tensor]] = []
    original = OptimalTransport.transport_cost

    def spy(self: OptimalTransport, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor | None]:
        seen.append((a.detach(), b.detach()))
        return original(self, a, b)

    monkeypatch.setattr(OptimalTransport, "transport_cost", spy)
    out = objective.loss(model, Batch(x, labels), 0)
    assert out.terms["classes"] == 3.0
    assert [a.shape[0] for a, _ in seen] == [4, 3, 3]
    for c, (a, b) in enumerate(seen):  # each call sees one class's encodings and samples only
        assert torch.allclose(a, torch.full_like(a, 100.0 * c), atol=1.0)
        assert torch.allclose(b, torch.full_like(b, 100.0 * c), atol=1.0)
    assert out.terms["ot"] < 3 * 1.0  # cross-class matches would cost ≥ 100


def test_gradients_reach_network_and_prior() -> None:
    model = _flow()
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    model.initialize(x, y)
    out = OptimalTransport().loss(model, Batch(x, y), 0)
    assert out.total is not None
    out.total.backward()
    assert isinstance(model.prior, ClassGaussian)
    for p in (model.prior.loc, model.prior.scale):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # (zero-initialised output layers of the couplings leave a few gradients exactly 0 at init)
    grads = [p.grad for p in model.transform.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_smoothness_term() -> None:
    model = _flow()
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    model.initialize(x, y)
    off = OptimalTransport(solver="lsa", smoothness_weight=0.0).loss(model, Batch(x, y), 0)
    assert off.terms["smoothness"] == 0.0
    assert math.isclose(off.terms["loss"], off.terms["ot"], rel_tol=1e-6)
    on = OptimalTransport(solver="lsa", smoothness_weight=15.0).loss(model, Batch(x, y), 0)
    assert on.terms["smoothness"] > 0.0
    assert math.isclose(on.terms["loss"], on.terms["ot"] + 15.0 * on.terms["smoothness"], rel_tol=1e-5)


def test_smoothness_value_for_identity_decoder() -> None:
    """With f = id, x̂ − x̃ = noise·ε: the term is E[(0.1 ε)²] + E|0.1 ε| summed over classes."""
    prior = ClassGaussian((400,), 2)
    prior.initialized.fill_(True)
    x, y = torch.randn(400, 400), torch.arange(400) % 2
    torch.manual_seed(0)
    out = OptimalTransport(solver="lsa", smoothness_noise=0.1).loss(_identity_flow(prior), Batch(x, y), 0)
    expected = 2 * (0.01 + 0.1 * math.sqrt(2 / math.pi))
    assert math.isclose(out.terms["smoothness"], expected, rel_tol=0.02)


def test_reduction_mean_divides_by_classes() -> None:
    model = _flow()
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    model.initialize(x, y)
    torch.manual_seed(3)
    total = OptimalTransport(solver="lsa").loss(model, Batch(x, y), 0)
    torch.manual_seed(3)
    mean = OptimalTransport(solver="lsa", reduction="mean").loss(model, Batch(x, y), 0)
    assert math.isclose(mean.terms["loss"] * 3, total.terms["loss"], rel_tol=1e-5)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_data_space_unconditional_float64(solver: str) -> None:
    model = _flow(prior="standard", dtype=torch.float64)
    x = torch.randn(16, 4, dtype=torch.float64)
    objective = OptimalTransport(solver=solver, space="data")
    objective.setup(model)
    out = objective.loss(model, Batch(x, None), 0)
    assert out.total is not None and out.total.dtype == torch.float64
    assert out.terms["classes"] == 1.0 and out.terms["match_ms"] >= 0.0
    out.total.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_restricted_prior_gets_exact_zeros_matched() -> None:
    model = Flow(
        RealNVP((6,), num_layers=2, hidden=8, num_hidden=1),
        RestrictedGaussian((6,), num_selected=2),
        Identity((6,)),
    )
    x = torch.randn(10, 6)
    model.initialize(x)
    out = OptimalTransport(solver="lsa").loss(model, Batch(x, torch.arange(10) % 2), 0)
    assert out.terms["classes"] == 1.0 and math.isfinite(out.terms["loss"])


def test_errors() -> None:
    model = _flow()
    with pytest.raises(ShapeError, match="class labels"):
        OptimalTransport().loss(model, Batch(torch.randn(4, 4), None), 0)
    with pytest.raises(ConfigError, match="smoothness_weight"):
        OptimalTransport(smoothness_weight=-1.0)
    with pytest.raises(ConfigError, match="sinkhorn_scaling"):
        OptimalTransport(sinkhorn_scaling=1.0)
    registry.objectives.register("ot", OptimalTransport)
    try:
        with pytest.raises(ConfigError, match="one of"):
            registry.objectives.build("ot", {"solver": "hungarian"})
    finally:
        registry.objectives.unregister("ot")


def test_weighted_sum_with_mle() -> None:
    model = _flow()
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    model.initialize(x, y)
    combined = WeightedSum(
        {"mle": MaximumLikelihood(), "ot": OptimalTransport(solver="lsa")}, {"mle": 1.0, "ot": 0.1}
    )
    out = combined.loss(model, Batch(x, y), 0)
    assert "ot/ot" in out.terms and out.total is not None


def test_end_to_end_training(tmp_path: Path) -> None:
    """A few real trainer steps on the digits with the OT objective and the class prior."""
    registry.objectives.register("ot", OptimalTransport)
    registry.priors.register("class-gaussian", ClassGaussian)
    try:
        cfg = flowkit.load_config(
            None,
            [
                "train.steps=3",
                "transform.hidden=8",
                "transform.num_blocks=1",
                "transform.num_scales=1",
                "train.batch_size=100",
                "train.init_examples=300",
                "objective.solver=lsa",
                "eval.final_max_examples=100",
                "eval.n_samples=10",
            ],
            data="digits",
            objective="ot",
            prior="class-gaussian",
        )
        summary = flowkit.train(cfg, tmp_path / "run", progress=False)
    finally:
        registry.objectives.unregister("ot")
        registry.priors.unregister("class-gaussian")
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"ot"') >= 1


def test_objective_and_priors_pickle() -> None:
    import pickle

    objective = pickle.loads(pickle.dumps(OptimalTransport(solver="sinkhorn", cost="sqeuclidean")))
    assert objective.solver == "sinkhorn" and objective.cost == "sqeuclidean"
    model = pickle.loads(pickle.dumps(_flow()))
    assert isinstance(model.prior, ClassGaussian)
    restricted = pickle.loads(pickle.dumps(RestrictedGaussian((6,), num_selected=2)))
    assert restricted.selected.tolist() == [0, 1]
