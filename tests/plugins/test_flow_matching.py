"""The ``flow-matching`` objective: loss, couplings, the vector-field protocol, and a short run."""

from __future__ import annotations

import json

import pytest
import torch

import flowkit
from flowkit import registry
from flowkit.data.preprocess import Identity
from flowkit.errors import ConfigError
from flowkit.execution.compiled import CompiledTraining
from flowkit.model import Flow
from flowkit.objective import Batch
from flowkit.plugins.objectives.flow_matching import FlowMatching, sinkhorn_plan
from flowkit.plugins.priors.class_gaussian import ClassGaussian
from flowkit.plugins.priors.gaussian import StandardGaussian
from flowkit.plugins.transforms.cnf import CNF
from flowkit.plugins.transforms.realnvp import RealNVP
from flowkit.plugins.transforms.vector_fields import find_vector_field


def _model(hidden: int = 32, prior=None, **kw) -> Flow:
    torch.manual_seed(0)
    cnf = CNF((2,), hidden=hidden, num_hidden=2, **kw)
    return Flow(cnf, prior or StandardGaussian((2,)), Identity((2,)))


def _shifted_blob(n: int, gen: torch.Generator) -> torch.Tensor:
    """A toy: an anisotropic Gaussian far from the prior's mean."""
    return torch.randn(n, 2, generator=gen) * torch.tensor([0.5, 0.2]) + torch.tensor([3.0, -1.0])


def _fixed_loss(obj: FlowMatching, model: Flow, x: torch.Tensor) -> float:
    with torch.random.fork_rng():
        torch.manual_seed(123)
        return obj.loss(model, Batch(x), 0).terms["loss"]


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_loss_decreases_and_the_likelihood_improves(coupling: str) -> None:
    model = _model()
    obj = FlowMatching(coupling=coupling)
    obj.setup(model)
    gen = torch.Generator().manual_seed(0)
    held_out = _shifted_blob(512, gen)
    before = _fixed_loss(obj, model, held_out)
    model.eval()
    with torch.no_grad():
        nll_before = -model.log_prob(held_out).mean().item()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        out = obj.loss(model, Batch(_shifted_blob(128, gen)), step)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    after = _fixed_loss(obj, model, held_out)
    model.eval()
    with torch.no_grad():
        nll_after = -model.log_prob(held_out).mean().item()  # exact trace: a true likelihood
    assert after < 0.5 * before, (before, after)
    assert nll_after < nll_before - 2.0, (nll_before, nll_after)


def test_ot_pairs_have_smaller_squared_distances_than_independent_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    obj = FlowMatching(coupling="ot")
    for _ in range(3):
        x0 = torch.randn(64, 3, generator=gen) + 2.0
        x1 = torch.randn(64, 3, generator=gen)
        paired = obj.pair(x0, x1)
        # a permutation of the prior samples, with the smallest total squared distance
        assert sorted(paired[:, 0].tolist()) == sorted(x1[:, 0].tolist())
        ot_cost = (x0 - paired).pow(2).sum(1)
        independent = (x0 - x1).pow(2).sum(1)
        assert ot_cost.sum() <= independent.sum()
        for _ in range(5):  # no random pairing does better
            shuffled = x1[torch.randperm(64, generator=gen)]
            assert ot_cost.sum() <= (x0 - shuffled).pow(2).sum()
    sink = FlowMatching(coupling="ot", ot_solver="sinkhorn", sinkhorn_reg=0.01)
    torch.manual_seed(0)
    paired = sink.pair(x0, x1)
    assert (x0 - paired).pow(2).sum() < 0.8 * (x0 - x1).pow(2).sum()


def test_sinkhorn_plan_has_uniform_marginals() -> None:
    cost = torch.rand(5, 5)
    plan = sinkhorn_plan(cost, reg=0.5, iterations=200)
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 0.2), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((5,), 0.2), atol=1e-4, rtol=0)


def test_ot_coupling_pairs_within_each_class() -> None:
    prior = ClassGaussian((2,), num_classes=3)
    with torch.no_grad():  # far-apart class means, so a sample's class is its nearest mean
        prior.loc.copy_(torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]]))
        prior.scale.fill_(0.1)
    model = _model(prior=prior)
    model.prior.initialized.fill_(True)
    obj = FlowMatching(coupling="ot")
    calls = []
    pair = obj.pair

    def recording(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        calls.append((x0, x1))
        return pair(x0, x1)

    obj.pair = recording  # type: ignore[method-assign]
    labels = torch.tensor([0, 1, 2] * 8)
    x = torch.randn(24, 2) + 100.0 * labels[:, None]  # data: the class is its x coordinate / 100
    obj.loss(model, Batch(x, labels), 0)
    assert len(calls) == 3
    means = prior.loc.detach()
    for x0, x1 in calls:
        data_class = torch.round(x0[:, 0] / 100.0).unique()
        sample_class = torch.cdist(x1, means).argmin(1).unique()
        assert data_class.numel() == 1 and sample_class.numel() == 1
        assert int(data_class) == int(sample_class)


def test_a_transform_without_a_vector_field_is_a_clear_config_error() -> None:
    model = Flow(RealNVP((2,), num_layers=2, hidden=8, num_hidden=1), StandardGaussian((2,)), Identity((2,)))
    with pytest.raises(
        ConfigError,
        match=r"flow-matching needs a transform with a vector field, "
        r"e\.g\. cnf; 'realnvp' has none",
    ):
        FlowMatching().setup(model)


def test_the_vector_field_is_found_through_wrappers() -> None:
    cnf = CNF((2,), hidden=8, num_hidden=1)
    assert find_vector_field(CompiledTraining(cnf)) is cnf
    assert find_vector_field(RealNVP((2,), num_layers=2, hidden=8, num_hidden=1)) is None
    model = _model()
    model.transform = CompiledTraining(model.transform)
    out = FlowMatching().loss(model, Batch(torch.randn(8, 2)), 0)
    assert out.total is not None and torch.isfinite(out.total)


def test_time_horizon_scales_the_target_velocity() -> None:
    """With T = 2 the straight path is walked at half the speed: the optimal field at a point
    whose pair is known (one pair, σ = 0) is (x1 − x0) / T."""
    model = _model(time_horizon=2.0)
    obj = FlowMatching()
    x0 = torch.tensor([[1.0, 2.0]])
    torch.manual_seed(5)
    x1 = model.prior.sample(1)
    torch.manual_seed(5)
    out = obj.loss(model, Batch(x0), 0)  # a fresh cnf's velocity is 0: loss = ‖u‖² / D
    torch.testing.assert_close(
        torch.tensor(out.terms["loss"]), ((x1 - x0) / 2.0).pow(2).mean(), rtol=1e-5, atol=0
    )


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sigma must be at least 0, got -1\.0"):
        FlowMatching(sigma=-1.0)
    with pytest.raises(ConfigError, match=r"sinkhorn_reg must be greater than 0, got 0\.0"):
        FlowMatching(sinkhorn_reg=0.0)
    with pytest.raises(ConfigError, match="sinkhorn_iterations must be at least 1, got 0"):
        registry.objectives.build("flow-matching", {"sinkhorn_iterations": 0})
    with pytest.raises(ConfigError, match="coupling"):
        registry.objectives.build("flow-matching", {"coupling": "optimal"})


def test_command_line_choice_recommends_a_batch_size() -> None:
    cfg = flowkit.load_config(None, transform="cnf", objective="flow-matching", data="moons")
    assert cfg["train"]["batch_size"] == 256
    for preset in ("cnf-fm-moons", "cnf-fm-checkerboard"):
        cfg = flowkit.load_config(preset)
        assert cfg["objective"] == {
            "name": "flow-matching",
            "coupling": "ot",
            "sigma": 0.0,
            "ot_solver": "exact",
            "sinkhorn_reg": 0.05,
            "sinkhorn_iterations": 100,
        }
        assert cfg["transform"]["name"] == "cnf"


def test_a_short_training_run_evaluates_the_exact_likelihood(tmp_path) -> None:
    cfg = flowkit.load_config(
        "cnf-fm-moons",
        [
            "train.steps=30",
            "train.batch_size=64",
            "train.threads=1",
            "train.eval_every=0",
            "train.sample_every=0",
            "train.checkpoint_every=0",
            "transform.hidden=16",
            "transform.num_hidden=1",
            "eval.final_max_examples=200",
            "eval.n_samples=64",
        ],
    )
    summary = flowkit.train(cfg, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["status"] == "completed"
    assert 0.0 < summary["test_nll"] < 10.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert logged and all({"pair_sqdist", "match_ms"} <= r.keys() for r in logged)
