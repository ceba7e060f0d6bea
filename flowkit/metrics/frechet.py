"""The Fréchet distance between model samples and test data, in a self-trained feature space.

For two Gaussians ``N(μ₁, Σ₁)`` and ``N(μ₂, Σ₂)`` fitted to two sets of features,

    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

(Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS, eq. 6; the Fréchet / 2-Wasserstein distance of two Gaussians, Dowson &
Landau 1982). This is *not* FID: the features are not Inception's but the 128-d penultimate
layer of flowkit's own :class:`~flowkit.metrics.classifier.SmallCNN`, trained deterministically
per dataset (:func:`~flowkit.metrics.classifier.train_classifier`), so values compare across
models on one dataset and flowkit version, not with published FIDs.

Feature spaces (:func:`frechet_space`):

* labelled image data → the classifier's features (its test accuracy is reported with the value);
* non-image data of at most :data:`MAX_DATA_SPACE_DIM` dimensions (e.g. the 2-D toys) → the data
  space itself (the flattened examples);
* anything else (unlabelled images, very wide tabular data) → not computed: :func:`frechet_distance`
  raises :class:`~flowkit.errors.ConfigError` with the reason, which :func:`frechet_skip_reason`
  returns beforehand.

The estimate is biased upwards for small ``n`` (about ``Tr Σ / n`` per set), so compare models at
equal ``n``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError, ShapeError
from flowkit.metrics.classifier import SmallCNN, train_classifier
from flowkit.metrics.sampling import draw_samples, reference_batch
from flowkit.model import Flow

__all__ = [
    "MAX_DATA_SPACE_DIM",
    "frechet_distance",
    "frechet_distance_features",
    "frechet_distance_gaussians",
    "frechet_skip_reason",
    "frechet_space",
]

#: Non-image data up to this many dimensions gets a data-space Fréchet distance.
MAX_DATA_SPACE_DIM = 256


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off
    eigenvalues clipped to 0)."""
    sym = 0.5 * (matrix + matrix.T)
    eigval, eigvec = np.linalg.eigh(sym)
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((Σ₁ Σ₂)^{1/2})`` for symmetric PSD ``Σ₁``, ``Σ₂``, without a non-symmetric sqrtm.

    ``Σ₁Σ₂`` is similar to the symmetric PSD ``M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}``
    (``Σ₁^{-1/2} M Σ₁^{1/2} = Σ₁Σ₂`` when ``Σ₁`` is invertible; by continuity otherwise), so the
    eigenvalues of ``Σ₁Σ₂`` are the real, non-negative eigenvalues ``λ_i`` of ``M`` and the trace of
    its principal square root is ``Σ_i √λ_i``. ``M`` is symmetrised and its round-off negative
    eigenvalues clipped to 0, so the result is real by construction (no imaginary-part check as
    with ``scipy.linalg.sqrtm`` is needed).
    """
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigval = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sqrt(np.clip(eigval, 0.0, None)).sum())


def frechet_distance_gaussians(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})`` for two Gaussians (Heusel et al. 2017, eq. 6).

    Means of shape ``(d,)``, covariances ``(d, d)`` symmetric PSD; computed in float64 with
    :func:`trace_sqrt_product`. Clamped at 0 against round-off (the exact value is ≥ 0).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ShapeError(
            f"frechet_distance_gaussians expects means (d,) and covariances (d, d); got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def _moments(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.detach().to("cpu", torch.float64).reshape(features.shape[0], -1).numpy()
    if x.shape[0] < 2:
        raise ShapeError(f"a Fréchet distance needs at least 2 examples per set, got {x.shape[0]}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_features(f1: Tensor, f2: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n₁, d)`` and ``(n₂, d)``.

    Sample means and unbiased covariances (``1/(n−1)``), then :func:`frechet_distance_gaussians`.
    NaN when a feature is not finite.
    """
    if f1.shape[1:] != f2.shape[1:]:
        raise ShapeError(f"feature sets differ in shape: {tuple(f1.shape)} vs {tuple(f2.shape)}")
    if not (torch.isfinite(f1).all() and torch.isfinite(f2).all()):
        return math.nan
    mu1, sigma1 = _moments(f1)
    mu2, sigma2 = _moments(f2)
    return frechet_distance_gaussians(mu1, sigma1, mu2, sigma2)


def frechet_space(data: DataSplits) -> Literal["classifier", "data"] | None:
    """The feature space :func:`frechet_distance` uses for ``data`` (``None``: not computed)."""
    if data.is_image:
        return "classifier" if data.train_labels is not None and data.num_classes else None
    return "data" if data.dim <= MAX_DATA_SPACE_DIM else None


def frechet_skip_reason(data: DataSplits) -> str | None:
    """Why :func:`frechet_distance` cannot be computed for ``data``, or ``None`` when it can."""
    if frechet_space(data) is not None:
        return None
    if data.is_image:
        return (
            f"'{data.name}' has no labels, so flowkit cannot train its feature classifier "
            f"for a Fréchet distance"
        )
    return (
        f"'{data.name}' has {data.dim} dimensions; a data-space Fréchet distance is computed "
        f"only up to {MAX_DATA_SPACE_DIM}"
    )


@torch.no_grad()
def _features(net: SmallCNN, x: Tensor, batch_size: int) -> Tensor:
    device = next(net.parameters()).device
    return torch.cat([net.features(chunk.to(device, torch.float32)).cpu() for chunk in x.split(batch_size)])


def reference_and_samples(
    model: Flow, data: DataSplits, n: int, seed: int, temperature: float, batch_size: int, what: str
) -> tuple[Literal["classifier", "data"], Tensor, Tensor | None, Tensor]:
    """``(space, reference, labels, samples)``: the draw every feature-space sample metric scores.

    ``space`` is :func:`frechet_space`'s; ``reference`` ``min(n, N_test)`` test examples and
    ``labels`` their labels or contexts (:func:`~flowkit.metrics.sampling.reference_batch`),
    ``samples`` as many model samples at ``temperature`` (on the CPU), all drawn from ``seed``.
    Raises :class:`ConfigError` naming ``what`` (the metric) when the data has no feature space.
    """
    space = frechet_space(data)
    if space is None:
        raise ConfigError(f"no {what}: {frechet_skip_reason(data)}")
    reference, labels = reference_batch(data, n, seed)
    m = reference.shape[0]
    samples = draw_samples(model, m, labels, seed=seed, temperature=temperature, batch_size=batch_size).cpu()
    return space, reference, labels, samples


def classifier_features(
    model: Flow, data: DataSplits, steps: int, batch_size: int, *batches: Tensor
) -> tuple[SmallCNN, float, list[Tensor]]:
    """``(net, accuracy, features)``: flowkit's classifier for ``data`` (trained with ``steps``
    steps, cached; on the model's device), its test accuracy, and its 128-d features of each of
    ``batches`` (on the CPU)."""
    net, accuracy = train_classifier(data, steps=steps)
    net = net.to(model.device).eval()
    return net, float(accuracy), [_features(net, x, batch_size) for x in batches]


def frechet_distance(
    model: Flow,
    data: DataSplits,
    *,
    n: int = 2000,
    seed: int = 0,
    temperature: float = 1.0,
    classifier_steps: int = 1500,
    batch_size: int = 500,
) -> dict[str, float]:
    """Fréchet distance between ``n`` model samples and ``n`` test examples (see module docs).

    The test subset, its dequantization and the samples are drawn from ``seed`` exactly as in
    :func:`~flowkit.metrics.sample_quality.sample_quality` (class-conditional models sample with
    the subset's labels). Returns ``fd`` and ``fd_examples``; in the classifier feature space also
    ``fd_classifier_accuracy``, the test accuracy of the (cached, deterministic) classifier
    trained with ``classifier_steps`` steps. Raises :class:`ConfigError` when
    :func:`frechet_skip_reason` gives a reason.
    """
    space, reference, _, samples = reference_and_samples(
        model, data, n, seed, temperature, batch_size, "Fréchet distance"
    )
    out: dict[str, float] = {}
    if space == "classifier":
        _, accuracy, (sample_feats, reference_feats) = classifier_features(
            model, data, classifier_steps, batch_size, samples, reference
        )
        out["fd_classifier_accuracy"] = accuracy
    else:
        sample_feats, reference_feats = samples.flatten(1), reference.flatten(1)
    out["fd"] = frechet_distance_features(sample_feats, reference_feats)
    out["fd_examples"] = float(reference.shape[0])
    return out
