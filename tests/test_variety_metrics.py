"""Precision/recall, density/coverage, the one-draw sample metrics and the summary headline.

The variety metrics are checked on cases with known answers: samples from the data's own
distribution (high precision and recall, density ≈ 1, coverage ≈ 1 − 2^−k), one repeated sample
(precision high, recall and coverage near 0) and noise (all low) — on Gaussian clouds and in the
feature space of flowkit's own digits classifier.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowkit import registry
from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError
from flowkit.metrics import (
    density_coverage,
    density_verdict,
    frechet_distance,
    per_class_variety,
    precision_recall,
    sample_metrics,
    summary_headline,
    variety_scores,
)
from flowkit.metrics.variety import knn_radii


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return registry.datasets.build("digits", {}, injected={"seed": 0, "data_dir": None})


class Replay(torch.nn.Module):
    """A fake class-conditional model. ``mode``: ``"data"`` — a random training image of the
    requested class (dequantized); ``"one"`` — the same training image of the class every time;
    ``"noise"`` — uniform noise images."""

    def __init__(self, data: DataSplits, mode: str = "data") -> None:
        super().__init__()
        self.data = data
        self.mode = mode
        self.num_classes = data.num_classes
        self.class_conditional = True
        self.device = torch.device("cpu")

    def sample(self, n: int, context: torch.Tensor | None = None, temperature: float = 1.0):
        labels = torch.zeros(n, dtype=torch.long) if context is None else context
        if self.mode == "noise":
            return torch.rand(n, *self.data.shape)
        out = torch.empty(n, *self.data.shape)
        for c in labels.unique().tolist():
            pool = self.data.train[self.data.train_labels == c]
            where = labels == c
            idx = (
                torch.zeros(int(where.sum()), dtype=torch.long)
                if self.mode == "one"
                else torch.randint(0, pool.shape[0], (int(where.sum()),))
            )
            out[where] = pool[idx]
        if self.mode == "one":
            return out + 0.5 / self.data.levels  # identical copies: one point per class
        return out + torch.rand(out.shape) / self.data.levels


# -- k-NN radii and the four scores on point clouds ---------------------------------------------
def test_knn_radii_on_a_line_and_with_duplicates():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    dup = torch.zeros(5, 3)
    assert knn_radii(dup, 3).tolist() == [0.0] * 5
    with pytest.raises(ConfigError, match="more than k"):
        knn_radii(x, 4)


def test_hand_computed_precision_recall_density_coverage():
    # real points 0, 1, 2, 10 on a line; k = 1 radii: 1, 1, 1, 8
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [30.0]])
    # fake 0.5 ∈ B(0,1), B(1,1); 5.0 ∈ B(10, 8); 30 in none → precision 2/3, density (2+1+0)/3
    # fake radii (k = 1): 4.5, 4.5, 25 → real 0, 1, 2 ∈ B(0.5, 4.5), 10 ∈ B(5, 4.5)? no (5 > 4.5),
    # but 10 ∈ B(30, 25) → recall 4/4; coverage: balls of 0, 1 and 10 hit, B(2, 1) not (0.5 is
    # 1.5 away) → 3/4
    pr = precision_recall(real, fake, k=1)
    dc = density_coverage(real, fake, k=1)
    assert pr == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(1.0)}
    assert dc == {"density": pytest.approx(1.0), "coverage": pytest.approx(0.75)}


def _cloud(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_same_distribution_scores_high_and_density_is_about_one():
    real, fake = _cloud(2000, 8, 0), _cloud(2000, 8, 1)
    out = variety_scores(real, fake)
    assert out["precision"] > 0.8 and out["recall"] > 0.8
    assert out["density"] == pytest.approx(1.0, abs=0.1)
    # E[coverage] = 1 − 1/2^5 ≈ 0.97 for identical distributions (Naeem et al. 2020)
    assert out["coverage"] == pytest.approx(1 - 2**-5, abs=0.03)


def test_one_repeated_sample_has_precision_but_no_recall():
    real = _cloud(1000, 8, 0)
    fake = real[:1].repeat(1000, 1)  # a realistic sample, drawn 1000 times
    out = variety_scores(real, fake)
    assert out["precision"] == 1.0
    assert out["recall"] <= 2 / 1000  # only the repeated point itself (and exact ties)
    assert out["coverage"] <= 10 / 1000
    assert out["density"] > 0.0


def test_noise_scores_low_and_shrinking_the_samples_costs_recall_only():
    real = _cloud(1000, 8, 0)
    noise = _cloud(1000, 8, 1) * 0.2 + 6.0  # far from the data
    out = variety_scores(real, noise)
    assert out["precision"] < 0.05 and out["recall"] < 0.05
    assert out["density"] < 0.05 and out["coverage"] < 0.05
    # samples concentrated near the mode: still on the data (precision), but they reach only the
    # centre of it (recall, coverage drop)
    shrunk = variety_scores(real, _cloud(1000, 8, 2) * 0.3)
    full = variety_scores(real, _cloud(1000, 8, 2))
    assert shrunk["precision"] > 0.95
    assert shrunk["recall"] < 0.5 * full["recall"] and shrunk["coverage"] < 0.6 * full["coverage"]
    assert math.isnan(precision_recall(real, noise * math.inf)["precision"])


def test_per_class_variety_sees_collapse_within_classes():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(200)
    centres = torch.randn(4, 6, generator=gen) * 10.0
    real = centres[labels] + torch.randn(800, 6, generator=gen)
    varied = centres[labels] + torch.randn(800, 6, generator=gen)
    one_each = centres[labels] + 0.1  # right class, one point per class
    good = per_class_variety(real, labels, varied, labels)
    bad = per_class_variety(real, labels, one_each, labels)
    assert good["variety_classes"] == bad["variety_classes"] == 4.0
    assert good["class_recall"] > 0.8 and good["class_recall_min"] > 0.7
    assert bad["class_precision"] == 1.0 and bad["class_recall"] < 0.01
    # a class with too few points is left out, not scored on nonsense radii
    few = per_class_variety(real[:203], labels[:203], varied[:203], labels[:203])
    assert few["variety_classes"] == 1.0


# -- sample_metrics in flowkit's own classifier's features -------------------------------------
@pytest.mark.slow
def test_sample_metrics_in_classifier_space(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    kw = {"n": 270, "seed": 0, "classifier_steps": 300}
    held_out = sample_metrics(Replay(digits, "data"), digits, **kw)
    one = sample_metrics(Replay(digits, "one"), digits, **kw)
    noise = sample_metrics(Replay(digits, "noise"), digits, **kw)
    assert held_out["fd_classifier_accuracy"] > 0.9 and held_out["sample_examples"] == 270.0
    # data-like samples: high precision and recall, right classes
    assert held_out["precision"] > 0.75 and held_out["recall"] > 0.75
    assert held_out["class_recall"] > 0.6 and held_out["sample_accuracy"] > 0.9
    # one sample per class: realistic and of the right class, but no variety
    assert one["precision"] > 0.7 and one["sample_accuracy"] > 0.9
    assert one["class_recall"] < 0.1 and one["recall"] < 0.15
    # one point lies in about k = 5 of the ~27 test balls of its class
    assert one["class_coverage"] < 0.3 < held_out["class_coverage"] - 0.3
    # noise: neither
    # (noise images share one feature region inside one class's manifold, and 270 test points
    # give wide k-NN balls in 128-d: the global precision of noise is ~0.3, per class ~0.1)
    assert noise["precision"] < 0.4 and noise["class_precision"] < 0.2
    assert noise["recall"] < 0.2 and noise["class_recall"] < 0.25 and noise["sample_accuracy"] < 0.5
    assert noise["density"] < 0.3 and noise["coverage"] < 0.3
    assert held_out["fd"] < one["fd"] < noise["fd"]
    # the same draw as frechet_distance: identical Fréchet distance
    assert held_out["fd"] == pytest.approx(frechet_distance(Replay(digits), digits, **kw)["fd"])
    assert sample_metrics(Replay(digits, "data"), digits, **kw) == held_out  # deterministic


def test_sample_metrics_in_data_space_for_toys():
    toy = registry.datasets.build("moons", {}, injected={"seed": 0, "data_dir": None})

    class Toy(torch.nn.Module):
        num_classes = None
        device = torch.device("cpu")

        def sample(self, n, context=None, temperature=1.0):
            return toy.train[torch.randint(0, toy.train.shape[0], (n,))]

    out = sample_metrics(Toy(), toy, n=500)
    assert set(out) == {"precision", "recall", "density", "coverage", "fd", "sample_examples"}
    assert out["precision"] > 0.8 and out["recall"] > 0.8
    unlabelled = DataSplits("blank", torch.rand(10, 1, 4, 4), torch.rand(10, 1, 4, 4), levels=256)
    with pytest.raises(ConfigError, match="labels"):
        sample_metrics(Toy(), unlabelled)


# -- the summary headline -----------------------------------------------------------------------
GRN = {
    "objective": "ot",
    "prior": "class-gaussian",
    "test_bpd": 129233.7,
    "exact_density": True,
    "latent_collapsed_share": 0.625,
    "latent_sigma_max": 0.056,
    "sample_accuracy": 0.98,
    "precision": 0.91,
    "recall": 0.12,
    "density": 1.3,
    "coverage": 0.2,
    "fd": 40.0,
    "sample_examples": 270.0,
    "fd_classifier_accuracy": 0.96,
    "class_precision": 0.9,
    "class_recall": 0.05,
    "class_recall_min": 0.0,
    "class_coverage": 0.1,
}


def test_headline_of_a_collapsed_ot_run_leads_with_samples():
    lines = summary_headline(GRN)
    assert lines[0].startswith("samples (270 vs test data, in the features of flowkit")
    assert "class accuracy 0.980" in lines[0] and "recall 0.120" in lines[0]
    assert "Fréchet 40.000" in lines[0]
    assert lines[1].startswith("within each class") and "recall 0.050" in lines[1]
    why = [line for line in lines if "bits/dim" in line]
    assert len(why) == 1 and "not a meaningful density" in why[0] and "62%" in why[0]
    assert "129,233.7" in why[0]  # shown once, as what it is
    assert not any(line.startswith("test bits/dim 1") for line in lines)  # no bpd headline
    assert density_verdict(GRN)[0] is False


def test_headline_of_a_likelihood_run_leads_with_bits_per_dim():
    mle = {
        "objective": "mle",
        "prior": "gaussian",
        "test_bpd": 1.234,
        "exact_density": True,
        "latent_collapsed_share": 0.1,
        "latent_sigma_max": 1.0,
    }
    assert summary_headline(mle)[0] == "test bits/dim 1.234"
    assert density_verdict(mle) == (True, "")
    # sample metrics follow when present; padded models get the caveat
    lines = summary_headline(
        mle | {k: GRN[k] for k in ("precision", "recall", "fd")} | {"exact_density": False}
    )
    assert lines[0].startswith("test bits/dim 1.234 (latent density at the zero-padded image")
    assert lines[1].startswith("samples (vs test data)")
    # a weighted sum with a likelihood term is a likelihood model; OT without collapse keeps bpd
    assert density_verdict(GRN | {"objective": "mle + 0.1 * ot"})[0] is True
    healthy = GRN | {"latent_collapsed_share": 0.0, "test_bpd": 697.0}
    assert density_verdict(healthy)[0] is True
    # an OT model without collapse still leads with its samples; its bpd follow, marked
    lines = summary_headline(healthy)
    assert lines[0].startswith("samples (") and lines[2].startswith("test bits/dim 697.0 (an exact")


def test_headline_of_the_restricted_prior_and_of_adversarial_training():
    adv = {"objective": "adversarial", "prior": "restricted", "test_bpd": 50.0}
    ok, why = density_verdict(adv)
    assert not ok and "surrogate" in why
    assert summary_headline(adv) == [why]
