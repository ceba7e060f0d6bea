"""Sample-quality, Fréchet, reconstruction and cost metrics: correctness against closed forms.

No assertion depends on timing; throughput and memory are only checked to be positive and finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import flowkit
from flowkit import registry
from flowkit.builder import build_model
from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError
from flowkit.metrics import (
    format_mean_spread,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_gaussians,
    frechet_skip_reason,
    mean_spread,
    parameter_count,
    peak_memory,
    reconstruction_error,
    sample_quality,
    saved_activation_bytes,
    sinkhorn_distance,
    sliced_wasserstein,
    throughput,
)
from flowkit.metrics.sample_quality import random_directions
from flowkit.metrics.sampling import draw_samples, reference_batch
from flowkit.model import Flow


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return registry.datasets.build("digits", {}, injected={"seed": 0, "data_dir": None})


@pytest.fixture
def digits_model(digits) -> Flow:
    cfg = flowkit.load_config("realnvp-digits", ["transform.hidden=8", "transform.num_blocks=2"])
    model = build_model(cfg, digits.meta)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


class Replay(torch.nn.Module):
    """A fake class-conditional model: its sample of class ``c`` is a random training image of
    class ``c`` (dequantized); ``collapse`` makes every sample class 0, ``context=None`` too."""

    def __init__(self, data: DataSplits, collapse: bool = False) -> None:
        super().__init__()
        self.data = data
        self.collapse = collapse
        self.num_classes = data.num_classes
        self.device = torch.device("cpu")

    def sample(self, n: int, context: torch.Tensor | None = None, temperature: float = 1.0):
        labels = torch.zeros(n, dtype=torch.long) if context is None or self.collapse else context
        out = torch.empty(n, *self.data.shape)
        for c in labels.unique().tolist():
            pool = self.data.train[self.data.train_labels == c]
            where = labels == c
            out[where] = pool[torch.randint(0, pool.shape[0], (int(where.sum()),))]
        return out + torch.rand(out.shape) / self.data.levels


# -- sliced Wasserstein and Sinkhorn ------------------------------------------------------------
def test_sliced_wasserstein_is_zero_on_itself_and_exact_for_a_shift():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    assert sliced_wasserstein(a, a, n_projections=64, seed=3) == pytest.approx(0.0, abs=1e-12)
    # a shift by v moves every 1-D projection by θ·v, so SW_2² = mean_l (θ_l·v)² exactly
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    theta = random_directions(5, 64, seed=3)
    expected = math.sqrt(float(np.mean((theta.T @ v.numpy()) ** 2)))
    assert sliced_wasserstein(a + v, a, n_projections=64, seed=3) == pytest.approx(expected, rel=1e-9)
    # grows with the shift, deterministic given the seed, images are flattened
    values = [sliced_wasserstein(a + s * v, a, n_projections=64, seed=3) for s in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]
    img = torch.rand(50, 1, 4, 4, generator=gen)
    assert sliced_wasserstein(img + 0.1, img, seed=1) == sliced_wasserstein(img + 0.1, img, seed=1)
    assert math.isnan(sliced_wasserstein(a * math.inf, a, n_projections=8))


def test_sinkhorn_distance_is_zero_on_itself_and_close_to_w2_for_a_shift():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(200, 3, generator=gen, dtype=torch.float64) * 0.3
    assert sinkhorn_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # W_2 between a cloud and its translate by v is ‖v‖ (the identity plan is optimal)
    v = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    assert sinkhorn_distance(a + v, a, blur=0.01) == pytest.approx(float(v.norm()), rel=0.02)
    small, large = sinkhorn_distance(a + 0.5 * v, a), sinkhorn_distance(a + v, a)
    assert 0.0 < small < large
    with pytest.raises(ConfigError, match="blur"):
        sinkhorn_distance(a, a, blur=0.0)


# -- Fréchet distance -----------------------------------------------------------------------------
def _random_spd(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def test_frechet_closed_forms():
    d = 6
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(d, 1), _random_spd(d, 2)
    assert frechet_distance_gaussians(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # commuting covariances Q diag(a) Qᵀ, Q diag(b) Qᵀ: ‖Δμ‖² + Σ (√a − √b)²
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    value = frechet_distance_gaussians(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert value == pytest.approx(expected, rel=1e-9)
    # general case against scipy's sqrtm of the (non-symmetric) product, as in Heusel et al. eq. 6
    root = scipy.linalg.sqrtm(s1 @ s2)
    general = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * np.real(root)))
    assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(general, rel=1e-8)
    # singular covariance: Σ₁ = 0 leaves ‖Δμ‖² + Tr Σ₂
    zero = np.zeros((d, d))
    assert frechet_distance_gaussians(mu1, zero, mu2, s2) == pytest.approx(
        float(np.sum((mu1 - mu2) ** 2) + np.trace(s2)), rel=1e-9
    )
    # 1-D: N(0, 1) vs N(m, s²) → m² + (1 − s)²
    assert frechet_distance_gaussians(
        np.zeros(1), np.eye(1), np.full(1, 0.5), np.full((1, 1), 4.0)
    ) == pytest.approx(0.25 + 1.0)


def test_frechet_of_feature_sets_approaches_the_population_value():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(20000, 2, generator=gen, dtype=torch.float64)
    g = torch.randn(20000, 2, generator=gen, dtype=torch.float64) * 2.0 + torch.tensor(
        [1.0, 0.0], dtype=torch.float64
    )
    # ‖(1, 0)‖² + 2 (1 − 2)² = 3
    assert frechet_distance_features(f, g) == pytest.approx(3.0, rel=0.05)
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-9)


def test_frechet_in_classifier_space_sees_labels_and_collapse(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    good = frechet_distance(Replay(digits), digits, n=270, seed=0, classifier_steps=300)
    assert set(good) == {"fd", "fd_classifier_accuracy", "fd_examples"}
    assert good["fd_classifier_accuracy"] > 0.9 and good["fd_examples"] == 270.0
    collapsed = frechet_distance(Replay(digits, collapse=True), digits, n=270, seed=0, classifier_steps=300)
    assert collapsed["fd_classifier_accuracy"] == good["fd_classifier_accuracy"]  # cached net
    assert 0.0 <= good["fd"] < 0.2 * collapsed["fd"]
    again = frechet_distance(Replay(digits), digits, n=270, seed=0, classifier_steps=300)
    assert again == good  # deterministic given the seed


def test_frechet_data_space_for_toys_and_a_reason_otherwise():
    toy = registry.datasets.build("moons", {}, injected={"seed": 0, "data_dir": None})
    assert frechet_skip_reason(toy) is None
    unlabelled = DataSplits("blank", torch.rand(10, 1, 4, 4), torch.rand(10, 1, 4, 4), levels=256)
    assert "labels" in frechet_skip_reason(unlabelled)
    with pytest.raises(ConfigError, match="labels"):
        frechet_distance(Replay(toy), unlabelled)


# -- sampling plumbing and sample_quality ---------------------------------------------------------
def test_samples_follow_the_test_labels_and_leave_the_callers_rng_alone(digits):
    x, labels = reference_batch(digits, 100, seed=4)
    assert x.shape == (100, 1, 8, 8) and labels.shape == (100,)
    assert torch.equal(reference_batch(digits, 100, seed=4)[0], x)
    state = torch.random.get_rng_state()
    samples = draw_samples(Replay(digits), 100, labels, seed=4, batch_size=30)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(samples, draw_samples(Replay(digits), 100, labels, seed=4, batch_size=30))
    # each sample is a training image of its requested class (up to the dequantization noise)
    floor = (samples * digits.levels).floor() / digits.levels
    for s, c in zip(floor[:20], labels[:20].tolist()):
        pool = digits.train[digits.train_labels == c]
        assert torch.isclose(pool, s, atol=1e-6).flatten(1).all(1).any()


def test_sample_quality_of_a_flow(digits, digits_model):
    out = sample_quality(digits_model, digits, n=120, seed=0, n_projections=50)
    assert set(out) == {"sw_distance", "sinkhorn_distance", "samples_nonfinite_share", "sq_examples"}
    assert all(math.isfinite(v) for v in out.values()) and out["sw_distance"] > 0
    assert sample_quality(digits_model, digits, n=120, seed=0, n_projections=50) == out
    replay = sample_quality(Replay(digits), digits, n=120, seed=0, n_projections=50)
    assert replay["sinkhorn_distance"] < out["sinkhorn_distance"]


# -- reconstruction ------------------------------------------------------------------------------
def test_reconstruction_error_is_round_off_in_float64(digits, digits_model):
    model = digits_model.double()
    out = reconstruction_error(model, digits, max_examples=100, batch_size=40)
    assert set(out) == {"recon_mean_abs", "recon_max_abs"}
    assert 0.0 <= out["recon_mean_abs"] <= out["recon_max_abs"] < 1e-10


def test_reconstruction_error_measures_a_broken_inverse(digits, digits_model, monkeypatch):
    model = digits_model.double()

    def off_by(z, context=None):
        return Flow.decode(model, z, context) + 0.25

    monkeypatch.setattr(model, "decode", off_by)
    out = reconstruction_error(model, digits, max_examples=50)
    assert out["recon_mean_abs"] == pytest.approx(0.25, rel=1e-6)
    assert out["recon_max_abs"] == pytest.approx(0.25, rel=1e-6)


# -- cost ----------------------------------------------------------------------------------------
def test_throughput_memory_and_parameter_count_are_positive_and_finite(digits, digits_model):
    speed = throughput(digits_model, digits, batch_size=32, repeats=2)
    assert set(speed) == {"density_samples_per_s", "sampling_samples_per_s"}
    assert all(math.isfinite(v) and v > 0 for v in speed.values())
    memory = peak_memory("cpu")
    assert set(memory) == {"peak_rss_mib"} and 0 < memory["peak_rss_mib"] < math.inf
    assert parameter_count(digits_model) == sum(p.numel() for p in digits_model.parameters()) > 0


def test_saved_activation_bytes_counts_storages_once_and_can_ignore_weights():
    x = torch.randn(100, 50, requires_grad=True)
    assert saved_activation_bytes(lambda: x.exp().sum()) == 100 * 50 * 4  # exp saves its result
    assert saved_activation_bytes(lambda: (x * x).sum()) == 100 * 50 * 4  # x saved twice, one storage
    layer = torch.nn.Linear(50, 10)
    inputs = torch.randn(100, 50, requires_grad=True)  # so the weight is saved for its gradient
    with_weights = saved_activation_bytes(lambda: layer(inputs).sum())
    activations = saved_activation_bytes(lambda: layer(inputs).sum(), ignore=layer.parameters())
    assert activations == 100 * 50 * 4 and with_weights == activations + 50 * 10 * 4

    def no_grad_step() -> None:
        with torch.no_grad():
            x.exp().sum()

    assert saved_activation_bytes(no_grad_step) == 0


# -- aggregation ---------------------------------------------------------------------------------
def test_mean_spread_and_format():
    assert mean_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert mean_spread([1.5, None]) == (1.5, 0.0, 1)
    mean, std, n = mean_spread([])
    assert math.isnan(mean) and math.isnan(std) and n == 0
    assert math.isnan(mean_spread([1.0, math.nan])[0])
    assert format_mean_spread([1.2335, 1.2345]) == "1.234 ± 0.001"
    assert format_mean_spread([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert format_mean_spread([0.5]) == "0.500"
    assert format_mean_spread([]) == "n/a"
    assert format_mean_spread([123456.0, 123458.0]) == "1.23e+05 ± 1.41e+00"
