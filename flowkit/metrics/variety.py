"""Quality and variety of samples as separate numbers: precision/recall and density/coverage.

A single distance between samples and data (Fréchet, Wasserstein) mixes two failures: samples
that look wrong (low *fidelity*) and samples that are right but too few kinds (low *variety*, e.g.
every sample of a class the same image). The metrics here separate them by estimating the data and
the sample manifolds with k-nearest-neighbour balls, in a feature space where distances mean
something (flowkit's own classifier's penultimate features for labelled images, the data itself
for low-dimensional tabular sets; see :func:`~flowkit.metrics.frechet.frechet_space`).

Notation: real features ``X = {x_1..x_N}`` (test data), fake features ``Y = {y_1..y_M}``
(model samples), ``NND_k(u; S)`` the distance from ``u ∈ S`` to its k-th nearest *other* point of
``S``, and ``B(u, r)`` the closed ball of radius ``r`` around ``u``. The manifold estimate of a set
is the union of its points' k-NN balls, ``manifold(S) = ∪_{u ∈ S} B(u, NND_k(u; S))``.

**Improved precision and recall** (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved
Precision and Recall Metric for Assessing Generative Models", NeurIPS, eq. 1–2; default ``k = 3``)::

    precision = (1/M) Σ_j 1[y_j ∈ manifold(X)]     share of samples that land on the data
    recall    = (1/N) Σ_i 1[x_i ∈ manifold(Y)]     share of data the samples reach

**Density and coverage** (Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models", ICML, eq. 3–4; default ``k = 5``), which use only the real balls
(robust to outlying samples, whose large balls inflate recall)::

    density  = 1/(k·M) Σ_j Σ_i 1[y_j ∈ B(x_i, NND_k(x_i; X))]     ≈ 1 when Y ~ X (can exceed 1)
    coverage = (1/N) Σ_i 1[∃ j: y_j ∈ B(x_i, NND_k(x_i; X))]

For identical distributions and ``N = M → ∞``, ``E[density] = 1`` and
``E[coverage] = 1 − 1/2^k`` (0.97 for ``k = 5``; Naeem et al., §4). A model that draws one
image over and over has precision ≈ 1 (if the image is realistic) but recall ≈ 0 (the k-NN balls of
identical samples have radius 0) and coverage ≈ k/N.

For class-conditional models :func:`sample_metrics` also computes the four per class (samples
drawn with label ``c`` against test examples of class ``c``) and reports their means
(``class_precision`` …): a model whose samples of each class are one image has near-zero
``class_recall`` even if the classes differ from each other. All values depend on ``k``, the
feature space and the number of points, so compare models at equal settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError, ShapeError
from flowkit.metrics.frechet import classifier_features, frechet_distance_features, reference_and_samples
from flowkit.model import Flow

__all__ = [
    "density_coverage",
    "knn_radii",
    "per_class_variety",
    "precision_recall",
    "sample_metrics",
    "variety_scores",
]

#: Rows of a pairwise-distance block computed at once (bounds memory at ``CHUNK × N`` doubles).
CHUNK = 1024


def _flat(x: Tensor, name: str) -> Tensor:
    if x.dim() < 1 or x.shape[0] < 1:
        raise ShapeError(f"{name}: expected a non-empty set of points (n, ...), got {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)


def _finite_pair(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor] | None:
    """``real`` and ``fake`` as float64 point sets ``(n, D)`` of one dimension ``D``; ``None`` when
    a point is not finite (the scores are then NaN)."""
    x, y = _flat(real, "real"), _flat(fake, "fake")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"real and fake points differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return None
    return x, y


def _blocks(a: Tensor, b: Tensor) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, ‖a[rows] − b‖)`` blocks of the pairwise Euclidean distance matrix."""
    for start in range(0, a.shape[0], CHUNK):
        rows = slice(start, min(start + CHUNK, a.shape[0]))
        yield rows, torch.cdist(a[rows], b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: Tensor, k: int) -> Tensor:
    """``NND_k(x_i; X)``: distance from each point to its k-th nearest *other* point, ``(n,)``.

    Duplicated points are each other's neighbours at distance 0 (so ``k`` copies of one point
    have radius 0). Needs ``n > k``.
    """
    pts = _flat(x, "knn_radii")
    if k < 1 or pts.shape[0] <= k:
        raise ConfigError(f"k-NN radii with k={k} need more than k points, got {pts.shape[0]}")
    out = torch.empty(pts.shape[0], dtype=torch.float64)
    for rows, dist in _blocks(pts, pts):
        # the k+1 smallest include the point itself (distance 0) once
        out[rows] = dist.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _in_manifold(queries: Tensor, points: Tensor, radii: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``queries`` against the balls ``B(points_i, radii_i)``: per query, whether it is in any
    ball and in how many; per ball, whether any query is in it."""
    inside_any = torch.zeros(queries.shape[0], dtype=torch.bool)
    count = torch.zeros(queries.shape[0], dtype=torch.float64)
    ball_hit = torch.zeros(points.shape[0], dtype=torch.bool)
    for rows, dist in _blocks(queries, points):
        inside = dist <= radii.unsqueeze(0)
        inside_any[rows] = inside.any(1)
        count[rows] = inside.sum(1, dtype=torch.float64)
        ball_hit |= inside.any(0)
    return inside_any, count, ball_hit


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall of ``fake`` against ``real`` (Kynkäänniemi et al. 2019).

    ``precision`` = share of fake points inside the real k-NN manifold, ``recall`` = share of real
    points inside the fake k-NN manifold (module docs). Both in ``[0, 1]``, higher is better.
    NaN when a point is not finite.
    """
    points = _finite_pair(real, fake)
    if points is None:
        return {"precision": math.nan, "recall": math.nan}
    x, y = points
    fake_on_real = _in_manifold(y, x, knn_radii(x, k))[0]
    real_on_fake = _in_manifold(x, y, knn_radii(y, k))[0]
    return {"precision": float(fake_on_real.double().mean()), "recall": float(real_on_fake.double().mean())}


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage of ``fake`` against ``real`` (Naeem et al. 2020), module docs.

    ``density`` = mean number of real k-NN balls a fake point falls in, divided by ``k`` (≈ 1 for
    matching distributions, above 1 when samples crowd the data's dense regions);
    ``coverage`` = share of real balls that contain at least one fake point, in ``[0, 1]``.
    NaN when a point is not finite.
    """
    points = _finite_pair(real, fake)
    if points is None:
        return {"density": math.nan, "coverage": math.nan}
    x, y = points
    _, count, hit = _in_manifold(y, x, knn_radii(x, k))
    return {"density": float(count.sum() / (k * y.shape[0])), "coverage": float(hit.double().mean())}


def variety_scores(real: Tensor, fake: Tensor, *, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """``precision``, ``recall`` (k = ``k_pr``), ``density`` and ``coverage`` (k = ``k_dc``)."""
    return precision_recall(real, fake, k_pr) | density_coverage(real, fake, k_dc)


def per_class_variety(
    real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor, *, k_pr: int = 3, k_dc: int = 5
) -> dict[str, float]:
    """:func:`variety_scores` within every class, averaged over classes: ``class_precision``,
    ``class_recall``, ``class_density``, ``class_coverage``, plus ``class_recall_min`` (the worst
    class) and ``variety_classes`` (classes scored).

    A class is scored when both sets hold more than ``max(k_pr, k_dc)`` of its points; the others
    are left out of the means (all NaN when none is scored).
    """
    need = max(k_pr, k_dc) + 1
    scores: list[dict[str, float]] = []
    for c in torch.unique(real_labels).tolist():
        xr, yf = real[real_labels == c], fake[fake_labels == c]
        if xr.shape[0] >= need and yf.shape[0] >= need:
            scores.append(variety_scores(xr, yf, k_pr=k_pr, k_dc=k_dc))
    out: dict[str, float] = {}
    for key in ("precision", "recall", "density", "coverage"):
        values = [s[key] for s in scores]
        out[f"class_{key}"] = sum(values) / len(values) if values else math.nan
    out["class_recall_min"] = min((s["recall"] for s in scores), default=math.nan)
    out["variety_classes"] = float(len(scores))
    return out


def sample_metrics(
    model: Flow,
    data: DataSplits,
    *,
    n: int = 2000,
    seed: int = 0,
    temperature: float = 1.0,
    k_pr: int = 3,
    k_dc: int = 5,
    classifier_steps: int = 1500,
    batch_size: int = 500,
) -> dict[str, float]:
    """Every sample metric from one draw: fidelity, variety, Fréchet distance, class accuracy.

    ``n' = min(n, N_test)`` test examples and as many samples, drawn from ``seed`` exactly as
    :func:`~flowkit.metrics.frechet.frechet_distance` draws them (class-conditional models sample
    with the test subset's labels), are mapped to the feature space of
    :func:`~flowkit.metrics.frechet.frechet_space` — flowkit's own classifier's 128-d features for
    labelled images, the flattened data for low-dimensional tabular sets. Returns

    * ``precision``, ``recall``, ``density``, ``coverage`` — :func:`variety_scores` over all
      samples against all test examples;
    * ``fd`` — the Fréchet distance in the same features (equal to ``frechet_distance``'s);
    * ``sample_examples`` — ``n'``; with the classifier also ``fd_classifier_accuracy`` (its
      test accuracy);
    * for models of a real-valued context ``p(x | c)`` on tabular data, every score is computed
      on the joint ``(x, c)``: the sample drawn at test context ``c_i`` is paired with ``c_i``;
    * for class-conditional models on labelled data: ``sample_accuracy`` (share of samples the
      classifier assigns to the class they were drawn with; labelled images only) and the
      per-class means of :func:`per_class_variety`.

    Raises :class:`ConfigError` when the data has no usable feature space
    (:func:`~flowkit.metrics.frechet.frechet_skip_reason`).
    """
    space, reference, labels, samples = reference_and_samples(
        model, data, n, seed, temperature, batch_size, "sample metrics"
    )
    m = reference.shape[0]
    out: dict[str, float] = {}
    logits = None
    if space == "classifier":
        net, accuracy, (fake, real) = classifier_features(
            model, data, classifier_steps, batch_size, samples, reference
        )
        device = next(net.parameters()).device
        with torch.no_grad():
            logits = torch.cat([net.fc2(f.to(device)).cpu() for f in fake.split(batch_size)])
        out["fd_classifier_accuracy"] = accuracy
    else:
        fake, real = samples.flatten(1).double(), reference.flatten(1).double()
        if labels is not None and labels.is_floating_point():
            # a model of p(x | c) is judged on the joint (x, c): each sample sits beside the
            # context it was drawn with, so samples that ignore c score low even when their
            # marginal matches the data's
            c = labels.flatten(1).double()
            fake, real = torch.cat([fake, c], 1), torch.cat([real, c], 1)
    out.update(variety_scores(real, fake, k_pr=k_pr, k_dc=k_dc))
    out["fd"] = frechet_distance_features(fake, real)
    out["sample_examples"] = float(m)
    if labels is not None and getattr(model, "class_conditional", bool(model.num_classes)):
        if logits is not None:
            out["sample_accuracy"] = float((logits.argmax(1) == labels).double().mean())
        out.update(per_class_variety(real, labels, fake, labels, k_pr=k_pr, k_dc=k_dc))
    return out
