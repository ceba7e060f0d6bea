"""Metrics usable inside and outside training: likelihood, sample quality and variety,
invertibility, cost, and the headline lines of a run summary."""

from flowkit.metrics.aggregate import format_mean_spread, mean_spread
from flowkit.metrics.classifier import class_sample_accuracy, train_classifier
from flowkit.metrics.cost import (
    SavedTensorMeter,
    parameter_count,
    peak_memory,
    reset_peak_memory,
    saved_activation_bytes,
    throughput,
)
from flowkit.metrics.frechet import (
    frechet_distance,
    frechet_distance_features,
    frechet_distance_gaussians,
    frechet_skip_reason,
    frechet_space,
)
from flowkit.metrics.headline import density_verdict, summary_headline
from flowkit.metrics.likelihood import evaluate_nll, latent_scale_stats, model_dtype
from flowkit.metrics.reconstruction import reconstruction_error
from flowkit.metrics.sample_quality import sample_quality, sinkhorn_distance, sliced_wasserstein
from flowkit.metrics.variety import (
    density_coverage,
    per_class_variety,
    precision_recall,
    sample_metrics,
    variety_scores,
)

__all__ = [
    "SavedTensorMeter",
    "class_sample_accuracy",
    "density_coverage",
    "density_verdict",
    "evaluate_nll",
    "format_mean_spread",
    "frechet_distance",
    "frechet_distance_features",
    "frechet_distance_gaussians",
    "frechet_skip_reason",
    "frechet_space",
    "latent_scale_stats",
    "mean_spread",
    "model_dtype",
    "parameter_count",
    "peak_memory",
    "per_class_variety",
    "precision_recall",
    "reconstruction_error",
    "reset_peak_memory",
    "sample_metrics",
    "sample_quality",
    "saved_activation_bytes",
    "sinkhorn_distance",
    "sliced_wasserstein",
    "summary_headline",
    "throughput",
    "train_classifier",
    "variety_scores",
]
