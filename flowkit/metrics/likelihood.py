"""Test-set likelihood: NLL in nats, per dimension, and bits per dimension."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowkit.data.base import DataSplits
from flowkit.data.preprocess import dequantize
from flowkit.model import Flow


@torch.inference_mode()
def evaluate_nll(
    model: Flow,
    data: DataSplits,
    *,
    split: str = "test",
    batch_size: int = 500,
    max_examples: int = 0,
    dequantize_data: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Average negative log-likelihood of ``split`` under ``model``.

    Returns ``{split}_nll`` (nats per example), ``{split}_nll_per_dim`` and, for quantized data,
    ``{split}_bpd`` = ``(NLL/D + log L) / log 2`` — the dequantized bound that published bits/dim
    use (preprocessing log-det included, since :meth:`Flow.log_prob` counts it). The
    dequantization noise is drawn from ``seed``, so repeated evaluations agree exactly.
    ``max_examples`` > 0 evaluates a fixed prefix of the split.
    """
    x_all: Tensor = getattr(data, split)
    y_all: Tensor | None = data.conditioning(split)
    n = x_all.shape[0] if max_examples <= 0 else min(max_examples, x_all.shape[0])
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = model.device
    total = 0.0
    for start in range(0, n, batch_size):
        x = x_all[start : min(n, start + batch_size)]
        if dequantize_data:
            x = dequantize(x, data.levels, gen)
        context = None
        if y_all is not None:
            context = y_all[start : start + x.shape[0]].to(device)
            if context.is_floating_point():
                context = context.to(model_dtype(model))
        log_prob = model.log_prob(x.to(device, model_dtype(model)), context)
        total += float(log_prob.double().sum())
    model.train(was_training)
    nll = -total / n
    out = {f"{split}_nll": nll, f"{split}_nll_per_dim": nll / data.dim, f"{split}_examples": float(n)}
    if data.levels:
        out[f"{split}_bpd"] = (nll / data.dim + math.log(data.levels)) / math.log(2.0)
    return out


def model_dtype(model: Flow) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 unless converted)."""
    for p in model.parameters():
        return p.dtype
    return model.prior.dtype


@torch.no_grad()
def latent_scale_stats(model: Flow, threshold: float = 1e-2) -> dict[str, float]:
    """For Gaussian-type priors: how many latent dimensions the prior's σ has collapsed.

    ``latent_collapsed_share`` is the fraction of dimensions whose class-averaged σ is below
    ``threshold`` (GRNs trained by optimal transport "discover" a few informative dimensions and
    shrink the rest); ``latent_sigma_max`` the largest class-averaged σ. Empty without moments.
    """
    n = int(model.num_classes or 1) if model.prior.conditional else 1
    context = torch.arange(n, device=model.device) if model.prior.conditional else None
    moments = model.prior.moments(n, context)
    if moments is None:
        return {}
    sigma = moments[1].reshape(n, -1).mean(0)
    return {
        "latent_collapsed_share": float((sigma < threshold).double().mean()),
        "latent_sigma_max": float(sigma.max()),
    }
