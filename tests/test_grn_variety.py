"""Why minibatch OT collapses the GRN prior's σ, and the debiased loss that does not.

With ``n`` encodings matched to ``n`` samples in ``d`` dimensions, the expected minibatch transport
cost ``E[W_n(Z, σE)]`` is minimised by a σ well below the encodings' own spread when ``n`` is
small against the resolution ``d`` needs (docs/grn.md, "Why the OT samples collapsed"): the plain
loss pulls σ down even when the prior already matches the encodings. Subtracting the
self-transport of independent batches (``debias``) removes that pull.
"""

from __future__ import annotations

import pytest
import torch

from flowkit.data.preprocess import Identity
from flowkit.model import Flow
from flowkit.objective import Batch
from flowkit.plugins.objectives.ot import OptimalTransport
from flowkit.plugins.priors.class_gaussian import ClassGaussian


def _identity_flow(d: int, classes: int = 1) -> Flow:
    prior = ClassGaussian((d,), classes)
    return Flow(Identity((d,)), prior, Identity((d,)), num_classes=classes)


def _scale_gradient(debias: str, d: int = 16, n: int = 64, draws: int = 8) -> float:
    """Mean ``∂L/∂σ`` (summed over dimensions) when encodings and prior are both N(0, I)."""
    torch.manual_seed(0)
    model = _identity_flow(d)
    total = 0.0
    objective = OptimalTransport(solver="lsa", smoothness_weight=0.0, debias=debias)
    for _ in range(draws):
        model.prior.scale.grad = None
        x = torch.randn(n, d)
        out = objective.loss(model, Batch(x, torch.zeros(n, dtype=torch.long)), 0)
        out.total.backward()
        total += float(model.prior.scale.grad.sum())
    return total / draws


def test_plain_minibatch_ot_pulls_a_correct_sigma_down_and_the_debiased_loss_does_not():
    plain = _scale_gradient("none")
    prior_side = _scale_gradient("prior")
    full = _scale_gradient("full")
    # gradient descent moves σ by −lr·grad: a clearly positive gradient shrinks a σ that is right
    # (measured: plain ≈ 2.0, prior ≈ 0.02, full ≈ 0.006)
    assert plain > 1.0
    assert abs(prior_side) < 0.1 * plain and abs(full) < 0.1 * plain


def test_debiased_values_are_cross_minus_self_transport(monkeypatch):
    model = _identity_flow(3, classes=2)
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    model.initialize(x, y)
    calls: list[tuple[int, int]] = []
    objective = OptimalTransport(solver="lsa", smoothness_weight=0.0, debias="prior")
    original = objective.transport_cost

    def spy(a, b):
        calls.append((a.shape[0], b.shape[0]))
        return original(a, b)

    monkeypatch.setattr(objective, "transport_cost", spy)
    torch.manual_seed(1)
    out = objective.loss(model, Batch(x, y), 0)
    # per class: W(Z, S) and W(S, S') of 5 points each
    assert calls == [(5, 5), (5, 5)] * 2
    assert out.terms["ot_self"] > 0 and out.terms["ot"] == pytest.approx(out.terms["loss"], rel=1e-6)
    calls.clear()
    objective.debias = "full"
    objective.loss(model, Batch(x, y), 0)
    # per class: two halves of 2 (5 // 2): W(Za, Sa), W(Zb, Sb), W(Za, Zb), W(Sa, Sb)
    assert calls == [(2, 2)] * 8


def test_more_prior_samples_than_encodings_use_the_unbalanced_exact_plan():
    model = _identity_flow(2)
    x = torch.randn(6, 2)
    out = OptimalTransport(solver="auto", smoothness_weight=0.0, prior_samples=3).loss(
        model, Batch(x, torch.zeros(6, dtype=torch.long)), 0
    )
    assert out.total is not None and torch.isfinite(out.total)


def test_frozen_scale_is_not_trained():
    prior = ClassGaussian((4,), 2, learn_scale=False)
    assert not prior.scale.requires_grad and prior.loc.requires_grad
    prior.initialize(torch.randn(10, 4), torch.arange(10) % 2)
    assert prior.scale.min() > 0


def test_the_ot_objective_puts_sample_metrics_into_the_summary(monkeypatch):
    from flowkit import metrics, registry

    digits = registry.datasets.build("digits", {}, injected={"seed": 0, "data_dir": None})
    toy_unlabelled_images = type(digits)(
        "blank", torch.rand(10, 1, 4, 4), torch.rand(10, 1, 4, 4), levels=256
    )
    calls = []
    monkeypatch.setattr(
        metrics, "sample_metrics", lambda model, data, *, n, seed: calls.append((n, seed)) or {"recall": 0.5}
    )
    model = _identity_flow(3)
    assert OptimalTransport().evaluate(model, digits, 0) == {"recall": 0.5}
    assert OptimalTransport(eval_samples=300).evaluate(model, digits, 100) == {"recall": 0.5}
    assert calls == [(2000, 0), (100, 0)]
    assert OptimalTransport(eval_samples=0).evaluate(model, digits, 0) == {}
    assert OptimalTransport().evaluate(model, toy_unlabelled_images, 0) == {}  # no feature space
    assert len(calls) == 2
