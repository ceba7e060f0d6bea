"""The adversarial-latent objective (GRN, CelebA recipe) and its spectrally normalised critic."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import flowkit
from flowkit import registry
from flowkit.checkpoint import load_checkpoint
from flowkit.composition import Flatten, Sequential
from flowkit.data.preprocess import Identity
from flowkit.errors import ConfigError, ShapeError
from flowkit.model import Flow
from flowkit.objective import Batch
from flowkit.plugins.objectives.adversarial import (
    AdversarialLatent,
    critic_loss,
    generator_adversarial_loss,
)
from flowkit.plugins.objectives.critic import ConcatReLU, LatentCritic
from flowkit.plugins.priors.gaussian import StandardGaussian
from flowkit.plugins.priors.restricted import RestrictedGaussian
from flowkit.runs import list_checkpoints
from flowkit.trainer import resume

# -- helpers ---------------------------------------------------------------------------------------


def identity_flow(k: int = 4, selected: list[int] | None = None) -> Flow:
    """A flow whose latent is the flattened data: ``z = x.flatten(1)`` (8 features)."""
    prior = RestrictedGaussian((8,), num_selected=k)
    if selected is not None:  # pick the selected dims through the prior's own data init
        z, base = torch.zeros(64, 8), torch.randn(64)
        for rank, i in enumerate(selected):
            z[:, i] = base * (10.0 - rank)  # stds 10, 9, 8, ...: selected in this order
        prior.initialize(z)
    return Flow(Flatten((1, 2, 4)), prior, Identity((1, 2, 4)))


def small_flow() -> Flow:
    """A tiny trainable flow (additive coupling) on 1×2×4 data with a restricted prior."""
    coupling = registry.transforms.build("additive-coupling", {"hidden": 8}, injected={"event_shape": (8,)})
    prior = RestrictedGaussian((8,), num_selected=3)
    flow = Flow(Sequential([Flatten((1, 2, 4)), coupling]), prior, Identity((1, 2, 4)))
    flow.initialize(torch.rand(64, 1, 2, 4))
    return flow


def objective(**params: object) -> AdversarialLatent:
    return registry.objectives.build(
        "adversarial", {"critic_samples": 16, "critic_hidden": [8, 16], **params}
    )


def critic_params(obj: AdversarialLatent) -> list[Tensor]:
    assert obj.critic is not None
    return [p.detach().clone() for p in obj.critic.parameters()]


def changed(before: list[Tensor], obj: AdversarialLatent) -> bool:
    assert obj.critic is not None
    return any(not torch.equal(a, b) for a, b in zip(before, obj.critic.parameters()))


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    """Register the objective and the restricted prior at runtime (editable install not refreshed)."""
    registry.objectives.register("adversarial", AdversarialLatent)
    registry.priors.register("restricted", RestrictedGaussian)
    yield
    registry.objectives.unregister("adversarial")
    registry.priors.unregister("restricted")


# -- the critic --------------------------------------------------------------------------------


def test_concat_relu_keeps_both_signs() -> None:
    h = torch.tensor([[1.5, -2.0, 0.0]])
    assert torch.equal(ConcatReLU()(h), torch.tensor([[1.5, 0.0, 0.0, 0.0, -2.0, 0.0]]))


def test_critic_architecture_is_spectrally_normalised() -> None:
    critic = LatentCritic(5)
    linears = [m for m in critic.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 200), (400, 400), (400, 1)]
    assert all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in linears)
    for m in linears:  # power iteration converges to σ(W/σ) = 1
        for _ in range(50):
            critic(torch.randn(4, 5))
        assert torch.linalg.matrix_norm(m.weight.detach(), ord=2) == pytest.approx(1.0, abs=0.02)
    assert critic(torch.randn(7, 5)).shape == (7,)
    with pytest.raises(ShapeError, match=r"\(batch, 5\)"):
        critic(torch.randn(7, 4))


# -- the losses on hand-made values --------------------------------------------------------------

D_DATA = torch.tensor([2.0, 0.5, -1.0])
D_PRIOR = torch.tensor([-2.0, 0.0, 1.0])


def test_hinge_losses() -> None:
    # relu(1 − D(z)) = [0, .5, 2], relu(1 + D(s)) = [0, 1, 2]
    assert float(critic_loss(D_DATA, D_PRIOR, "hinge")) == pytest.approx(2.5 / 3 + 1.0)
    assert float(generator_adversarial_loss(D_DATA, "hinge")) == pytest.approx(0.5)


def test_non_saturating_losses() -> None:
    def sp(v: float) -> float:
        return math.log1p(math.exp(v))

    expected = sum(sp(-d) for d in D_DATA.tolist()) / 3 + sum(sp(d) for d in D_PRIOR.tolist()) / 3
    assert float(critic_loss(D_DATA, D_PRIOR, "non-saturating")) == pytest.approx(expected)
    d = D_DATA.clone().requires_grad_(True)
    g = generator_adversarial_loss(d, "non-saturating")
    assert float(g.detach()) == pytest.approx(sum(sp(v) for v in D_DATA.tolist()) / 3)
    g.backward()
    # the encoder lowers D(z) (towards "prior sample"), most strongly where the critic is surest
    assert torch.allclose(d.grad, torch.sigmoid(D_DATA) / 3)
    assert d.grad[0] > d.grad[1] > d.grad[2] > 0
    # the critic, in turn, raises D on encodings and lowers it on prior samples
    dz, ds = D_DATA.clone().requires_grad_(True), D_PRIOR.clone().requires_grad_(True)
    critic_loss(dz, ds, "non-saturating").backward()
    assert (dz.grad < 0).all() and (ds.grad > 0).all()


# -- set-up and validation -------------------------------------------------------------------------


def test_needs_the_restricted_prior() -> None:
    flow = Flow(Flatten((1, 2, 4)), StandardGaussian((8,)), Identity((1, 2, 4)))
    with pytest.raises(ConfigError, match='set \\[prior\\] name = "restricted"'):
        objective().setup(flow)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"critic_steps": 0}, "critic_steps"),
        ({"adversary_start": -1}, "adversary_start"),
        ({"critic_samples": 0}, "critic_samples"),
        ({"phase2_clamp": 0.0}, "phase2_clamp"),
        ({"critic_betas": [0.0, 1.0]}, "critic_betas"),
        ({"loss": "wasserstein"}, "hinge"),
        ({"schedule": "random"}, "alternate"),
    ],
)
def test_bad_parameters(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        objective(**params)


def test_critic_follows_model_dtype() -> None:
    flow = identity_flow().double()
    obj = objective()
    obj.setup(flow)
    x = torch.rand(5, 1, 2, 4, dtype=torch.float64)
    terms = obj.auxiliary_update(flow, Batch(x), 0)
    assert math.isfinite(terms["critic_loss"])
    out = obj.loss(flow, Batch(x), 1)
    assert out.total is not None and out.total.dtype == torch.float64


# -- the schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "critic_steps, start, critic_at",
    [
        (1, 3, {3, 5, 7, 9}),  # phase 1 on 0-2, then critic on even (step − start)
        (2, 0, {0, 1, 3, 4, 6, 7, 9}),  # two critic steps per generator step
    ],
)
def test_schedule(critic_steps: int, start: int, critic_at: set[int]) -> None:
    torch.manual_seed(0)
    flow = small_flow()
    obj = objective(adversary_start=start, critic_steps=critic_steps)
    obj.setup(flow)
    batch = Batch(torch.rand(16, 1, 2, 4))
    for step in range(10):
        for p in flow.parameters():
            p.grad = None
        before = critic_params(obj)
        aux = obj.auxiliary_update(flow, batch, step)
        # the critic step leaves no gradient in the model
        assert all(p.grad is None for p in flow.parameters())
        out = obj.loss(flow, batch, step)
        phase = 1 if step < start else 2
        assert out.terms["phase"] == phase
        if step in critic_at:
            assert changed(before, obj), step
            assert out.total is None and "critic_loss" in aux
        else:
            assert not changed(before, obj) and aux == {}
            assert out.total is not None
            assert ("g_adv" in out.terms) == (phase == 2) and "recon" in out.terms
            out.total.backward()
            assert all(p.grad is not None for p in flow.parameters())
            assert not changed(before, obj)  # the generator step never moves the critic
        assert obj.phase(step) == phase and obj.is_critic_step(step) == (step in critic_at)


def test_critic_sees_only_the_selected_dims(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    selected = [6, 1, 3]
    flow = identity_flow(k=3, selected=selected)
    assert flow.prior.selected.tolist() == selected
    obj = objective(critic_samples=11)
    obj.setup(flow)
    assert obj.critic is not None and obj.critic.num_inputs == 3
    seen: list[Tensor] = []
    forward = obj.critic.forward

    def spy(u: Tensor) -> Tensor:
        seen.append(u.detach().clone())
        return forward(u)

    monkeypatch.setattr(obj.critic, "forward", spy)
    x = torch.randn(5, 1, 2, 4)
    obj.auxiliary_update(flow, Batch(x), 0)  # critic step: encodings, then prior samples
    obj.loss(flow, Batch(x), 1)  # generator step: encodings
    assert [tuple(u.shape) for u in seen] == [(5, 3), (11, 3), (5, 3)]
    assert torch.equal(seen[0], x.flatten(1)[:, selected])
    assert torch.equal(seen[2], x.flatten(1)[:, selected])
    assert seen[1].std() > 0.3  # N(0, 1) prior samples on the selected dims


# -- the generator's terms -------------------------------------------------------------------------


def test_clamp_penalty_zero_in_bounds_positive_outside() -> None:
    flow = identity_flow(k=3, selected=[6, 1, 3])
    obj = objective(adversary_start=0)
    obj.setup(flow)
    x = torch.zeros(4, 8)
    x[:, [6, 1, 3]] = torch.tensor([19.0, -5.0, 0.5])  # within ±20 on the kept dims, 0 elsewhere
    out = obj.loss(flow, Batch(x.view(4, 1, 2, 4)), 1)
    assert out.terms["oob"] == 0.0 and out.terms["recon"] == 0.0
    x_out = x.clone()
    x_out[0, 0] = 3.0  # a non-selected dim off 0
    x_out[1, 6] = 23.0  # a kept dim beyond 20σ
    out = obj.loss(flow, Batch(x_out.view(4, 1, 2, 4)), 1)
    assert out.terms["oob"] == pytest.approx((9.0 + 9.0) / 32)
    assert out.terms["recon"] == pytest.approx((3.0 + 3.0) / 32)
    assert out.total is not None
    assert float(out.total.detach()) == pytest.approx(
        10 * out.terms["recon"] + 10 * out.terms["oob"] + out.terms["g_adv"], rel=1e-5
    )
    # phase 1 clamps at 200σ: the kept dim at 23 passes, only the non-selected dim is lost
    obj1 = objective(adversary_start=5)
    obj1.setup(flow)
    out1 = obj1.loss(flow, Batch(x_out.view(4, 1, 2, 4)), 0)
    assert out1.terms["recon"] == pytest.approx(3.0 / 32)
    assert out1.total is not None and float(out1.total.detach()) == pytest.approx(10 * 3.0 / 32)


# -- state ---------------------------------------------------------------------------------------


def test_critic_optimizer_state_round_trip() -> None:
    torch.manual_seed(0)
    flow = identity_flow(k=3, selected=[6, 1, 3])
    a = objective(critic_lr=3e-3)
    a.setup(flow)
    x = torch.randn(6, 1, 2, 4)
    for step in (0, 2, 4):
        a.auxiliary_update(flow, Batch(x), step)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    b = objective(critic_lr=3e-3)
    b.setup(flow)
    b.load_state_dict(state)
    assert a.critic_optimizer is not None and b.critic_optimizer is not None
    sa, sb = a.critic_optimizer.state_dict(), b.critic_optimizer.state_dict()
    assert sb["param_groups"][0]["lr"] == 3e-3
    assert sb["param_groups"][0]["betas"] == (0.0, 0.9)
    assert sa["state"].keys() == sb["state"].keys() and len(sa["state"]) > 0
    for i, moments in sa["state"].items():
        for key, value in moments.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][i][key])), key
    # both continue identically (same critic weights, spectral-norm vectors and Adam moments)
    for obj in (a, b):
        torch.manual_seed(1)
        obj.auxiliary_update(flow, Batch(x), 6)
    assert all(torch.equal(p, q) for p, q in zip(a.critic.parameters(), b.critic.parameters()))
    # an in-memory round trip copies the moments: stepping the copy leaves the original alone
    c = objective(critic_lr=3e-3)
    c.setup(flow)
    c.load_state_dict(a.state_dict())
    exp_avg = a.critic_optimizer.state_dict()["state"][0]["exp_avg"].clone()
    c.auxiliary_update(flow, Batch(x), 8)
    assert c.critic_optimizer.state_dict()["state"][0]["step"] == 5
    assert a.critic_optimizer.state_dict()["state"][0]["step"] == 4
    assert torch.equal(a.critic_optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)


def test_extra_state_before_setup_is_applied_by_setup() -> None:
    flow = identity_flow(k=3)
    a = objective()
    a.setup(flow)
    a.auxiliary_update(flow, Batch(torch.randn(4, 1, 2, 4)), 0)
    b = objective()
    b.set_extra_state(a.get_extra_state())
    b.setup(flow)
    assert b.critic_optimizer is not None
    assert b.critic_optimizer.state_dict()["state"][0]["step"] == 1


# -- end to end with the real trainer ---------------------------------------------------------


def test_trains_both_phases_on_digits(tmp_path: Path) -> None:
    cfg = flowkit.load_config(
        None,
        [
            "train.steps=12",
            "objective.adversary_start=4",
            "transform.hidden=8",
            "transform.num_blocks=1",
            "prior.num_selected=8",
            "train.log_every=1",
            "train.batch_size=32",
            "objective.critic_samples=32",
            "eval.n_samples=4",
            "eval.final_max_examples=64",
        ],
        data="digits",
        objective="adversarial",
        prior="restricted",
    )
    summary = flowkit.train(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "completed" and summary["steps"] == 12
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "kind" not in r}
    assert sorted(train) == list(range(1, 13))
    # record "step" counts completed steps: steps 0-3 are phase 1, then critic/generator
    for done, r in train.items():
        step = done - 1
        if step < 4:
            assert r["phase"] == 1 and "recon" in r and "critic_loss" not in r
        elif (step - 4) % 2 == 0:
            assert r["phase"] == 2 and "critic_loss" in r and "grad_norm" not in r
        else:
            assert r["phase"] == 2 and {"recon", "oob", "g_adv", "grad_norm"} <= r.keys()
    # the critic and its optimiser are checkpointed with the run
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert any(k.startswith("critic.") for k in state["objective"])
    assert state["objective"]["_extra_state"]["critic_optimizer"]["state"]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    overrides = [
        "objective.adversary_start=2",
        "transform.hidden=8",
        "transform.num_blocks=1",
        "prior.num_selected=8",
        "train.batch_size=32",
        "objective.critic_samples=32",
        "eval.n_samples=4",
        "eval.final_max_examples=32",
    ]

    def config(steps: int) -> dict:
        return flowkit.load_config(
            None,
            [f"train.steps={steps}", *overrides],
            data="digits",
            objective="adversarial",
            prior="restricted",
        )

    flowkit.train(config(9), tmp_path / "straight", progress=False)
    flowkit.train(config(5), tmp_path / "resumed", progress=False)
    resume(tmp_path / "resumed", config(9), progress=False, log=lambda _: None)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / name)[-1]) for name in ("straight", "resumed"))
    assert a["step"] == b["step"] == 9
    for part in ("model", "objective"):
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), (part, key)
    moments_a = a["objective"]["_extra_state"]["critic_optimizer"]["state"]
    moments_b = b["objective"]["_extra_state"]["critic_optimizer"]["state"]
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)
