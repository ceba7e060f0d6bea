"""The Python API mirrors the CLI: config → model → log_prob / sample / encode / decode."""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
from flowkit.builder import build_model
from flowkit.data import DataMeta
from flowkit.errors import ShapeError


@pytest.fixture
def digits_model():
    cfg = flowkit.load_config("realnvp-digits", ["transform.hidden=4", "transform.num_blocks=1"])
    model = build_model(cfg, DataMeta((1, 8, 8), levels=17, num_classes=10, default_preprocess="logit"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_encode_decode_round_trip(digits_model):
    x = torch.rand(5, 1, 8, 8) * 0.9 + 0.05
    z, logdet = digits_model.encode(x)
    assert z.shape == (5, 64) and logdet.shape == (5,)
    assert torch.allclose(digits_model.decode(z), x, atol=1e-4)


def test_log_prob_is_prior_plus_logdets(digits_model):
    x = torch.rand(4, 1, 8, 8) * 0.9 + 0.05
    z, logdet = digits_model.encode(x)
    expected = digits_model.prior.log_prob(z) + logdet
    assert torch.allclose(digits_model.log_prob(x), expected)


def test_log_prob_matches_autograd_jacobian_in_float64(digits_model):
    """The full model density (logit preprocessing included) by brute-force change of variables."""
    model = digits_model.double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05
    for xi in x:

        def f(v, model=model):
            return model.encode(v.reshape(1, 1, 8, 8))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        _, logabsdet = torch.linalg.slogdet(jac)
        z = f(xi.reshape(-1)).reshape(1, -1)
        expected = model.prior.log_prob(z) + logabsdet
        assert torch.allclose(model.log_prob(xi.unsqueeze(0)), expected, atol=1e-6)


def test_bits_per_dim_formula(digits_model):
    x = torch.rand(3, 1, 8, 8) * 0.9 + 0.05
    bpd = digits_model.bits_per_dim(x)
    expected = (-digits_model.log_prob(x) / 64 + math.log(17)) / math.log(2)
    assert torch.allclose(bpd, expected)


def test_sample_shape_and_range(digits_model):
    with torch.no_grad():
        x = digits_model.sample(6)
    assert x.shape == (6, 1, 8, 8)
    assert float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6


def test_wrong_shape_names_expected_and_actual(digits_model):
    with pytest.raises(ShapeError, match=r"\(batch, 1, 8, 8\).*\(5, 64\)"):
        digits_model.log_prob(torch.rand(5, 64))


def test_float64_and_state_dict_round_trip(digits_model):
    cfg = flowkit.load_config("realnvp-digits", ["transform.hidden=4", "transform.num_blocks=1"])
    meta = DataMeta((1, 8, 8), levels=17, num_classes=10, default_preprocess="logit")
    other = build_model(cfg, meta)
    other.load_state_dict(digits_model.state_dict())
    x = torch.rand(3, 1, 8, 8) * 0.9 + 0.05
    assert torch.equal(other.log_prob(x), digits_model.log_prob(x))
    assert other.double().log_prob(x.double()).dtype == torch.float64


def test_train_and_load_run_api(tmp_path):
    cfg = flowkit.load_config(
        "realnvp-moons", ["train.steps=5", "data.n_train=256", "data.n_test=128", "transform.num_layers=2"]
    )
    summary = flowkit.train(cfg, tmp_path / "run", progress=False)
    run = flowkit.load_run(summary["run_dir"])
    assert run.step == 5
    x = run.load_data().test[:8]
    assert run.model.log_prob(x).shape == (8,)
    assert run.model.sample(3).shape == (3, 2)
