"""Real-valued context: the Python API, ``flow(c)`` as a distribution, embeddings, errors."""

from __future__ import annotations

import math

import pytest
import torch

from flowkit import flows
from flowkit.builder import build_model
from flowkit.data.base import DataMeta
from flowkit.distribution import FlowDistribution
from flowkit.errors import ConfigError, ShapeError

CONDITIONAL_BUILDERS = [flows.MAF, flows.IAF, flows.RealNVP, flows.NICE, flows.GIN]


def perturbed(flow: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Trained-like weights: every parameter moved (conditioners start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("maker", CONDITIONAL_BUILDERS, ids=lambda m: m.__name__)
def test_flow_of_context_is_a_distribution(maker) -> None:
    torch.manual_seed(0)
    flow = perturbed(maker(features=4, context=3, transforms=2, hidden=8))
    c, x = torch.randn(5, 3), torch.randn(5, 4)
    dist = flow(c)
    assert isinstance(dist, torch.distributions.Distribution)
    assert isinstance(dist, FlowDistribution)
    assert dist.batch_shape == (5,) and dist.event_shape == (4,)
    assert dist.log_prob(x).shape == (5,)
    assert dist.log_prob(torch.randn(7, 5, 4)).shape == (7, 5)
    samples, log_p = dist.rsample_and_log_prob((6,))
    assert samples.shape == (6, 5, 4) and log_p.shape == (6, 5)
    # the one-pass density of a sample is the density the forward direction gives
    torch.testing.assert_close(log_p, dist.log_prob(samples), atol=1e-4, rtol=1e-4)
    assert dist.sample().shape == (5, 4)
    one = flow(torch.tensor([0.3, 1.2, -0.5]))
    assert one.batch_shape == () and one.sample((10,)).shape == (10, 4)
    assert one.log_prob(torch.randn(10, 4)).shape == (10,)
    # the density depends on the context
    assert not torch.allclose(dist.log_prob(x), flow(c + 1.0).log_prob(x))


def test_rsample_is_reparameterised_and_sample_is_not() -> None:
    flow = perturbed(flows.MAF(features=3, context=2, transforms=2, hidden=8))
    c = torch.randn(4, 2, requires_grad=True)
    flow(c).rsample((2,)).square().sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)
    assert not flow(c).sample((2,)).requires_grad


def test_log_prob_matches_autograd_change_of_variables_in_float64() -> None:
    """log p(x|c) = log N(f(x; c)) + log|det ∂f/∂x|, with the Jacobian from autograd."""
    flow = perturbed(flows.RealNVP(features=3, context=2, transforms=3, hidden=8)).double()
    x, c = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    for i in range(3):

        def f(v, i=i):
            return flow.encode(v.unsqueeze(0), c[i : i + 1])[0][0]

        jac = torch.autograd.functional.jacobian(f, x[i])
        z = f(x[i])
        expected = -0.5 * (z.square().sum() + 3 * math.log(2 * math.pi)) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(flow(c[i : i + 1]).log_prob(x[i : i + 1])[0], expected)


def test_state_dict_round_trip_and_device_dtype() -> None:
    flow = perturbed(flows.MAF(features=4, context=2, transforms=2, hidden=8))
    again = flows.build("maf", 4, 2, **{k: v for k, v in flow.config["transform"].items() if k != "name"})
    again.load_state_dict(flow.state_dict())
    c, x = torch.randn(6, 2), torch.randn(6, 4)
    torch.testing.assert_close(flow(c).log_prob(x), again(c).log_prob(x))
    flow64 = flow.to(torch.float64)
    assert flow64(c.double()).log_prob(x.double()).dtype == torch.float64
    assert flow64(c.double()).sample((3,)).dtype == torch.float64


def test_a_conditional_flow_learns_a_conditional_gaussian() -> None:
    """x | c ~ N(A c, 0.25 I): a short fit reaches the true conditional NLL."""
    torch.manual_seed(0)
    a = torch.tensor([[1.0, -0.5], [0.3, 2.0]])
    c = torch.randn(4000, 2)
    x = c @ a.T + 0.5 * torch.randn(4000, 2)
    flow = flows.MAF(features=2, context=2, transforms=2, hidden=32)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(400):
        idx = torch.randint(0, 4000, (256,))
        loss = -flow(c[idx]).log_prob(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    c_test = torch.randn(2000, 2)
    x_test = c_test @ a.T + 0.5 * torch.randn(2000, 2)
    with torch.no_grad():
        nll = -float(flow(c_test).log_prob(x_test).mean())
    true_nll = 2 * (math.log(0.5) + 0.5 * math.log(2 * math.pi) + 0.5)
    assert nll < true_nll + 0.08, (nll, true_nll)
    # samples at one context have the right mean
    with torch.no_grad():
        s = flow(torch.tensor([1.0, -1.0])).sample((4000,))
    torch.testing.assert_close(s.mean(0), a @ torch.tensor([1.0, -1.0]), atol=0.1, rtol=0)


# -- embeddings -----------------------------------------------------------------------------------
def test_mlp_embedding_and_conditional_prior() -> None:
    flow = perturbed(
        flows.MAF(
            features=3,
            context=5,
            transforms=2,
            hidden=8,
            embedding={"name": "mlp", "features": 4, "hidden": 8},
            prior="conditional-gaussian",
        )
    )
    assert flow.embedding.features == 4
    c, x = torch.randn(4, 5), torch.randn(4, 3)
    s, log_p = flow(c).rsample_and_log_prob()
    torch.testing.assert_close(log_p, flow(c).log_prob(s), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(
        flow.prior.log_prob(x, flow.embed_context(c)), flow.prior.log_prob(x, flow.embed_context(c + 1))
    )


def test_deepset_embedding_is_permutation_invariant_and_takes_any_set_size() -> None:
    flow = perturbed(
        flows.MAF(
            features=2,
            context=(10, 3),
            transforms=2,
            hidden=8,
            embedding={"name": "deepset", "features": 4, "hidden": 8},
        )
    )
    sets, x = torch.randn(4, 10, 3), torch.randn(4, 2)
    shuffled = sets[:, torch.randperm(10)]
    torch.testing.assert_close(flow(sets).log_prob(x), flow(shuffled).log_prob(x))
    assert flow(torch.randn(4, 25, 3)).log_prob(x).shape == (4,)
    assert flow(torch.randn(10, 3)).sample((5,)).shape == (5, 2)


def test_conv_embedding_reads_image_contexts() -> None:
    flow = perturbed(
        flows.RealNVP(
            features=4,
            context=(1, 8, 8),
            transforms=2,
            hidden=8,
            embedding={"name": "conv", "features": 4, "hidden": 4},
        )
    )
    images, x = torch.rand(3, 1, 8, 8), torch.randn(3, 4)
    assert flow(images).log_prob(x).shape == (3,)
    assert flow(images[0]).sample((7,)).shape == (7, 4)
    with pytest.raises(ShapeError, match="image contexts"):
        flows.MAF(features=4, context=5, embedding="conv")


# -- mistakes get clear errors --------------------------------------------------------------------
@pytest.fixture(scope="module")
def maf() -> torch.nn.Module:
    return flows.MAF(features=3, context=2, transforms=2, hidden=8)


def test_context_errors(maf) -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ShapeError, match=r"conditional on a real-valued context"):
        maf.log_prob(x)
    with pytest.raises(ShapeError, match=r"shape \(batch, 2\).*got shape \(4, 3\)"):
        maf.log_prob(x, torch.randn(4, 3))
    with pytest.raises(ShapeError, match="class labels"):
        maf.log_prob(x, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="batch size 5 but the data has 4"):
        maf.log_prob(x, torch.randn(5, 2))
    with pytest.raises(ShapeError, match=r"\(\*batch, 2\)"):
        maf(torch.randn(4, 3))
    with pytest.raises(ShapeError, match=r"\(\*sample, 4, 3\)"):
        maf(torch.randn(4, 2)).log_prob(torch.randn(3, 3))
    with pytest.raises(ShapeError, match="conditional on a real-valued context: pass"):
        maf.sample(3)


def test_float_context_to_an_unconditional_model_is_refused() -> None:
    flow = flows.MAF(features=3, transforms=2, hidden=8)
    assert flow().batch_shape == () and flow().sample((4,)).shape == (4, 3)
    with pytest.raises(ShapeError, match="has no real-valued context"):
        flow.log_prob(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ShapeError, match="has no real-valued context"):
        flow(torch.randn(4, 2))


def test_labels_where_a_vector_is_expected_and_vice_versa() -> None:
    from flowkit.context import ContextSpec

    vector, labels = ContextSpec("vector", 2), ContextSpec("labels", 3)
    like = torch.zeros(4, 5)
    with pytest.raises(ShapeError, match="Give the context as floats"):
        vector.features(torch.zeros(4, dtype=torch.long), like, "T")
    with pytest.raises(ShapeError, match="class labels"):
        labels.features(torch.randn(4, 2), like, "T")
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        labels.features(torch.tensor([0, 1, 2, 3]), like, "T")
    assert labels.features(torch.tensor([0, 1, 2, 0]), like, "T").shape == (4, 3)


def _config(transform: str, **params) -> dict:
    from flowkit.config import load_config

    sets = [f"transform.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]
    return load_config(None, sets, transform=transform, data="moons")


def test_a_transform_that_cannot_take_context_says_so_at_build_time() -> None:
    meta = DataMeta(shape=(2,), context_shape=(3,))
    with pytest.raises(ConfigError, match="'planar' cannot take a context"):
        build_model(_config("planar"), meta)
    with pytest.raises(ConfigError, match="conditional=false would ignore"):
        build_model(_config("maf", conditional=False), meta)
    with pytest.raises(ConfigError, match="needs a real-valued context"):
        build_model(_config("maf") | {"prior": {"name": "conditional-gaussian"}}, DataMeta(shape=(2,)))


def test_the_config_path_builds_the_same_flow_as_python() -> None:
    from flowkit.config import load_config

    config = load_config(
        None, ["transform.num_layers=2", "transform.hidden=8"], transform="maf", data="moons"
    )
    by_config = build_model(config, DataMeta(shape=(2,), context_shape=(3,)))
    by_python = flows.MAF(features=2, context=3, transforms=2, hidden=8)
    assert type(by_config) is type(by_python)
    assert by_config.state_dict().keys() == by_python.state_dict().keys()
    by_python.load_state_dict(by_config.state_dict())
    c, x = torch.randn(4, 3), torch.randn(4, 2)
    torch.testing.assert_close(by_config(c).log_prob(x), by_python(c).log_prob(x))


@pytest.mark.parametrize(
    "name",
    [
        "revnet-block",
        "glow-coupling",
        "affine-coupling",
        "additive-coupling",
        "nflows-maf",
        "nflows-rq-coupling",
    ],
)
def test_blocks_take_a_real_valued_context(name: str) -> None:
    pytest.importorskip("nflows") if name.startswith("nflows") else None
    flow = perturbed(flows.build(name, 4, 2))
    c, x = torch.randn(3, 2), torch.randn(3, 4)
    z, _ = flow.encode(x, c)
    torch.testing.assert_close(flow.decode(z, c), x, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(flow(c).log_prob(x), flow(c + 1).log_prob(x))


@pytest.mark.parametrize(
    "name, shape, params",
    [
        ("revnet", (4, 8, 8), {"widths": [4, 4]}),
        ("realnvp", (2, 8, 8), {"hidden": 4, "num_blocks": 1}),
        ("glow", (2, 8, 8), {"hidden": 8, "num_steps": 2, "num_levels": 2}),
    ],
)
def test_memory_free_backprop_gives_autograd_gradients_with_a_context(name, shape, params) -> None:
    """Reconstructing blocks pass the real-valued context to their conditioners too."""
    import copy

    from flowkit.execution.invertible_backprop import enable_invertible_backprop

    torch.manual_seed(0)
    flow = perturbed(flows.build(name, shape, 3, **params)).double()
    flow.train()
    wrapped = copy.deepcopy(flow)
    assert enable_invertible_backprop(wrapped, log=lambda _: None) == []
    x, c = torch.randn(4, *shape, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for model in (flow, wrapped):
        model.zero_grad()
        model.log_prob(x, c).sum().backward()
    for (n, p), q in zip(flow.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


def test_a_run_on_two_columns_with_a_context_ends_with_its_figure(tmp_path) -> None:
    """`flowkit run` on 2-D data with a context: the density panel is drawn at a test context."""
    import numpy as np

    import flowkit

    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 1))
    table = np.concatenate(
        [c, np.sin(2 * c) + 0.1 * rng.normal(size=(300, 1)), rng.normal(size=(300, 1))], axis=1
    )
    np.savetxt(tmp_path / "t.csv", table, delimiter=",")
    config = flowkit.load_config(
        None,
        [
            f"data.path={tmp_path / 't.csv'}",
            "data.context_columns=[0]",
            "train.steps=6",
            "train.log_every=3",
            "transform.num_layers=2",
            "transform.hidden=8",
        ],
        transform="maf",
        data="table",
    )
    summary = flowkit.train(config, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["status"] == "completed" and math.isfinite(summary["test_nll"])
    assert summary["figures"] == ["samples.png"]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000


def test_label_conditional_couplings_with_an_unconditional_prior_sample_every_class(tmp_path) -> None:
    """Sampling cycles through the classes when only the transform reads labels (it raised)."""
    import flowkit

    config = flowkit.load_config(
        None,
        [
            "train.steps=2",
            "transform.num_scales=1",
            "transform.hidden=4",
            "transform.num_blocks=1",
            "transform.conditional=true",
        ],
        data="digits",
    )
    summary = flowkit.train(config, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["status"] == "completed"
    from flowkit.runs import load_run

    run = load_run(tmp_path / "run")
    assert run.model.default_context(12).tolist() == [*range(10), 0, 1]
    assert run.model.sample(12).shape == (12, 1, 8, 8)
