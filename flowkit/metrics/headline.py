"""What a run's summary should lead with: the numbers that mean something for the model trained.

A flow trained by maximum likelihood is judged first by its test bits/dim. A Generative
Reversible Network trained by optimal transport or a latent adversary is not: it never fits a
density, most of its prior's σ collapse towards 0 (the "discovered" dimensions are the few that
keep theirs), and the likelihood of test data under a prior with near-zero σ is degenerate —
bits/dim in the hundreds of thousands that say nothing about the samples. The restricted prior of
the adversarial recipe has no density on the latent space at all (its ``log_prob`` is a
surrogate). For runs trained without a likelihood the summary leads with the sample metrics of
:func:`~flowkit.metrics.variety.sample_metrics` (class accuracy, precision/recall,
density/coverage, Fréchet distance), and, when the latent has collapsed, says in one line why
bits/dim are left out.

:func:`summary_headline` turns a summary dictionary (``summary.json``, ``eval.json``) into those
lines; :func:`density_verdict` is the rule behind the one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["DENSITY_FREE_OBJECTIVES", "density_verdict", "summary_headline"]

#: Objectives that do not fit a density (their terms have no likelihood in them).
DENSITY_FREE_OBJECTIVES = frozenset({"ot", "adversarial"})


def _objective_terms(name: str) -> set[str]:
    """Plugin names of an objective spec such as ``"mle + 0.1 * ot"`` → ``{"mle", "ot"}``."""
    terms = set()
    for part in str(name).split("+"):
        token = part.strip().split("*")[-1].strip()
        if token:
            terms.add(token)
    return terms


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def density_verdict(metrics: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the run's test bits/dim are a meaningful density, and the one line that says why.

    Not meaningful when

    * the prior is ``restricted`` (its ``log_prob`` is a monitoring surrogate), or
    * the objective has no likelihood term (only ``ot`` / ``adversarial``) **and** some latent
      dimensions have collapsed (``latent_collapsed_share > 0``: class-averaged σ below 0.01,
      :func:`~flowkit.metrics.likelihood.latent_scale_stats`) — the density then concentrates on
      a thin slab around the prior means and test data lands far out in its tails.

    A likelihood-trained model keeps its bits/dim even if some σ are small (a pixel that is
    always 0 legitimately has a tiny σ). ``exact_density = false`` (a zero-padded GRN) adds a
    caveat but is not on its own a reason to drop bits/dim.
    """
    objective = str(metrics.get("objective", ""))
    terms = _objective_terms(objective)
    density_free = bool(terms) and terms <= DENSITY_FREE_OBJECTIVES
    collapsed = _num(metrics, "latent_collapsed_share") or 0.0
    bpd = _num(metrics, "test_bpd")
    shown = f" ({bpd:,.1f} here)" if bpd is not None and math.isfinite(bpd) else ""
    if metrics.get("prior") == "restricted":
        return False, (
            f"test bits/dim{shown} are not a density: the restricted prior lives on a "
            f"few latent dimensions and its log-probability is only a surrogate; judge "
            f"this model by its samples"
        )
    if density_free and collapsed > 0.0:
        return False, (
            f"test bits/dim{shown} are not a meaningful density: {objective} training "
            f"fits no likelihood and {collapsed:.0%} of the latent dimensions have "
            f"collapsed (σ < 0.01), so test data falls in the tails of a degenerate "
            f"prior; judge this model by its samples"
        )
    return True, ""


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def summary_headline(metrics: Mapping[str, Any]) -> list[str]:
    """The lines a run summary leads with, most important first (plain text, no trailing newline).

    * Models trained without a likelihood (``ot``, ``adversarial``, or a ``restricted`` prior):
      the sample line first (class accuracy, precision/recall, density/coverage, Fréchet
      distance), the per-class variety line, then one line on bits/dim — why they are left out
      when :func:`density_verdict` says they are degenerate, else the value marked as a density the
      model was not trained for — and the latent line.
    * Likelihood-trained models: test bits/dim first (with the padded-model caveat when
      ``exact_density`` is false), then the sample lines when sample metrics are present.

    Keys read (all optional): ``test_bpd``, ``test_nll``, ``exact_density``, ``objective``,
    ``prior``, ``latent_collapsed_share``, ``latent_sigma_max`` and the keys of
    :func:`~flowkit.metrics.variety.sample_metrics`.
    """
    meaningful, why = density_verdict(metrics)
    objective = str(metrics.get("objective", ""))
    terms = _objective_terms(objective)
    density_free = (bool(terms) and terms <= DENSITY_FREE_OBJECTIVES) or not meaningful
    num = {
        k: _num(metrics, k)
        for k in (
            "sample_accuracy",
            "precision",
            "recall",
            "density",
            "coverage",
            "fd",
            "sample_examples",
            "fd_classifier_accuracy",
            "class_precision",
            "class_recall",
            "class_coverage",
            "class_recall_min",
            "test_bpd",
            "test_nll",
            "latent_collapsed_share",
            "latent_sigma_max",
        )
    }
    samples: list[str] = []
    if num["precision"] is not None or num["fd"] is not None:
        parts = []
        if num["sample_accuracy"] is not None:
            parts.append(f"class accuracy {_fmt(num['sample_accuracy'])}")
        parts.append(f"precision {_fmt(num['precision'])}")
        parts.append(f"recall {_fmt(num['recall'])}")
        parts.append(f"density {_fmt(num['density'])}")
        parts.append(f"coverage {_fmt(num['coverage'])}")
        parts.append(f"Fréchet {_fmt(num['fd'])}")
        where = (
            f"{int(num['sample_examples'])} vs test data"
            if num["sample_examples"] is not None
            else "vs test data"
        )
        if num["fd_classifier_accuracy"] is not None:
            where += (
                f", in the features of flowkit's classifier, test accuracy "
                f"{_fmt(num['fd_classifier_accuracy'])}"
            )
        samples.append(f"samples ({where}): " + " · ".join(parts))
        if num["class_recall"] is not None:
            samples.append(
                f"within each class (mean over classes): precision {_fmt(num['class_precision'])}"
                f" · recall {_fmt(num['class_recall'])} (worst class {_fmt(num['class_recall_min'])})"
                f" · coverage {_fmt(num['class_coverage'])}"
            )
    latent = []
    if num["latent_collapsed_share"] is not None:
        latent = [
            f"latent: {num['latent_collapsed_share']:.0%} of dimensions collapsed "
            f"(σ < 0.01), largest σ {_fmt(num['latent_sigma_max'])}"
        ]
    density: list[str] = []
    if not meaningful:
        density = [why]
    elif num["test_bpd"] is not None:
        line = f"test bits/dim {_fmt(num['test_bpd'])}"
        if metrics.get("exact_density") is False:
            line += (
                " (latent density at the zero-padded image, not a density of the data; "
                "not comparable with published numbers)"
            )
        if density_free:
            line += (
                f" (an exact density, but {objective} training does not fit it: not "
                f"comparable with likelihood-trained flows)"
            )
        density = [line]
    elif num["test_nll"] is not None:
        density = [f"test NLL {_fmt(num['test_nll'])} nats"]
    if density_free:
        return [*samples, *density, *latent]
    return [*density, *samples, *(latent if samples else [])]
