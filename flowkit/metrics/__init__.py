"""Metrics usable inside and outside training: likelihood, and sample quality by a classifier."""

from flowkit.metrics.classifier import class_sample_accuracy, train_classifier
from flowkit.metrics.likelihood import evaluate_nll, latent_scale_stats, model_dtype

__all__ = [
    "class_sample_accuracy",
    "evaluate_nll",
    "latent_scale_stats",
    "model_dtype",
    "train_classifier",
]
